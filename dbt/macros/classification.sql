{#- stg_events_classified is incremental; these decide when a build must re-classify every day instead. -#}

{#- What the verdicts depend on besides the data: the model's SQL and the contract's rules. -#}
{% macro classification_fingerprint() -%}
    {{- return('rekindle:' ~ local_md5(model.raw_code ~ tojson(event_rules()))) -}}
{%- endmacro %}

{#- True on a first build, a --full-refresh, or when the table was classified under another fingerprint. -#}
{% macro reclassify_all_events() -%}
    {{- return(not is_incremental() or table_comment(this) != classification_fingerprint()) -}}
{%- endmacro %}

{#- The comment on an existing table ('' when it has none, or outside execution). -#}
{% macro table_comment(relation) -%}
    {%- if not execute or relation is none -%}
        {{ return('') }}
    {%- endif -%}
    {%- set found = run_query(
        "select coalesce(obj_description('" ~ relation.include(database=false) ~ "'::regclass, 'pg_class'), '')"
    ) -%}
    {{ return(found.columns[0].values()[0]) }}
{%- endmacro %}
