-- What each daily pipeline step did (ml/pipeline/tasks.py recorded_step): its duration and summary.
create schema if not exists ops;

create table if not exists ops.pipeline_steps (
    run_date    date        not null,
    step        text        not null,
    finished_at timestamptz not null default now(),
    seconds     double precision not null,
    summary     jsonb       not null,
    primary key (run_date, step)
);

-- Scoring shards waiting for publish_segments (ml/crm/publish.py stage_shard): one row per shard a score_shard
-- task scored, with the ranker version it used and how many users it scored; a re-run replaces its shard's rows.
-- publish_segments swaps the staged recommendations into crm and deletes the run_date's rows in the same
-- transaction.
create table if not exists ops.scored_shards (
    run_date      date    not null,
    shard_count   integer not null,
    shard         integer not null,
    users         integer not null,
    model_version text    not null,
    scored_at     timestamptz not null default now(),
    primary key (run_date, shard_count, shard)
);

-- The recommendations of each scored shard, as crm.recommendations takes them (without the model version, which
-- is the shard's).
create table if not exists ops.staged_recommendations (
    run_date      date    not null,
    shard_count   integer not null,
    shard         integer not null,
    user_id       text    not null,
    mode          text    not null,
    rank          integer not null,
    merchant_id   text    not null,
    merchant_name text,
    score         double precision not null,
    reason        text,
    primary key (run_date, shard_count, shard, user_id, mode, rank)
);

-- How far each data-quality suite with an arrival column has validated (ml/warehouse/quality.py): the xmin of the
-- snapshot its last passing run began with; its next run reads the rows whose load_xid is at or above it.
create table if not exists ops.quality_gates (
    suite                 text   primary key,
    validated_through_xid bigint not null
);
