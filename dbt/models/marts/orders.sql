{{ config(indexes=[{'columns': ['ordered_at']}]) }}
-- One row per completed checkout before run_date, deduplicated by staging: a checkout loaded twice (same
-- event_id) or re-sent under another event_id counts once. The orders Python reads: the recommenders'
-- training data (ml/warehouse/marts.py load_orders) and the campaign readout's re-engagement and revenue.
select
    order_id,
    user_id,
    merchant_id,
    merchant_name,
    category,
    ordered_at,
    order_date,
    order_total,
    platform
from {{ ref('int_orders') }}
