{#- Incremental by event day: a build re-classifies only the days that can have changed (see stale_days) and
    replaces them whole (delete+insert on event_date), so its cost follows the day's new rows, not the retained
    log. The duplicate rule compares copies with the same event_time, so copies always share a day. Changing
    this model or the contract's rules changes the fingerprint kept in the table's comment, and the next build
    re-classifies every day. -#}
{%- set reclassify_all = reclassify_all_events() -%}
{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key='event_date',
    on_schema_change='sync_all_columns',
    indexes=[{'columns': ['event_date']}, {'columns': ['classified_through_xid']}],
    pre_hook="{% if is_incremental() and reclassify_all_events() %}truncate table {{ this }}{% endif %}",
    post_hook="comment on table {{ this }} is '{{ classification_fingerprint() }}'",
) }}
-- Every raw.events row, typed, with `reason` = why staging drops it (NULL = kept).
-- stg_events (reason IS NULL) and stg_events_rejected (reason IS NOT NULL) are views on this
-- table, so the rules and the dedup sort run once per day of events and nothing disappears silently.
-- Rules, in order: after_run_date; the data contract's event rules (EVENT_RULES in
-- ml/warehouse/contract.py that apply in staging, reaching dbt as the var event_rules: unknown
-- event type, negative order total, checkout without order total or merchant); unknown_user,
-- unknown_merchant; then,
-- among the valid rows, later copies of the same (user_id, event_type, event_time, merchant_id,
-- order_total) are duplicate_event_id (same event_id re-loaded) or duplicate_event (re-sent
-- under another event_id). The earliest-loaded copy is kept.
with
{%- if not reclassify_all %}
stale_days as (  -- noqa: ST03
    -- read in source's where clause (ST03 misses that): the days with rows the last build could not see, those
    -- of transactions that had not ended when it took its snapshot (raw.events.load_xid, see raw.sql)
    select distinct {{ utc_date('arrived.event_time') }} as event_date
    from {{ source('raw', 'events') }} arrived
    where arrived.load_xid >= (
        select coalesce(max(built.classified_through_xid), 0) from {{ this }} built
    )
    union
    -- days whose verdicts depend on the run date, or on users and merchants that may have arrived since
    select distinct event_date
    from {{ this }}
    where reason in ('after_run_date', 'unknown_user', 'unknown_merchant') or event_time >= {{ run_cutoff() }}
),
{%- endif %}

source as (
    select
        *,
        case
            {%- for rule in event_rules() %}
            when {{ rule.violation }} then '{{ rule.name }}'
            {%- endfor %}
        end as contract_reason
    from {{ source('raw', 'events') }}
    {%- if not reclassify_all %}
    where {{ utc_date('event_time') }} in (select stale_days.event_date from stale_days)
    {%- endif %}
),

users as (
    select user_id from {{ ref('stg_users') }}
),

merchants as (
    select merchant_id from {{ ref('stg_merchants') }}
),

checked as (
    select
        e.event_id::text                            as event_id,
        e.user_id::text                             as user_id,
        e.event_type::text                          as event_type,
        e.event_time,
        {{ utc_date('e.event_time') }}              as event_date,
        e.merchant_id::text                         as merchant_id,
        nullif(trim(e.merchant_name), '')           as merchant_name,
        e.order_total::numeric(12, 2)               as order_total,
        nullif(lower(trim(e.platform)), '')         as platform,
        nullif(trim(e.zone), '')                    as zone,
        e.properties,
        nullif(e.properties ->> 'campaign_id', '')  as campaign_id,
        e.source_file,
        e.loaded_at,
        case
            when e.event_time >= {{ run_cutoff() }} then 'after_run_date'
            when e.contract_reason is not null then e.contract_reason
            when u.user_id is null then 'unknown_user'
            when e.merchant_id is not null and m.merchant_id is null then 'unknown_merchant'
        end                                         as invalid_reason
    from source e
    left join users u
        on u.user_id = e.user_id
    left join merchants m
        on m.merchant_id = e.merchant_id
),

ranked as (
    -- one sort over all rows; invalid rows sit in their own partitions (by invalid_reason).
    -- The cheap, selective timestamptz first, so the text ids are rarely compared.
    select
        checked.*,
        row_number() over content_copies                  as copy_number,
        first_value(checked.event_id) over content_copies as kept_event_id
    from checked
    window content_copies as (
        partition by event_time, user_id, merchant_id, order_total, event_type, invalid_reason
        order by loaded_at, event_id, source_file
    )
)

select
    event_id, user_id, event_type, event_time, event_date, merchant_id, merchant_name, order_total,
    platform, zone, properties, campaign_id, source_file, loaded_at,
    pg_snapshot_xmin(pg_current_snapshot())::text::bigint as classified_through_xid,
    case
        when invalid_reason is not null then invalid_reason
        when copy_number = 1 then null
        when event_id = kept_event_id then 'duplicate_event_id'
        else 'duplicate_event'
    end as reason
from ranked
