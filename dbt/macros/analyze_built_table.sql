{#- Post-hook of every model (dbt_project.yml): a table dbt just built gets planner statistics at once. Without
    them the next model's or test's query plans on default estimates until autovacuum catches up (minutes later),
    which turned the relationship tests on the first full-scale day's 1.7M events into nested-loop scans. Views
    have no statistics of their own. -#}
{% macro analyze_built_table() -%}
    {%- if model.config.materialized in ('table', 'incremental') -%}
        analyze {{ this }}
    {%- endif -%}
{%- endmacro %}
