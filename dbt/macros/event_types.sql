{#- The event data contract's vocabularies and rules. They are defined once, in ml/warehouse/contract.py, and reach
    dbt as vars: ml/warehouse/dbt_runner.settings_vars passes them to every run_dbt invocation and to the Cosmos
    task group. dbt_project.yml deliberately holds no copy. -#}

{% macro contract_var(name) -%}
    {%- set value = var(name, none) -%}
    {%- if value is none -%}
        {{ exceptions.raise_compiler_error(
            "dbt var '" ~ name ~ "' is missing: the event data contract (ml/warehouse/contract.py) reaches dbt "
            ~ "as vars. Run dbt through ml.warehouse.dbt_runner.run_dbt, or pass --vars with "
            ~ "ml.warehouse.dbt_runner.settings_vars(settings) as JSON."
        ) }}
    {%- endif -%}
    {{ return(value) }}
{%- endmacro %}

{% macro event_types() -%}
    {{ return(contract_var('event_types')) }}
{%- endmacro %}

{% macro view_event_types() -%}
    {{ return(contract_var('view_event_types')) }}
{%- endmacro %}

{% macro campaign_event_types() -%}
    {{ return(contract_var('offer_event_types')) }}
{%- endmacro %}

{% macro assignments() -%}
    {{ return(contract_var('assignments')) }}
{%- endmacro %}

{#- [{name, violation}]: a SQL predicate over raw.events' columns, true when the row breaks the rule. -#}
{% macro event_rules() -%}
    {{ return(contract_var('event_rules')) }}
{%- endmacro %}

{% macro sql_list(values) -%}
    ({%- for v in values -%}'{{ v }}'{{ ", " if not loop.last }}{%- endfor -%})
{%- endmacro %}
