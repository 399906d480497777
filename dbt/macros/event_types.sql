{#- The data contract's vocabularies (DESIGN.md "Data contract"), shared by models and tests. -#}

{% macro event_types() -%}
    {{ return(['checkout_completed', 'merchant_page_viewed', 'product_page_viewed',
               'app_opened', 'campaign_opened', 'reward_redeemed']) }}
{%- endmacro %}

{% macro view_event_types() -%}
    {{ return(['merchant_page_viewed', 'product_page_viewed']) }}
{%- endmacro %}

{% macro campaign_event_types() -%}
    {{ return(['free_delivery', 'percent_discount', 'cashback', 'double_points', 'none']) }}
{%- endmacro %}

{% macro sql_list(values) -%}
    ({%- for v in values -%}'{{ v }}'{{ ", " if not loop.last }}{%- endfor -%})
{%- endmacro %}
