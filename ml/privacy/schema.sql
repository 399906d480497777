-- Erasure bookkeeping (ml/privacy): never a user id in clear, only its salted hash (ml/privacy/tombstones.py).
create schema if not exists ops;

-- One row per erased user: ingest drops every row whose user_id hashes to one of these, forever.
create table if not exists ops.erased_users (
    user_hash  text        primary key,
    request_id text        not null,
    erased_at  timestamptz not null default now()
);

-- What each erasure request removed: one row per place (a table, an export file, a registered model).
create table if not exists ops.erasure_audit (
    request_id   text        not null,
    erased_at    timestamptz not null,
    users        integer     not null,
    location     text        not null,
    rows_removed bigint      not null,
    primary key (request_id, location)
);
