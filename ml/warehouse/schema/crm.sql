-- What the CRM reads, written by the daily publish (ml/crm/publish.py, ml/crm/offers.py) and the campaign
-- readout (ml/experiments/readout.py). The six segment tables (crm.high_affinity_prospects, ...) are made from
-- their Segment definitions in ml/crm/segments.py, where each one's fields sit beside the query that fills them.
create schema if not exists crm;

-- Every user's top-N merchants per run_date and mode (ml/recommend/modes.py: winback lists favourites too,
-- discovery only merchants the user never ordered from); the in-app recommendations: every user, not only
-- marketable ones.
create table if not exists crm.recommendations (
    run_date      date    not null,
    user_id       text    not null,
    mode          text    not null,
    rank          integer not null,
    merchant_id   text    not null,
    merchant_name text,
    score         double precision not null,
    reason        text,
    model_version text    not null,
    primary key (run_date, user_id, mode, rank)
);

-- A warehouse made before the modes held one discovery list per user: its rows become discovery rows.
do $$
begin
    if not exists (
        select from information_schema.columns
        where table_schema = 'crm' and table_name = 'recommendations' and column_name = 'mode'
    ) then
        alter table crm.recommendations add column mode text not null default 'discovery';
        alter table crm.recommendations alter column mode drop default;
        alter table crm.recommendations drop constraint recommendations_pkey;
        alter table crm.recommendations add primary key (run_date, user_id, mode, rank);
    end if;
end
$$;

-- The scored lifecycle segments (settings.score_segments) with their recommendations, marketable users only.
create table if not exists crm.segment_members (
    run_date      date    not null,
    segment       text    not null,
    user_id       text    not null,
    rank          integer not null,
    merchant_id   text    not null,
    merchant_name text,
    score         double precision not null,
    model_version text    not null,
    published_at  timestamptz not null default now(),
    primary key (run_date, segment, user_id, rank)
);

-- Today's win-back offers and experiment arms, replaced per run_date.
create table if not exists crm.inactive_user_offers (
    run_date        date    not null,
    campaign_id     text    not null,
    user_id         text    not null,
    segment         text    not null,
    arm             text    not null,
    event_type      text    not null,
    reward_size     numeric(8, 2) not null,
    expected_uplift double precision not null,
    expected_cost   double precision not null,
    is_holdout      boolean not null,
    model_version   text    not null,
    primary key (run_date, user_id)
    -- and the columns added below
);

-- Exploration (issue 13): whether the personalised offer was drawn uniformly instead of chosen by the policy,
-- and the probability that this offer was the one sent given the user's experiment arm (the offer model
-- weights exposures by its inverse). Added in place and guarded, like crm.experiment_results' columns below;
-- rows published before them read explored false and propensity null (unknown).
do $$
begin
    if not exists (
        select from information_schema.columns
        where table_schema = 'crm' and table_name = 'inactive_user_offers' and column_name = 'propensity'
    ) then
        alter table crm.inactive_user_offers
            add column if not exists explored   boolean not null default false,
            add column if not exists propensity double precision
                check (propensity > 0 and propensity <= 1);
    end if;
end
$$;

-- One row per arm of a read-out campaign, replaced when the campaign is read out again.
create table if not exists crm.experiment_results (
    campaign_id                    text    not null,
    campaign_date                  date    not null,
    window_days                    integer not null,
    window_start                   timestamptz not null,
    window_end                     timestamptz not null,
    arm                            text    not null,
    users                          bigint  not null,
    re_engaged_users               bigint  not null,
    re_engagement_rate             double precision,
    revenue                        double precision not null,
    revenue_per_user               double precision,
    abs_lift_vs_holdout            double precision,
    abs_lift_vs_holdout_ci_low     double precision,
    abs_lift_vs_holdout_ci_high    double precision,
    rel_lift_vs_holdout            double precision,
    rel_lift_vs_holdout_ci_low     double precision,
    rel_lift_vs_holdout_ci_high    double precision,
    p_value_vs_holdout             double precision,
    abs_lift_vs_non_personalised          double precision,
    abs_lift_vs_non_personalised_ci_low   double precision,
    abs_lift_vs_non_personalised_ci_high  double precision,
    rel_lift_vs_non_personalised          double precision,
    rel_lift_vs_non_personalised_ci_low   double precision,
    rel_lift_vs_non_personalised_ci_high  double precision,
    p_value_vs_non_personalised           double precision,
    meets_seed_criterion           boolean,
    seed_criterion_significant     boolean,
    computed_at                    timestamptz not null default now(),
    primary key (campaign_id, arm)
    -- and the columns added below
);

-- What each arm cost and earned (issue 13): added in place, so a warehouse created before them migrates the
-- next time this file runs. Guarded, so that once they exist no ALTER (and no exclusive lock on the table)
-- runs: this file runs before every crm write.
do $$
begin
    if exists (
        select from unnest(array[
            'redeemed_users', 'reward_cost', 'reward_cost_per_user', 'incremental_reactivations',
            'cost_per_incremental_reactivation', 'net_incremental_margin', 'net_incremental_margin_per_user',
            'personalised_cost_within_non_personalised', 'order_margin_rate'
        ]) as wanted (column_name)
        where not exists (
            select from information_schema.columns c
            where c.table_schema = 'crm' and c.table_name = 'experiment_results'
              and c.column_name = wanted.column_name
        )
    ) then
        alter table crm.experiment_results
            add column if not exists redeemed_users                     bigint,
            add column if not exists reward_cost                        double precision,
            add column if not exists reward_cost_per_user               double precision,
            add column if not exists incremental_reactivations          double precision,
            add column if not exists cost_per_incremental_reactivation  double precision,
            add column if not exists net_incremental_margin             double precision,
            add column if not exists net_incremental_margin_per_user    double precision,
            add column if not exists personalised_cost_within_non_personalised boolean,
            add column if not exists order_margin_rate                  double precision;
    end if;
end
$$;
