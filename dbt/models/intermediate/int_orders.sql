{{ config(unlogged=true) }}  {#- rebuilt from staging on every run: no WAL needed -#}
-- One row per completed checkout, with the merchant's category and Doha-time habits.
with orders as (
    select * from {{ ref('stg_events') }}
    where event_type = 'checkout_completed'
),

merchants as (
    select * from {{ ref('stg_merchants') }}
),

joined as (
    select
        orders.event_id                                      as order_id,
        orders.user_id,
        orders.merchant_id,
        coalesce(merchants.merchant_name, orders.merchant_name) as merchant_name,
        merchants.category,
        merchants.zone                                       as merchant_zone,
        merchants.price_level,
        orders.event_time                                    as ordered_at,
        orders.event_date                                    as order_date,
        orders.order_total,
        orders.platform,
        orders.zone                                          as order_zone,
        {{ local_time('orders.event_time') }}                as ordered_at_local
    from orders
    inner join merchants
        on merchants.merchant_id = orders.merchant_id
)

select
    order_id,
    user_id,
    merchant_id,
    merchant_name,
    category,
    merchant_zone,
    price_level,
    ordered_at,
    order_date,
    order_total,
    platform,
    order_zone,
    extract(hour from ordered_at_local)::int               as local_hour,
    extract(isodow from ordered_at_local)::int             as local_isodow,
    extract(isodow from ordered_at_local) in (5, 6)        as is_weekend,
    case
        when extract(hour from ordered_at_local) between 6 and 10 then 'breakfast'
        when extract(hour from ordered_at_local) between 11 and 14 then 'lunch'
        when extract(hour from ordered_at_local) between 15 and 17 then 'afternoon'
        when extract(hour from ordered_at_local) between 18 and 21 then 'dinner'
        else 'late_night'
    end                                                    as day_part
from joined
