{{ config(indexes=[{'columns': ['campaign_id', 'user_id'], 'unique': true}]) }}
-- One row per campaign exposure sent before run_date: features as of sent_at (only orders
-- strictly before sent_at: no look-ahead) and outcomes in [sent_at, sent_at + window).
-- outcome_observed is true when the whole window lies before run_date; for the others the
-- outcome columns only count what happened up to run_date.
with exposures as (
    select * from {{ ref('stg_campaign_exposures') }}
),

users as (
    select * from {{ ref('stg_users') }}
),

orders as (
    select user_id, ordered_at, order_total, category, price_level from {{ ref('int_orders') }}
),

exposure_orders as (
    select
        e.campaign_id,
        e.user_id,
        e.sent_at,
        o.ordered_at,
        o.order_total,
        o.category,
        o.price_level,
        o.ordered_at < e.sent_at                                                        as is_before,
        o.ordered_at >= e.sent_at
            and o.ordered_at < e.sent_at + interval '{{ var("reactivation_window_days") | int }} days' as is_in_window
    from exposures e
    inner join orders o
        on o.user_id = e.user_id
),

history as (
    select
        campaign_id,
        user_id,
        count(*) filter (where is_before)               as order_count_before,
        sum(order_total) filter (where is_before)       as order_value_before,
        max(ordered_at) filter (where is_before)        as last_order_before_at,
        avg(price_level) filter (where is_before)       as avg_price_level_before,
        count(*) filter (where is_in_window)            as orders_in_window,
        sum(order_total) filter (where is_in_window)    as order_value_in_window
    from exposure_orders
    group by campaign_id, user_id
),

category_before as (
    select distinct on (campaign_id, user_id)
        campaign_id,
        user_id,
        category as favourite_category_before
    from (
        select campaign_id, user_id, category, count(*) as n, max(ordered_at) as last_at
        from exposure_orders
        where is_before
        group by campaign_id, user_id, category
    ) per_category
    order by campaign_id, user_id, n desc, last_at desc, category
),

engagement as (
    select
        e.campaign_id,
        e.user_id,
        {{ engagement_features('e.sent_at') }}
    from exposures e
    inner join {{ ref('int_engagement_events') }} g
        on g.user_id = e.user_id
       and g.occurred_at < e.sent_at
    group by e.campaign_id, e.user_id, e.sent_at
),

redemptions as (
    select
        campaign_id,
        user_id,
        count(*) as redemptions
    from {{ ref('reward_redemptions') }}
    group by campaign_id, user_id
)

select
    e.campaign_id,
    e.user_id,
    e.sent_at,
    e.event_type,
    e.reward_size,
    e.assignment,
    e.is_holdout,
    e.propensity,
    -- features as of sent_at
    {{ utc_date('e.sent_at') }} - {{ utc_date('h.last_order_before_at') }}      as recency_days,
    coalesce(h.order_count_before, 0)                                          as order_count_before,
    coalesce(h.order_value_before, 0)::numeric(14, 2)                          as order_value_before,
    round(h.order_value_before / nullif(h.order_count_before, 0), 2)           as avg_order_value_before,
    round(h.avg_price_level_before, 4)                                         as avg_price_level_before,
    {{ utc_date('e.sent_at') }} - u.signup_date                                as tenure_days,
    u.platform,
    u.home_zone,
    c.favourite_category_before,
    {{ engagement_columns('g') }},
    -- outcomes
    coalesce(h.orders_in_window, 0) > 0                                        as reactivated,
    coalesce(h.orders_in_window, 0)                                            as orders_in_window,
    coalesce(h.order_value_in_window, 0)::numeric(14, 2)                       as order_value_in_window,
    r.redemptions is not null                                                  as redeemed,
    e.sent_at + interval '{{ var("reactivation_window_days") | int }} days'    as window_end_at,
    e.sent_at + interval '{{ var("reactivation_window_days") | int }} days' <= {{ run_cutoff() }} as outcome_observed
from exposures e
left join users u
    on u.user_id = e.user_id
left join history h
    on h.campaign_id = e.campaign_id
   and h.user_id = e.user_id
left join category_before c
    on c.campaign_id = e.campaign_id
   and c.user_id = e.user_id
left join engagement g
    on g.campaign_id = e.campaign_id
   and g.user_id = e.user_id
left join redemptions r
    on r.campaign_id = e.campaign_id
   and r.user_id = e.user_id
