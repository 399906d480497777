{#- Overrides dbt's built-in `unique` test SQL (same failures: one row per duplicated value, with
    its count) with a sort-based window instead of GROUP BY ... HAVING. On the embedded PostgreSQL 18
    a parallel partial HashAggregate that spills (default 4MB work_mem, about one group per row,
    i.e. exactly a uniqueness check on a large key column) was seen running for 15+ minutes where
    the sort takes seconds. ml/transform.run_dbt also raises work_mem, but dbt may run without it
    (Cosmos, the dbt CLI). -#}
{% macro default__test_unique(model, column_name) %}

select distinct
    unique_field,
    n_records
from (
    select
        {{ column_name }} as unique_field,
        count(*) over (partition by {{ column_name }}) as n_records
    from {{ model }}
    where {{ column_name }} is not null
) counted
where n_records > 1

{% endmacro %}
