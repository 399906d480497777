-- Quarantine: every raw.events row that stg_events drops, with the reason (nothing disappears
-- silently): after_run_date, unknown_event_type, negative_order_total, missing_order_total,
-- missing_merchant_id, unknown_user, unknown_merchant, duplicate_event_id, duplicate_event.
select
    event_id,
    user_id,
    event_type,
    event_time,
    merchant_id,
    merchant_name,
    order_total,
    platform,
    zone,
    properties,
    source_file,
    loaded_at,
    reason
from {{ ref('stg_events_classified') }}
where reason is not null
