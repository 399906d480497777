{{ config(indexes=[{'columns': ['campaign_id', 'user_id']}]) }}
-- One row per reward_redeemed event of a campaign before run_date, deduplicated by staging (an event loaded
-- twice counts once). The one definition of "redeemed": campaign_history's redeemed flag and the campaign
-- readout's realised reward cost (ml/warehouse/marts.py redeemed_users) both read it. A reward is paid when
-- it is redeemed, at most once per (campaign, user).
select
    event_id,
    campaign_id,
    user_id,
    event_time as redeemed_at,
    merchant_id
from {{ ref('stg_events') }}
where event_type = 'reward_redeemed'
  and campaign_id is not null
