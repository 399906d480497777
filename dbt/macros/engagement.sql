{#- Engagement as of `as_of` (a timestamptz), aggregated over int_engagement_events rows strictly before it:
    a user who still opens the app has not churned, and past offers show how deal-responsive they are.
    Counts are NULL when the user has no rows at all; callers coalesce them to 0. -#}
{% macro engagement_features(as_of) -%}
    count(*) filter (where signal = 'session'
                       and occurred_at >= {{ as_of }} - interval '14 days')             as sessions_14d,
    {{ utc_date(as_of) }} - {{ utc_date("max(occurred_at) filter (where signal = 'session')") }} as days_since_session,
    count(*) filter (where signal = 'offer_received')                                    as offers_received,
    count(*) filter (where signal = 'campaign_open')                                     as campaign_opens,
    count(*) filter (where signal = 'redemption')                                        as offers_redeemed
{%- endmacro %}

{#- The select list of those features from the left-joined alias `alias`, counts defaulting to 0. -#}
{% macro engagement_columns(alias) -%}
    coalesce({{ alias }}.sessions_14d, 0)       as sessions_14d,
    {{ alias }}.days_since_session              as days_since_session,
    coalesce({{ alias }}.offers_received, 0)    as offers_received,
    coalesce({{ alias }}.campaign_opens, 0)     as campaign_opens,
    coalesce({{ alias }}.offers_redeemed, 0)    as offers_redeemed
{%- endmacro %}
