{#- Fails for every row whose combination of the given columns occurs more than once (composite
    keys; NULLs compare equal). Sort-based (a window) rather than GROUP BY ... HAVING: on the
    embedded PostgreSQL 18 a parallel partial HashAggregate that spills (default 4MB work_mem,
    about one group per row) was seen running for 15+ minutes on 1.7M rows; this takes seconds. -#}
{% test unique_combination_of_columns(model, combination_of_columns) %}
select *
from (
    select
        {{ combination_of_columns | join(', ') }},
        count(*) over (partition by {{ combination_of_columns | join(', ') }}) as n_rows
    from {{ model }}
) keyed
where n_rows > 1
{% endtest %}
