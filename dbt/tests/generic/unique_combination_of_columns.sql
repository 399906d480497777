{#- Fails for every combination of the given columns that occurs more than once
    (composite keys; NULLs compare equal, as in GROUP BY). -#}
{% test unique_combination_of_columns(model, combination_of_columns) %}
select
    {{ combination_of_columns | join(', ') }},
    count(*) as n_rows
from {{ model }}
group by {{ combination_of_columns | join(', ') }}
having count(*) > 1
{% endtest %}
