{{ config(indexes=[{'columns': ['user_id'], 'unique': true}, {'columns': ['lifecycle_segment']}]) }}
-- One row per user: lifecycle segment and value tier as of run_date (the column CRM filters on).
-- new      = signed up within new_user_days and fewer than 2 orders;
-- otherwise by days since the last order (days since signup for users who never ordered):
-- active <= active_max_days < at_risk <= at_risk_max_days < lapsed <= lapsed_max_days
-- < dormant <= dormant_max_days < churned.
with features as (
    select * from {{ ref('user_features') }}
),

classified as (
    select
        user_id,
        {{ run_date() }}                                            as run_date,
        order_count,
        tenure_days,
        days_since_last_order,
        coalesce(days_since_last_order, tenure_days)                as days_inactive,
        recency_score,
        frequency_score,
        monetary_score,
        recency_score + frequency_score + monetary_score            as rfm_score
    from features
)

select
    user_id,
    run_date,
    case
        when tenure_days <= {{ var('new_user_days') }} and order_count < 2 then 'new'
        when days_inactive <= {{ var('active_max_days') }} then 'active'
        when days_inactive <= {{ var('at_risk_max_days') }} then 'at_risk'
        when days_inactive <= {{ var('lapsed_max_days') }} then 'lapsed'
        when days_inactive <= {{ var('dormant_max_days') }} then 'dormant'
        else 'churned'
    end                                                             as lifecycle_segment,
    days_since_last_order,
    days_inactive,
    tenure_days,
    order_count,
    recency_score,
    frequency_score,
    monetary_score,
    rfm_score,
    case
        when rfm_score >= {{ var('value_tier_high_min_rfm') }} then 'high'
        when rfm_score >= {{ var('value_tier_medium_min_rfm') }} then 'medium'
        else 'low'
    end                                                             as value_tier
from classified
