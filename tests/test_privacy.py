"""Privacy on the embedded warehouse: erasure from raw, dbt-built tables, crm and the exports, tombstones that keep
re-loaded files from bringing a user back, the audit, least-privilege roles and raw retention."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
from datetime import UTC, date, datetime

import psycopg
import pytest

from ml.pipeline import tasks
from ml.privacy import roles, tombstones
from ml.privacy.erasure import forget_users
from ml.warehouse import ingest
from ml.warehouse.dbt_runner import run_dbt
from ml.warehouse.postgres import login_url

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
GONE = "user-to-forget"
KEPT = "user-to-keep"

USERS_CSV = f"""user_id,signup_at,platform,home_zone,marketing_opt_in
{GONE},2026-10-01T00:00:00Z,ios,Z1,true
{KEPT},2026-10-01T00:00:00Z,ios,Z1,true
"""
EVENTS_CSV = f"""event_id,user_id,event_type,event_time,merchant_id,merchant_name,order_total,platform,zone,properties
e1,{GONE},checkout_completed,2026-11-20T10:00:00Z,m1,Foo,25.5,ios,Z1,{{}}
e2,{KEPT},checkout_completed,2026-11-20T10:00:00Z,m1,Foo,25.5,ios,Z1,{{}}
e3,{GONE},teleported,2026-11-20T11:00:00Z,,,,ios,Z1,
e4,{KEPT},teleported,2026-11-20T11:00:00Z,,,,ios,Z1,
e5, {GONE} ,app_opened,2026-11-21T11:00:00Z,,,,ios,Z1,
"""
EXPOSURES_CSV = f"""campaign_id,user_id,sent_at,event_type,reward_size,assignment
c1,{GONE},2026-11-10T00:00:00Z,free_delivery,10,treatment
c1,{KEPT},2026-11-10T00:00:00Z,none,0,holdout
"""
# Stand-ins for what dbt and the publish write: a mart table, a view on raw (dbt's staging), a crm table.
DOWNSTREAM_SQL = """
CREATE SCHEMA IF NOT EXISTS marts;
CREATE SCHEMA IF NOT EXISTS staging;
CREATE TABLE marts.user_features AS SELECT user_id, true AS marketing_opt_in FROM raw.users;
CREATE VIEW staging.stg_users AS SELECT user_id FROM raw.users;
CREATE TABLE crm.segment_members_copy AS
    SELECT d::date AS run_date, user_id AS user_id, 'm1'::text AS recommended_merchant_id
    FROM raw.users, generate_series('2026-11-01'::date, '2026-11-03'::date, '1 day') d;
"""


def _write_drop_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "users.csv").write_text(USERS_CSV)
    (folder / "events_2026-11-20.csv").write_text(EVENTS_CSV)
    (folder / "campaign_exposures.csv").write_text(EXPOSURES_CSV)


def _count(url: str, query: str, *params) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchone()[0]


def _user_rows(url: str, user_id: str) -> dict[str, int]:
    """Rows naming ``user_id`` per table, in every table of every schema with a user_id column, and the
    quarantine's records."""
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.columns WHERE column_name = 'user_id' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        rows = {
            f"{schema}.{table}": conn.execute(
                f'SELECT count(*) FROM "{schema}"."{table}" WHERE btrim(user_id::text) = %s', (user_id,)
            ).fetchone()[0]
            for schema, table in tables
        }
        rows["raw.quarantine"] = conn.execute(
            "SELECT count(*) FROM raw.quarantine WHERE btrim(record->>'user_id') = %s", (user_id,)
        ).fetchone()[0]
    return rows


@pytest.fixture
def loaded(settings):
    _write_drop_folder(settings.input_dir)
    ingest.ingest_path(settings.warehouse_url, settings.input_dir, now=NOW)
    with psycopg.connect(settings.warehouse_url) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS crm")
        conn.execute(DOWNSTREAM_SQL)
    settings.exports_dir.mkdir(parents=True)
    (settings.exports_dir / "lapsed_2026-11-03.csv").write_text(
        f"user_id,segment,rank\n{GONE},lapsed,1\n{KEPT},lapsed,1\n{GONE},lapsed,2\n"
    )
    (settings.exports_dir / "no_ids_2026-11-03.csv").write_text("merchant_id,orders\nm1,2\n")
    return settings


def test_forget_removes_the_user_everywhere_and_keeps_everyone_else(loaded):
    url = loaded.warehouse_url
    before = _user_rows(url, GONE)
    assert before["raw.events"] == 2 and before["raw.quarantine"] == 1 and before["crm.segment_members_copy"] == 3
    kept_before = _user_rows(url, KEPT)
    untouched_export = (loaded.exports_dir / "no_ids_2026-11-03.csv").stat().st_mtime_ns

    report = forget_users(loaded, [f" {GONE} "], request_id="req-1")

    assert set(_user_rows(url, GONE).values()) == {0}
    assert _user_rows(url, KEPT) == kept_before
    assert report.rows_removed["raw.events"] == 2
    assert report.rows_removed["raw.users"] == 1
    assert report.rows_removed["raw.campaign_exposures"] == 1
    assert report.rows_removed["raw.quarantine"] == 1
    assert report.rows_removed["marts.user_features"] == 1
    assert report.rows_removed["crm.segment_members_copy"] == 3
    assert report.rows_removed["exports/lapsed_2026-11-03.csv"] == 2
    with (loaded.exports_dir / "lapsed_2026-11-03.csv").open() as handle:
        assert [row["user_id"] for row in csv.DictReader(handle)] == [KEPT]
    assert (loaded.exports_dir / "no_ids_2026-11-03.csv").stat().st_mtime_ns == untouched_export
    assert _count(url, "SELECT count(*) FROM staging.stg_users WHERE user_id = %s", GONE) == 0

    # The tombstone and the audit hold a salted hash and counts, never the id.
    with psycopg.connect(url) as conn:
        stored = " ".join(
            str(row)
            for table in ("ops.erased_users", "ops.erasure_audit")
            for row in conn.execute(f"SELECT * FROM {table}").fetchall()
        )
        audit = dict(
            conn.execute("SELECT location, rows_removed FROM ops.erasure_audit WHERE request_id = 'req-1'").fetchall()
        )
    assert GONE not in stored
    assert tombstones.user_hash(tombstones.erasure_salt(loaded), GONE) in stored
    assert audit["raw.events"] == 2 and audit["exports/lapsed_2026-11-03.csv"] == 2
    assert os.stat(tombstones.salt_file(loaded)).st_mode & 0o777 == 0o600

    # Forgetting again removes nothing more.
    assert forget_users(loaded, [GONE], request_id="req-2").total_rows == 0


def test_reloading_the_files_never_brings_an_erased_user_back(loaded):
    url = loaded.warehouse_url
    forget_users(loaded, [GONE], request_id="req-1")
    for file in loaded.input_dir.iterdir():  # changed files are read again
        os.utime(file, ns=(file.stat().st_atime_ns, file.stat().st_mtime_ns + 10**9))

    results = ingest.ingest_path(url, loaded.input_dir, now=NOW, erasure_salt=tombstones.erasure_salt(loaded))

    erased = {result.table: result.rows_erased for result in results}
    assert erased == {"users": 1, "events": 3, "campaign_exposures": 1}
    assert set(_user_rows(url, GONE).values()) == {0}
    assert ingest.summarise(results)["rows_erased"].sum() == 5
    # Without the salt the tombstones cannot be read: ingest refuses rather than load the user again.
    with pytest.raises(ValueError, match="erasure salt"):
        ingest.ingest_path(url, loaded.input_dir, now=NOW)


def test_forget_refuses_bad_ids_with_one_clear_line(settings):
    with pytest.raises(ValueError, match="empty"):
        forget_users(settings, ["  "])
    with pytest.raises(ValueError, match="longer than 128"):
        forget_users(settings, ["u" * 129])
    environment = {**os.environ, "REKINDLE_HOME": str(settings.home)}
    for arguments in ([], ["  "]):
        result = subprocess.run(
            [sys.executable, "-m", "ml.cli", "forget", *arguments], env=environment, capture_output=True, text=True
        )
        assert result.returncode == 2
        assert result.stderr.startswith("rekindle forget: ") and len(result.stderr.strip().splitlines()) == 1


# What each role must be refused: (a read, a write).
REFUSED = {
    "crm": ("SELECT count(*) FROM marts.user_features", "INSERT INTO crm.probe VALUES ('x')"),
    "dashboard": ("SELECT count(*) FROM raw.users", "INSERT INTO marts.user_features VALUES ('x', true)"),
    "api": (
        "SELECT count(*) FROM raw.users",
        "UPDATE raw.events SET zone = 'Z9'",
    ),
}
ALLOWED_READS = {
    "crm": ("SELECT count(*) FROM crm.probe",),
    "dashboard": ("SELECT count(*) FROM crm.probe", "SELECT count(*) FROM marts.user_features"),
    "api": ("SELECT count(*) FROM crm.probe", "SELECT count(*) FROM marts.user_features"),
}


def test_each_role_reads_what_it_needs_and_is_refused_the_rest(loaded):
    url = loaded.warehouse_url
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE crm.probe (user_id text)")
        names = roles.ensure_roles(conn, loaded)
        roles.ensure_roles(conn, loaded)  # idempotent
    for reader, (read, write) in REFUSED.items():
        reader_url = login_url(url, names[reader])
        for statement in (read, write):
            with psycopg.connect(reader_url, autocommit=True) as conn:
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                    conn.execute(statement)
        with psycopg.connect(reader_url, autocommit=True) as conn:
            for statement in ALLOWED_READS[reader]:
                conn.execute(statement)
    with psycopg.connect(login_url(url, names["api"]), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO raw.events (event_id, user_id, event_type, event_time, source_file) "
            "VALUES ('api-1', 'u', 'app_opened', now(), 'api')"
        )


def test_the_daily_load_purges_raw_events_past_retention_on_day_two(settings):
    settings = dataclasses.replace(settings, raw_retention_days=10)
    settings.input_dir.mkdir(parents=True)
    (settings.input_dir / "events.csv").write_text(
        "event_id,user_id,event_type,event_time\n"
        "old,u1,app_opened,2026-10-21T12:00:00Z\n"
        "edge,u1,app_opened,2026-10-22T00:00:00Z\n"
        "new,u1,app_opened,2026-10-30T12:00:00Z\n"
    )
    tasks.prepare_warehouse(settings, date(2026, 11, 1))

    day_one = tasks.load_events(settings, date(2026, 11, 1))  # cutoff 2026-10-22 00:00
    staging = "stg_users stg_merchants stg_events_classified"
    assert run_dbt(settings, settings.warehouse_url, ["run"], date(2026, 11, 1), staging).success
    day_two = tasks.load_events(settings, date(2026, 11, 2))  # cutoff 2026-10-23 00:00

    assert day_one["expired_raw_events"] == 1 and day_two["expired_raw_events"] == 1
    with psycopg.connect(settings.warehouse_url) as conn:
        assert [e for (e,) in conn.execute("SELECT event_id FROM raw.events")] == ["new"]
        # dbt's incremental staging keeps a copy of each raw event: it goes with the raw row
        assert [e for (e,) in conn.execute("SELECT event_id FROM staging.stg_events_classified")] == ["new"]


MARTS_FOR_REFIT_SQL = """
CREATE SCHEMA IF NOT EXISTS marts;
CREATE TABLE marts.orders AS
    SELECT * FROM (VALUES
        ('user-gone-1', 'm10', '2026-10-20'::timestamptz, 40.0),
        ('kept-1', 'm10', '2026-10-20'::timestamptz, 40.0),
        ('kept-1', 'm11', '2026-10-21'::timestamptz, 40.0),
        ('kept-2', 'm11', '2026-10-21'::timestamptz, 40.0)
    ) AS o (user_id, merchant_id, ordered_at, order_total);
CREATE TABLE marts.user_features AS
    SELECT * FROM (VALUES ('user-gone-1', 'Z1', '2026-10-01'::timestamptz), ('kept-1', 'Z1', '2026-10-01'::timestamptz),
                          ('kept-2', 'Z2', '2026-10-01'::timestamptz))
    AS u (user_id, home_zone, signup_at);
CREATE TABLE marts.merchant_features AS
    SELECT * FROM (VALUES ('m10', 'Foo', 'pizza', 'Z1', 25.3, 51.5, 2, '2026-01-01'::timestamptz),
                          ('m11', 'Bar', 'sushi', 'Z2', 25.3, 51.5, 3, '2026-01-01'::timestamptz))
    AS m (merchant_id, merchant_name, category, zone, lat, lng, price_level, opened_at);
"""


def _marts_for_refit(settings):
    """The small marts a ranker is refitted on (user-gone-1 among the customers); the orders and the market context,
    MLflow pointed at the warehouse."""
    from ml.pipeline import tracking
    from ml.warehouse import marts

    with psycopg.connect(settings.warehouse_url) as conn:
        conn.execute(MARTS_FOR_REFIT_SQL)
        orders = marts.load_orders(conn)
        context = tasks.load_market_context(conn)
    tracking.configure(settings, settings.warehouse_url)
    return orders, context


def test_the_registered_ranker_is_refitted_without_the_user_under_the_same_aliases(settings):
    import mlflow
    from mlflow import MlflowClient

    from ml.pipeline import tracking
    from ml.privacy import models
    from ml.recommend.merchant import MerchantRecommender, ModelSpec

    url = settings.warehouse_url
    orders, context = _marts_for_refit(settings)
    name = settings.ranker_model_name
    as_of = datetime(2026, 11, 1, tzinfo=UTC)
    versions = []
    for _ in range(2):
        with mlflow.start_run(experiment_id=tracking.experiment_id(settings, "privacy-test")):
            model = MerchantRecommender(ModelSpec("item_cosine")).fit(orders, as_of, context)
            versions.append(tracking.log_model(tracking.RecommenderPyfunc(model), name))
    client = MlflowClient()
    for alias in (tracking.CHAMPION, tracking.CHALLENGER):
        client.set_registered_model_alias(name, alias, versions[1])
    assert models.held_users(tracking.load_alias(name).recommender, ["user-gone-1"]) == 1

    removed = models.remove_users(settings, url, ["user-gone-1"], "req-models")

    champion = tracking.alias_version(name, tracking.CHAMPION)
    assert champion not in versions and tracking.alias_version(name, tracking.CHALLENGER) == champion
    assert removed == {
        f"mlflow:{name} v{versions[1]} -> v{champion} (challenger, champion)": 1,
        f"mlflow:{name} v{versions[0]} (deleted)": 1,
        f"mlflow:{name} v{versions[1]} (deleted)": 1,
    }
    cleaned = tracking.load_alias(name).recommender
    assert models.held_users(cleaned, ["user-gone-1"]) == 0
    assert models.held_users(cleaned, ["kept-1", "kept-2"]) == 2
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == [champion]
    assert not [p for p in settings.mlflow_artifacts_dir.rglob("*") if p.is_file() and b"user-gone-1" in p.read_bytes()]
    run = client.get_run(client.get_model_version(name, champion).run_id)
    assert run.data.tags[models.ERASURE_TAG] == "req-models"


def test_a_registered_ranker_this_code_cannot_load_is_deleted_unread(settings, tmp_path, monkeypatch):
    """A version an older release logged may hold the user and can be neither read nor cleaned: erasure deletes it
    (with its alias) rather than failing or leaving it."""
    import mlflow
    from mlflow import MlflowClient
    from old_release import OldRelease

    from ml.pipeline import tracking
    from ml.privacy import models
    from ml.recommend.merchant import MerchantRecommender, ModelSpec

    url = settings.warehouse_url
    orders, context = _marts_for_refit(settings)
    name = settings.ranker_model_name
    old_release = OldRelease(tmp_path, monkeypatch)
    with mlflow.start_run(experiment_id=tracking.experiment_id(settings, "privacy-test")):
        model = MerchantRecommender(ModelSpec("item_cosine")).fit(orders, datetime(2026, 11, 1, tzinfo=UTC), context)
        old = old_release.log(model, name)
    client = MlflowClient()
    client.set_registered_model_alias(name, tracking.CHAMPION, old)
    old_release.upgrade()

    removed = models.remove_users(settings, url, ["user-gone-1"], "req-old-release")

    assert removed == {f"mlflow:{name} v{old} (deleted unread: this code cannot load it)": 1}
    assert client.search_model_versions(f"name = '{name}'") == []
    assert tracking.alias_version(name, tracking.CHAMPION) is None
    assert not [p for p in settings.mlflow_artifacts_dir.rglob("*") if p.is_file() and b"user-gone-1" in p.read_bytes()]


def test_an_erasure_while_the_day_is_scored_reaches_its_publication(settings, monkeypatch):
    """A user erased between scoring and publishing (the API's DELETE during the daily run), and one erased while a
    shard that had read them was still being scored (its rows staged after the erasure): the publish goes through
    and names neither, in crm or the exports."""
    from ml.synthetic.marketplace import generate_marketplace

    run_date = date(2026, 11, 1)
    generate_marketplace(seed=7, days=30, end_date=run_date, n_users=700, n_merchants=90).write(settings.input_dir)
    monkeypatch.setenv("REKINDLE_HOME", str(settings.home))
    monkeypatch.setenv("REKINDLE_WAREHOUSE_URL", settings.warehouse_url)
    for step in (tasks.prepare_warehouse, tasks.load_events, tasks.build_marts, tasks.train_ranker):
        step(settings, run_date)
    tasks.score_all_shards(settings, run_date)
    with psycopg.connect(settings.warehouse_url) as conn:
        gone_between, gone_while_scored = [
            u
            for (u,) in conn.execute(
                "SELECT DISTINCT user_id FROM ops.staged_recommendations WHERE run_date = %s ORDER BY 1 LIMIT 2",
                (run_date,),
            )
        ]
        staged = conn.execute(
            "SELECT * FROM ops.staged_recommendations WHERE user_id = %s", (gone_while_scored,)
        ).fetchall()

    forget_users(settings, [gone_between, gone_while_scored])
    with psycopg.connect(settings.warehouse_url) as conn:
        # What the late shard writes: its rows, and the user in its count.
        conn.cursor().executemany(
            f"INSERT INTO ops.staged_recommendations VALUES ({', '.join(['%s'] * len(staged[0]))})", staged
        )
        run, shard_count, shard = staged[0][:3]
        conn.execute(
            "UPDATE ops.scored_shards SET users = users + 1 WHERE (run_date, shard_count, shard) = (%s, %s, %s)",
            (run, shard_count, shard),
        )
    summary = tasks.publish_segments(settings, run_date)

    assert summary["erased_users_dropped"] == 1 and summary["recommendations"] > 0
    assert len(summary["exports"]) > 2
    for user_id in (gone_between, gone_while_scored):
        assert {table: n for table, n in _user_rows(settings.warehouse_url, user_id).items() if n} == {}
        for path in settings.exports_dir.glob("*.csv"):
            with path.open() as export:
                assert user_id not in {row["user_id"] for row in csv.DictReader(export)}, path.name
