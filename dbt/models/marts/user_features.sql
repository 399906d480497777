{{ config(indexes=[{'columns': ['user_id'], 'unique': true}]) }}
-- One row per user in stg_users: RFM, tenure, trend, category / day-part / weekday habits, taste drift,
-- marketing consent. Order-derived shares and averages are NULL for users who never ordered; counts are 0.
with users as (
    select * from {{ ref('stg_users') }}
),

orders as (
    select * from {{ ref('int_orders') }}
),

order_stats as (
    select
        user_id,
        count(*)                                                            as order_count,
        sum(order_total)                                                    as order_value,
        avg(price_level)                                                    as avg_price_level,
        min(ordered_at)                                                     as first_order_at,
        max(ordered_at)                                                     as last_order_at,
        count(*) filter (where ordered_at >= {{ run_cutoff() }} - interval '7 days')  as orders_last_7d,
        count(*) filter (where ordered_at >= {{ run_cutoff() }} - interval '14 days'
                           and ordered_at <  {{ run_cutoff() }} - interval '7 days')  as orders_prev_7d,
        count(distinct merchant_id)                                         as distinct_merchants,
        count(distinct category)                                            as distinct_categories,
        avg(case when is_weekend then 1.0 else 0.0 end)                     as weekend_order_share,
        avg(case when day_part = 'breakfast' then 1.0 else 0.0 end)         as breakfast_order_share,
        avg(case when day_part = 'lunch' then 1.0 else 0.0 end)             as lunch_order_share,
        avg(case when day_part = 'afternoon' then 1.0 else 0.0 end)         as afternoon_order_share,
        avg(case when day_part = 'dinner' then 1.0 else 0.0 end)            as dinner_order_share,
        avg(case when day_part = 'late_night' then 1.0 else 0.0 end)        as late_night_order_share
    from orders
    group by user_id
),

category_counts as (
    select
        user_id,
        category,
        count(*)        as category_orders,
        max(ordered_at) as last_category_order_at
    from orders
    group by user_id, category
),

favourite as (
    -- most orders; ties go to the most recently ordered category, then alphabetical
    select distinct on (user_id)
        user_id,
        category        as favourite_category,
        category_orders as favourite_category_orders
    from category_counts
    order by user_id, category_orders desc, last_category_order_at desc, category
),

recent_views as (
    select
        user_id,
        count(*) as view_count_30d
    from {{ ref('stg_events') }}
    where event_type in {{ sql_list(view_event_types()) }}
      and event_time >= {{ run_cutoff() }} - interval '30 days'
    group by user_id
),

engagement as (
    select
        user_id,
        {{ engagement_features(run_cutoff()) }}
    from {{ ref('int_engagement_events') }}
    group by user_id
),

taste as (
    select * from {{ ref('int_user_taste') }}
),

opt_outs as (
    -- consent withdrawn in the app; raw.users.marketing_opt_in has no time, so an opt-out is always the latest word
    select
        user_id,
        min(event_time) filter (
            where event_type = '{{ contract_var("marketing_opt_out_event_type") }}'
        )                   as marketing_opted_out_at,
        min(event_time) filter (
            where event_type = '{{ contract_var("personalisation_opt_out_event_type") }}'
        )                   as personalisation_opted_out_at
    from {{ ref('stg_events') }}
    where event_type in (
        '{{ contract_var("marketing_opt_out_event_type") }}',
        '{{ contract_var("personalisation_opt_out_event_type") }}'
    )
    group by user_id
),

joined as (
    select
        users.user_id,
        users.platform,
        users.home_zone,
        users.signup_at,
        coalesce(users.marketing_opt_in, false) and o.marketing_opted_out_at is null as marketing_opt_in,
        o.marketing_opted_out_at,
        o.personalisation_opted_out_at is not null                        as personalisation_opt_out,
        o.personalisation_opted_out_at,
        {{ days_before_run_date('users.signup_at') }}                     as tenure_days,
        coalesce(s.order_count, 0)                                        as order_count,
        coalesce(s.order_value, 0)::numeric(14, 2)                        as order_value,
        round(s.order_value / nullif(s.order_count, 0), 2)                as avg_order_value,
        round(s.avg_price_level, 4)                                       as avg_price_level,
        s.first_order_at,
        s.last_order_at,
        {{ days_before_run_date('s.last_order_at') }}                     as days_since_last_order,
        coalesce(s.orders_last_7d, 0)                                     as orders_last_7d,
        coalesce(s.orders_prev_7d, 0)                                     as orders_prev_7d,
        coalesce(s.distinct_merchants, 0)                                 as distinct_merchants,
        coalesce(s.distinct_categories, 0)                                as distinct_categories,
        f.favourite_category,
        round(f.favourite_category_orders::numeric / nullif(s.order_count, 0), 4) as favourite_category_share,
        t.recent_favourite_category,
        t.category_divergence,
        coalesce(t.taste_drift, false)                                    as taste_drift,
        round(s.weekend_order_share, 4)                                   as weekend_order_share,
        round(s.breakfast_order_share, 4)                                 as breakfast_order_share,
        round(s.lunch_order_share, 4)                                     as lunch_order_share,
        round(s.afternoon_order_share, 4)                                 as afternoon_order_share,
        round(s.dinner_order_share, 4)                                    as dinner_order_share,
        round(s.late_night_order_share, 4)                                as late_night_order_share,
        coalesce(v.view_count_30d, 0)                                     as view_count_30d,
        {{ engagement_columns('g') }}
    from users
    left join order_stats s
        on s.user_id = users.user_id
    left join favourite f
        on f.user_id = users.user_id
    left join recent_views v
        on v.user_id = users.user_id
    left join engagement g
        on g.user_id = users.user_id
    left join taste t
        on t.user_id = users.user_id
    left join opt_outs o
        on o.user_id = users.user_id
),

ordering_users_scored as (
    -- quintiles among users who ordered (ties share a score); 5 = most recent / frequent / valuable
    select
        user_id,
        {{ quintile_score('last_order_at') }}                as recency_score,
        {{ quintile_score('order_count, order_value') }}     as frequency_score,
        {{ quintile_score('order_value') }}                  as monetary_score
    from joined
    where order_count > 0
)

select
    joined.user_id,
    joined.platform,
    joined.home_zone,
    joined.signup_at,
    joined.marketing_opt_in,
    joined.marketing_opted_out_at,
    joined.personalisation_opt_out,
    joined.personalisation_opted_out_at,
    joined.tenure_days,
    joined.order_count,
    joined.order_value,
    joined.avg_order_value,
    joined.avg_price_level,
    joined.first_order_at,
    joined.last_order_at,
    joined.days_since_last_order,
    joined.orders_last_7d,
    joined.orders_prev_7d,
    {{ trend('joined.orders_last_7d', 'joined.orders_prev_7d') }}::numeric(6, 4) as order_trend,
    joined.distinct_merchants,
    joined.distinct_categories,
    joined.favourite_category,
    joined.favourite_category_share,
    joined.recent_favourite_category,
    joined.category_divergence,
    joined.taste_drift,
    joined.weekend_order_share,
    joined.breakfast_order_share,
    joined.lunch_order_share,
    joined.afternoon_order_share,
    joined.dinner_order_share,
    joined.late_night_order_share,
    joined.view_count_30d,
    joined.sessions_14d,
    joined.days_since_session,
    joined.offers_received,
    joined.campaign_opens,
    joined.offers_redeemed,
    coalesce(scored.recency_score, 1)    as recency_score,
    coalesce(scored.frequency_score, 1)  as frequency_score,
    coalesce(scored.monetary_score, 1)   as monetary_score
from joined
left join ordering_users_scored scored
    on scored.user_id = joined.user_id
