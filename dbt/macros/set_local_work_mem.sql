{#- Pre-hook of every model: raise work_mem for the model's own transaction only (SET LOCAL), so
    building tables from the event log sorts and hashes in memory. Views need nothing. -#}
{% macro set_local_work_mem() -%}
    {%- set value = var('work_mem', '') | string | trim -%}
    {%- if value and model.config.materialized in ('table', 'incremental') -%}
        {%- if not modules.re.match('^[0-9]+ ?(kB|MB|GB)$', value) -%}
            {{ exceptions.raise_compiler_error("var work_mem must look like '256MB', got '" ~ value ~ "'") }}
        {%- endif -%}
        set local work_mem = '{{ value }}'
    {%- endif -%}
{%- endmacro %}
