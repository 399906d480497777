-- One row per user who had signed up before run_date (no look-ahead).
select
    user_id::text                      as user_id,
    signup_at,
    {{ utc_date('signup_at') }}        as signup_date,
    nullif(lower(trim(platform)), '')  as platform,
    nullif(trim(home_zone), '')        as home_zone,
    marketing_opt_in
from {{ source('raw', 'users') }}
where signup_at < {{ run_cutoff() }}
