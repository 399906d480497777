-- One row per merchant open before run_date (a merchant opening later is not visible yet).
select
    merchant_id::text                    as merchant_id,
    trim(merchant_name)                  as merchant_name,
    trim(category)                       as category,
    trim(zone)                           as zone,
    lat::double precision                as lat,
    lng::double precision                as lng,
    price_level::int                     as price_level,
    opened_at,
    {{ utc_date('opened_at') }}          as opened_date
from {{ source('raw', 'merchants') }}
where opened_at < {{ run_cutoff() }}
