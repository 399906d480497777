{{ config(materialized='ephemeral') }}
-- Valid events with a duplicate flag. The first copy (earliest loaded_at) is kept; a repeated
-- event_id, or the same (user, type, time, merchant, total) under another event_id, is a duplicate.
with valid as (
    select * from {{ ref('stg_events_checked') }}
    where invalid_reason is null
),

ranked as (
    select
        valid.*,
        row_number() over (
            partition by event_id
            order by loaded_at, source_file
        ) as event_id_copy,
        row_number() over (
            partition by user_id, event_type, event_time, merchant_id, order_total
            order by loaded_at, event_id, source_file
        ) as content_copy
    from valid
)

select
    ranked.*,
    case
        when event_id_copy > 1 then 'duplicate_event_id'
        when content_copy > 1 then 'duplicate_event'
    end as duplicate_reason
from ranked
