{#- The as-of date of a build. Every model filters its inputs to rows strictly before
    run_cutoff() (run_date 00:00 UTC), which makes backfills reproducible without look-ahead. -#}

{% macro run_date_str() -%}
    {%- set raw = var('run_date', '') -%}
    {%- set value = (raw | string | trim) if raw is not none else '' -%}
    {%- if value in ('', 'None', 'none', 'null') -%}
        {%- set value = run_started_at.strftime('%Y-%m-%d') -%}
    {%- endif -%}
    {%- set value = value[:10] -%}
    {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', value) -%}
        {{ exceptions.raise_compiler_error("var run_date must look like YYYY-MM-DD, got '" ~ raw ~ "'") }}
    {%- endif -%}
    {%- do modules.datetime.datetime.strptime(value, '%Y-%m-%d') -%}
    {{- value -}}
{%- endmacro %}

{#- run_date as a SQL date literal. -#}
{% macro run_date() -%}
    date '{{ run_date_str() }}'
{%- endmacro %}

{#- run_date 00:00 UTC as a timestamptz (independent of the session time zone). -#}
{% macro run_cutoff() -%}
    (timestamp '{{ run_date_str() }} 00:00:00' at time zone 'UTC')
{%- endmacro %}

{#- The UTC calendar date of a timestamptz. -#}
{% macro utc_date(column) -%}
    (({{ column }}) at time zone 'UTC')::date
{%- endmacro %}

{#- Whole calendar days (UTC) from the timestamptz `column` to run_date: an event yesterday is 1. -#}
{% macro days_before_run_date(column) -%}
    ({{ run_date() }} - {{ utc_date(column) }})
{%- endmacro %}

{#- Fractional days elapsed between two timestamptz values (later minus earlier). -#}
{% macro elapsed_days(later, earlier) -%}
    (extract(epoch from (({{ later }}) - ({{ earlier }}))) / 86400.0)
{%- endmacro %}

{#- Local (Doha) wall-clock timestamp of a timestamptz: UTC plus a fixed offset, no DST. -#}
{% macro local_time(column) -%}
    ((({{ column }}) at time zone 'UTC') + interval '{{ var("local_utc_offset_hours") | int }} hours')
{%- endmacro %}

{#- Exponential recency decay weight: 1 at run_cutoff, 0.5 after one half-life (the days in var half_life_var). -#}
{% macro recency_decay(column, half_life_var='recency_half_life_days') -%}
    power(0.5::double precision, ({{ elapsed_days(run_cutoff(), column) }})::double precision / {{ var(half_life_var) | float }})
{%- endmacro %}

{#- Bounded trend in [-1, 1]: (recent - previous) / (recent + previous), 0 when both are 0. -#}
{% macro trend(recent, previous) -%}
    case when ({{ recent }}) + ({{ previous }}) = 0 then 0.0
         else (({{ recent }}) - ({{ previous }}))::numeric / (({{ recent }}) + ({{ previous }})) end
{%- endmacro %}

{#- A tie-aware 1..5 quintile score: ties share a score; the bottom share gets 1, the top 5. -#}
{% macro quintile_score(order_by) -%}
    least(5, 1 + floor(5 * percent_rank() over (order by {{ order_by }})))::int
{%- endmacro %}
