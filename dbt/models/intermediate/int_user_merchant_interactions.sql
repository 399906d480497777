{{ config(unlogged=true) }}  {#- rebuilt from staging on every run: no WAL needed -#}
-- One row per (user, merchant) pair with at least one order or page view before run_date.
-- strength = sum over orders of decay * (1 + ln(1 + order_total))
--          + interaction_view_weight * sum over views of decay,
-- decay = 0.5 ^ (days before run_date / recency_half_life_days).
with order_signals as (
    select
        user_id,
        merchant_id,
        count(*)                                                    as order_count,
        sum(order_total)                                            as order_value,
        min(ordered_at)                                             as first_order_at,
        max(ordered_at)                                             as last_order_at,
        sum({{ recency_decay('ordered_at') }} * (1 + ln(1 + order_total::double precision))) as order_signal
    from {{ ref('int_orders') }}
    group by user_id, merchant_id
),

view_signals as (
    select
        user_id,
        merchant_id,
        count(*)                                    as view_count,
        max(event_time)                             as last_view_at,
        sum({{ recency_decay('event_time') }})      as view_signal
    from {{ ref('stg_events') }}
    where event_type in {{ sql_list(view_event_types()) }}
      and merchant_id is not null
    group by user_id, merchant_id
),

joined as (
    select
        coalesce(o.user_id, v.user_id)              as user_id,
        coalesce(o.merchant_id, v.merchant_id)      as merchant_id,
        coalesce(o.order_count, 0)                  as order_count,
        coalesce(o.order_value, 0)::numeric(14, 2)  as order_value,
        coalesce(v.view_count, 0)                   as view_count,
        o.first_order_at,
        o.last_order_at,
        v.last_view_at,
        coalesce(o.order_signal, 0)                 as order_signal,
        coalesce(v.view_signal, 0)                  as view_signal
    from order_signals o
    full outer join view_signals v
        on v.user_id = o.user_id
       and v.merchant_id = o.merchant_id
)

select
    user_id,
    merchant_id,
    order_count,
    order_value,
    view_count,
    first_order_at,
    last_order_at,
    last_view_at,
    {{ days_before_run_date('last_order_at') }}     as days_since_last_order,
    order_signal,
    view_signal,
    order_signal + {{ var('interaction_view_weight') | float }} * view_signal as strength
from joined
