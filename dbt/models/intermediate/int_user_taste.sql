-- One row per user who ordered before run_date: the recency-weighted favourite category and how far the
-- category mix of the last taste_recent_days days has drifted from the mix of the orders before them.
with profile as (
    select * from {{ ref('int_user_category_profile') }}
),

shares as (
    select
        user_id,
        category,
        recency_weighted_share,
        sum(recent_order_count) over (partition by user_id)  as user_recent_orders,
        sum(earlier_order_count) over (partition by user_id) as user_earlier_orders,
        recent_order_count::numeric / nullif(sum(recent_order_count) over (partition by user_id), 0)   as recent_share,
        earlier_order_count::numeric / nullif(sum(earlier_order_count) over (partition by user_id), 0) as earlier_share
    from profile
),

divergence as (
    select
        user_id,
        max(user_recent_orders)::int  as recent_order_count,
        max(user_earlier_orders)::int as earlier_order_count,
        case
            -- either side without orders has no mix to compare
            when max(user_recent_orders) = 0 or max(user_earlier_orders) = 0 then null
            else round(sum({{ js_divergence_term('recent_share', 'earlier_share') }}), 4)
        end::numeric(5, 4)            as category_divergence
    from shares
    group by user_id
),

recent_favourite as (
    -- highest recency-weighted share; ties alphabetical
    select distinct on (user_id)
        user_id,
        category as recent_favourite_category
    from shares
    order by user_id, recency_weighted_share desc, category
)

select
    divergence.user_id,
    recent_favourite.recent_favourite_category,
    divergence.recent_order_count,
    divergence.earlier_order_count,
    divergence.category_divergence,
    coalesce(
        divergence.category_divergence >= {{ var('taste_drift_threshold') | float }}
        and divergence.recent_order_count >= {{ var('taste_drift_min_recent_orders') | int }},
        false
    )                                                                      as taste_drift
from divergence
inner join recent_favourite
    on recent_favourite.user_id = divergence.user_id
