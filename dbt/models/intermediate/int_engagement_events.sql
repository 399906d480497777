-- One row per engagement signal before run_date: app sessions, opened campaign messages, redeemed rewards
-- (stg_events) and win-back offers received (treatment exposures). user_features and campaign_history
-- count them strictly before their as-of time with the engagement_features macro.
select
    user_id,
    event_time as occurred_at,
    case event_type
        when 'app_opened' then 'session'
        when 'campaign_opened' then 'campaign_open'
        else 'redemption'
    end        as signal
from {{ ref('stg_events') }}
where event_type in ('app_opened', 'campaign_opened', 'reward_redeemed')

union all

select
    user_id,
    sent_at          as occurred_at,
    'offer_received' as signal
from {{ ref('stg_campaign_exposures') }}
where not is_holdout
