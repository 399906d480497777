-- The clean event stream: typed, deduplicated, valid events strictly before run_date 00:00 UTC.
-- Everything dropped here is listed in stg_events_rejected with its reason.
select
    event_id,
    user_id,
    event_type,
    event_time,
    event_date,
    merchant_id,
    merchant_name,
    order_total,
    platform,
    zone,
    properties,
    campaign_id,
    source_file,
    loaded_at,
    classified_through_xid
from {{ ref('stg_events_classified') }}
where reason is null
