{{ config(indexes=[{'columns': ['merchant_id'], 'unique': true}]) }}
-- One row per merchant open before run_date: popularity, trend, AOV, loyalty, age.
with merchants as (
    select * from {{ ref('stg_merchants') }}
),

orders as (
    select * from {{ ref('int_orders') }}
),

customer_orders as (
    select merchant_id, user_id, count(*) as orders
    from orders
    group by merchant_id, user_id
),

customers as (
    select
        merchant_id,
        count(*)                                as distinct_customers,
        count(*) filter (where orders >= 2)     as repeat_customers
    from customer_orders
    group by merchant_id
),

order_stats as (
    select
        merchant_id,
        count(*)                                                            as order_count,
        sum(order_total)                                                    as order_value,
        count(*) filter (where ordered_at >= {{ run_cutoff() }} - interval '7 days')  as orders_last_7d,
        count(*) filter (where ordered_at >= {{ run_cutoff() }} - interval '14 days'
                           and ordered_at <  {{ run_cutoff() }} - interval '7 days')  as orders_prev_7d,
        max(ordered_at)                                                     as last_order_at
    from orders
    group by merchant_id
),

joined as (
    select
        m.merchant_id,
        m.merchant_name,
        m.category,
        m.zone,
        m.lat,
        m.lng,
        m.price_level,
        m.opened_at,
        {{ days_before_run_date('m.opened_at') }}                    as age_days,
        coalesce(s.order_count, 0)                                   as order_count,
        coalesce(c.distinct_customers, 0)                            as distinct_customers,
        coalesce(s.orders_last_7d, 0)                                as orders_last_7d,
        coalesce(s.orders_prev_7d, 0)                                as orders_prev_7d,
        coalesce(s.order_value, 0)::numeric(14, 2)                   as order_value,
        round(s.order_value / nullif(s.order_count, 0), 2)           as avg_order_value,
        round(c.repeat_customers::numeric / nullif(c.distinct_customers, 0), 4) as repeat_customer_share,
        s.last_order_at
    from merchants m
    left join order_stats s
        on s.merchant_id = m.merchant_id
    left join customers c
        on c.merchant_id = m.merchant_id
)

select
    merchant_id,
    merchant_name,
    category,
    zone,
    lat,
    lng,
    price_level,
    opened_at,
    age_days,
    order_count,
    distinct_customers,
    orders_last_7d,
    orders_prev_7d,
    {{ trend('orders_last_7d', 'orders_prev_7d') }}::numeric(6, 4)            as order_trend,
    order_value,
    avg_order_value,
    repeat_customer_share,
    last_order_at,
    rank() over (order by order_count desc, distinct_customers desc)        as popularity_rank,
    rank() over (partition by zone order by order_count desc, distinct_customers desc) as zone_popularity_rank,
    rank() over (order by orders_last_7d desc, order_count desc)            as trending_rank
from joined
