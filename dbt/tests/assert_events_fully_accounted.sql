-- Nothing disappears silently: every raw event is either in stg_events or in stg_events_rejected.
with counts as (
    select
        (select count(*) from {{ source('raw', 'events') }})        as raw_rows,
        (select count(*) from {{ ref('stg_events') }})              as clean_rows,
        (select count(*) from {{ ref('stg_events_rejected') }})     as rejected_rows
)

select *
from counts
where raw_rows != clean_rows + rejected_rows
