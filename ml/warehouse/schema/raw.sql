-- Raw layer: append-only, loaded idempotently by natural key (see ml/ingest.py). User and merchant ids are text
-- (the id contract in ml/warehouse/contract.py); ml/warehouse/ddl.py converts a warehouse made with bigint ids.
CREATE SCHEMA IF NOT EXISTS raw;

CREATE TABLE IF NOT EXISTS raw.events (
    event_id      text PRIMARY KEY,
    user_id       text        NOT NULL,
    event_type    text        NOT NULL,
    event_time    timestamptz NOT NULL,
    merchant_id   text,
    merchant_name text,
    order_total   numeric(12, 2),
    platform      text,
    zone          text,
    properties    jsonb,
    source_file   text        NOT NULL,
    loaded_at     timestamptz NOT NULL DEFAULT now(),
    load_xid      bigint      NOT NULL DEFAULT pg_current_xact_id()::text::bigint
);
-- load_xid: the transaction that loaded the row. Readers that take only what arrived since their last pass (dbt's
-- incremental staging, the GX raw gate) keep the xmin of that pass's snapshot: every transaction below it had
-- ended, so the rows a later commit brings always have load_xid >= it. A time watermark (loaded_at is the
-- transaction's start) would need a margin as long as the longest load. Added in place to older warehouses.
ALTER TABLE raw.events ADD COLUMN IF NOT EXISTS load_xid bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint;
-- BRIN, not a b-tree: ingest writes each file in event_id order, which keeps the primary key's
-- inserts sequential (see ml/ingest.py); a b-tree on event_time would then be written at random
-- and cost as much again. A daily file keeps each block range within its day. The DROP upgrades
-- warehouses made with the b-tree.
DROP INDEX IF EXISTS raw.events_event_time_idx;
CREATE INDEX IF NOT EXISTS events_event_time_brin ON raw.events USING brin (event_time);
-- The rows loaded since a reader's last pass; load_xid grows with the table.
CREATE INDEX IF NOT EXISTS events_load_xid_brin ON raw.events USING brin (load_xid);

CREATE TABLE IF NOT EXISTS raw.merchants (
    merchant_id   text   PRIMARY KEY,
    merchant_name text        NOT NULL,
    category      text        NOT NULL,
    zone          text        NOT NULL,
    lat           double precision,
    lng           double precision,
    price_level   smallint,
    opened_at     timestamptz NOT NULL,
    source_file   text        NOT NULL,
    loaded_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS raw.users (
    user_id          text   PRIMARY KEY,
    signup_at        timestamptz NOT NULL,
    platform         text,
    home_zone        text,
    marketing_opt_in boolean,
    source_file      text        NOT NULL,
    loaded_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS raw.campaign_exposures (
    campaign_id  text        NOT NULL,
    user_id      text        NOT NULL,
    sent_at      timestamptz NOT NULL,
    event_type   text        NOT NULL,
    reward_size  numeric(8, 2) NOT NULL,
    assignment   text        NOT NULL,
    source_file  text        NOT NULL,
    loaded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, user_id)
);
-- The probability the exposure's offer was chosen (issue 13); added in place to warehouses made before it, guarded
-- so no ALTER runs once it exists. Null for exposures logged without it.
do $$
begin
    if not exists (
        select from information_schema.columns
        where table_schema = 'raw' and table_name = 'campaign_exposures' and column_name = 'propensity'
    ) then
        alter table raw.campaign_exposures add column propensity double precision;
    end if;
end
$$;

-- Rows that could not be loaded, with the reason; nothing is dropped silently.
CREATE TABLE IF NOT EXISTS raw.quarantine (
    quarantine_id  bigserial PRIMARY KEY,
    table_name     text        NOT NULL,
    source_file    text        NOT NULL,
    row_number     bigint      NOT NULL,
    reason         text        NOT NULL,
    record         jsonb       NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (table_name, source_file, row_number)
);

-- One row per file loaded, written in the file's own transaction: ingest skips a file whose path,
-- size and modification time match, so the daily load does not re-read the folder's history.
CREATE TABLE IF NOT EXISTS raw.ingested_files (
    source_file      text PRIMARY KEY,
    size_bytes       bigint      NOT NULL,
    modified_ns      bigint      NOT NULL,
    table_name       text        NOT NULL,
    rows_read        bigint      NOT NULL,
    rows_loaded      bigint      NOT NULL,
    rows_duplicate   bigint      NOT NULL,
    rows_quarantined bigint      NOT NULL,
    loaded_at        timestamptz NOT NULL DEFAULT now()
);
