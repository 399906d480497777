-- One row per (campaign, user) exposure sent before run_date.
select
    trim(campaign_id)                      as campaign_id,
    user_id::text                          as user_id,
    sent_at,
    lower(trim(event_type))                as event_type,
    reward_size::numeric(8, 2)             as reward_size,
    lower(trim(assignment))                as assignment,
    lower(trim(assignment)) = 'holdout'    as is_holdout,
    propensity
from {{ source('raw', 'campaign_exposures') }}
where sent_at < {{ run_cutoff() }}
