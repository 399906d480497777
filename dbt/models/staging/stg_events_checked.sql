{{ config(materialized='ephemeral') }}
-- Typed raw events with the first rule each one breaks (NULL = valid). Shared by
-- stg_events_deduped / stg_events / stg_events_rejected so the rules live in one place.
with source as (
    select * from {{ source('raw', 'events') }}
),

users as (
    select user_id from {{ ref('stg_users') }}
),

merchants as (
    select merchant_id from {{ ref('stg_merchants') }}
),

typed as (
    select
        event_id::text                          as event_id,
        user_id::bigint                         as user_id,
        -- cheap path for the (normal) exact spelling, normalise everything else
        case when event_type in {{ sql_list(event_types()) }} then event_type
             else lower(trim(event_type)) end   as event_type,
        event_time                              as event_time,
        merchant_id::bigint                     as merchant_id,
        nullif(trim(merchant_name), '')         as merchant_name,
        order_total::numeric(12, 2)             as order_total,
        nullif(lower(trim(platform)), '')       as platform,
        nullif(trim(zone), '')                  as zone,
        properties                              as properties,
        nullif(properties ->> 'campaign_id', '') as campaign_id,
        source_file                             as source_file,
        loaded_at                               as loaded_at
    from source
)

select
    typed.*,
    case
        when typed.event_time >= {{ run_cutoff() }} then 'after_run_date'
        when typed.event_type not in {{ sql_list(event_types()) }} then 'unknown_event_type'
        when typed.order_total < 0 then 'negative_order_total'
        when typed.event_type = 'checkout_completed' and typed.order_total is null then 'missing_order_total'
        when typed.event_type = 'checkout_completed' and typed.merchant_id is null then 'missing_merchant_id'
        when users.user_id is null then 'unknown_user'
        when typed.merchant_id is not null and merchants.merchant_id is null then 'unknown_merchant'
    end as invalid_reason
from typed
left join users
    on users.user_id = typed.user_id
left join merchants
    on merchants.merchant_id = typed.merchant_id
