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
