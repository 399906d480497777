{{ config(unlogged=true) }}  {#- rebuilt from int_orders on every run: no WAL needed -#}
-- One row per (user, category) ordered from before run_date: all-time, recent and earlier order counts
-- (recent = the last taste_recent_days days) and the recency-weighted share of the user's orders.
with weighted_orders as (
    select
        user_id,
        category,
        ordered_at >= {{ run_cutoff() }} - interval '{{ var("taste_recent_days") | int }} days' as is_recent,
        {{ recency_decay('ordered_at', 'taste_half_life_days') }}                               as recency_weight
    from {{ ref('int_orders') }}
),

per_category as (
    select
        user_id,
        category,
        count(*)                           as order_count,
        count(*) filter (where is_recent)  as recent_order_count,
        sum(recency_weight)                as recency_weight
    from weighted_orders
    group by user_id, category
)

select
    user_id,
    category,
    order_count,
    recent_order_count,
    order_count - recent_order_count                                        as earlier_order_count,
    recency_weight / sum(recency_weight) over (partition by user_id)      as recency_weighted_share
from per_category
