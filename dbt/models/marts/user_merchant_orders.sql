{{ config(indexes=[{'columns': ['user_id', 'merchant_id'], 'unique': true}]) }}
-- One row per (user, merchant) pair with at least one completed order before run_date (page views alone do
-- not make a merchant "ordered from"): the purchase history the CRM segments read (ml/crm/segments.py).
with interactions as (
    select * from {{ ref('int_user_merchant_interactions') }}
    where order_count > 0
),

merchants as (
    select * from {{ ref('stg_merchants') }}
)

select
    interactions.user_id,
    interactions.merchant_id,
    merchants.merchant_name,
    merchants.category,
    interactions.order_count,
    interactions.order_value,
    interactions.first_order_at,
    interactions.last_order_at
from interactions
inner join merchants
    on merchants.merchant_id = interactions.merchant_id
