{{ config(materialized='table') }}
-- Quarantine: every raw event that stg_events drops, with the reason (nothing disappears silently).
-- Reasons: after_run_date, unknown_event_type, negative_order_total, missing_order_total,
-- missing_merchant_id, unknown_user, unknown_merchant, duplicate_event_id, duplicate_event.
with invalid as (
    select
        event_id, user_id, event_type, event_time, merchant_id, merchant_name, order_total,
        platform, zone, properties, source_file, loaded_at,
        invalid_reason as reason
    from {{ ref('stg_events_checked') }}
    where invalid_reason is not null
),

duplicates as (
    select
        event_id, user_id, event_type, event_time, merchant_id, merchant_name, order_total,
        platform, zone, properties, source_file, loaded_at,
        duplicate_reason as reason
    from {{ ref('stg_events_deduped') }}
    where duplicate_reason is not null
)

select * from invalid
union all
select * from duplicates
