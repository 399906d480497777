"""CSV exports of the CRM segment tables and ``rekindle export``, on the real embedded Postgres."""

from __future__ import annotations

import argparse
import csv
from datetime import date
from pathlib import Path

import psycopg
import pytest
from conftest import new_database

from ml.cli import crm as export_cli
from ml.crm import export, segments
from ml.settings import Settings

RUN_DATE = date(2026, 11, 1)
EARLIER = date(2026, 10, 31)
LAPSED_HEADER = [
    "user_id",
    "segment",
    "recommended_merchant_id",
    "recommended_merchant_name",
    "score",
    "export_date",
    "rank",
    "days_since_last_order",
]
# user_id, platform, home_zone, merchant_id, merchant_name, score, rank, days_since_last_order
LAPSED = [
    (1, "ios", "west", 10, "Pizza Place", 0.9, 1, 20),
    (1, "ios", "west", 20, "Sushi, Bar", 0.4, 2, 20),
    (2, "android", "west", 10, "Pizza Place", 0.7, 1, 31),
    (3, "ios", "east", 30, "Burger Joint", 0.6, 1, 15),
    (4, "ios", "west", 10, "Pizza Place", 0.95, 1, 22),  # not opted in to marketing: never exported
]
OPTED_IN = {1: True, 2: True, 3: True, 4: False, 9: True}


@pytest.fixture(scope="module")
def published(postgres_server_url) -> str:
    """lapsed_personalised rows for RUN_DATE and one for EARLIER; recommendations mark both runs as published;
    the users' marketing consent in marts.user_features.

    One database for the module: exports only read it.
    """
    url = new_database(postgres_server_url, "crm_export")
    with psycopg.connect(url) as conn:
        segments.ensure_tables(conn)
        rows = [(RUN_DATE, *row) for row in LAPSED] + [(EARLIER, 9, "web", "east", 10, "Pizza Place", 0.8, 1, 40)]
        conn.cursor().executemany(
            "INSERT INTO crm.lapsed_personalised (run_date, segment, user_id, platform, home_zone, "
            "recommended_merchant_id, recommended_merchant_name, score, rank, days_since_last_order) "
            "VALUES (%s, 'lapsed_personalised', %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
        conn.cursor().executemany(
            "INSERT INTO crm.recommendations VALUES (%s, 1, 'winback', 1, 10, 'Pizza Place', 1.0, NULL, '1')",
            [(RUN_DATE,), (EARLIER,)],
        )
        conn.cursor().executemany(
            "INSERT INTO crm.segment_members (run_date, segment, user_id, rank, merchant_id, merchant_name, score, "
            "model_version) VALUES (%s, 'lapsed', %s, %s, %s, %s, %s, '1')",
            [(RUN_DATE, user, rank, merchant, name, score) for user, _, _, merchant, name, score, rank, _ in LAPSED],
        )
        conn.execute(
            "CREATE SCHEMA marts; "
            "CREATE TABLE marts.user_features (user_id text, marketing_opt_in boolean, platform text, home_zone text)"
        )
        places = {user: (platform, zone) for user, platform, zone, *_ in LAPSED} | {9: ("web", "east")}
        conn.cursor().executemany(
            "INSERT INTO marts.user_features VALUES (%s, %s, %s, %s)",
            [(user, opted_in, *places[user]) for user, opted_in in OPTED_IN.items()],
        )
    return url


def _read(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _export(url: str, out: Path, segment: str = "lapsed_personalised", run_date: date = RUN_DATE, **filters) -> Path:
    with psycopg.connect(url) as conn:
        return export.export_segment(conn, segment, run_date, out, **filters)


def test_file_name_header_and_rows_of_one_run_date(published, tmp_path):
    path = _export(published, tmp_path / "exports")

    assert path == tmp_path / "exports" / "lapsed_personalised_2026-11-01.csv"
    with path.open(newline="") as f:
        assert next(csv.reader(f)) == LAPSED_HEADER
    rows = _read(path)
    assert [(r["user_id"], r["recommended_merchant_id"]) for r in rows] == [
        ("1", "10"),
        ("1", "20"),
        ("2", "10"),
        ("3", "30"),
    ]
    assert rows[1] == {
        "user_id": "1",
        "segment": "lapsed_personalised",
        "recommended_merchant_id": "20",
        "recommended_merchant_name": "Sushi, Bar",
        "score": "0.4",
        "export_date": "2026-11-01",
        "rank": "2",
        "days_since_last_order": "20",
    }
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left behind


@pytest.mark.parametrize(
    ("filters", "expected_users"),
    [
        ({"min_score": 0.7}, ["1", "2"]),
        ({"platform": "ios"}, ["1", "1", "3"]),
        ({"zone": "west"}, ["1", "1", "2"]),
        ({"min_score": 0.5, "platform": "ios", "zone": "west"}, ["1"]),
        ({"platform": "desktop"}, []),
    ],
)
def test_filters_by_min_score_platform_and_zone(published, tmp_path, filters, expected_users):
    rows = _read(_export(published, tmp_path, **filters))

    assert [r["user_id"] for r in rows] == expected_users


@pytest.mark.parametrize(
    ("filters", "expected_users"),
    [
        ({}, ["1", "1", "2", "3"]),
        ({"platform": "ios"}, ["1", "1", "3"]),
        ({"platform": "ios", "zone": "west"}, ["1", "1"]),
    ],
)
def test_a_scored_lifecycle_segment_exports_its_members_with_the_same_filters(
    published, tmp_path, filters, expected_users
):
    path = _export(published, tmp_path, "lapsed", **filters)

    with path.open(newline="") as f:
        assert next(csv.reader(f)) == list(export.MEMBER_FIELDS)
    assert [r["user_id"] for r in _read(path)] == expected_users
    if not filters:  # the day's file, as the daily publish writes it
        with psycopg.connect(published) as conn:
            written = export.export_scored_segments(conn, RUN_DATE, tmp_path / "daily")
        assert written["lapsed"].read_bytes() == path.read_bytes()


def test_exporting_again_replaces_the_file(published, tmp_path):
    path = export.export_path(tmp_path, "lapsed_personalised", RUN_DATE, min_score=0.85)
    path.write_text("an earlier export\n")

    assert _export(published, tmp_path, min_score=0.85) == path
    assert [r["recommended_merchant_id"] for r in _read(path)] == ["10"]
    assert len(list(tmp_path.iterdir())) == 1


def test_a_filtered_export_never_overwrites_the_days_file(published, tmp_path):
    daily = _export(published, tmp_path)
    daily_rows = _read(daily)

    filtered = _export(published, tmp_path, min_score=0.9, platform="ios")

    assert filtered.name == "lapsed_personalised_2026-11-01_min-score-0.9_platform-ios.csv"
    assert [r["user_id"] for r in _read(filtered)] == ["1"]
    assert _read(daily) == daily_rows and len(daily_rows) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [daily.name, filtered.name]


def test_export_path_names_every_filter_given():
    out = Path("exports")
    assert export.export_path(out, "lapsed_personalised", RUN_DATE) == out / "lapsed_personalised_2026-11-01.csv"
    assert export.export_path(out, "x", RUN_DATE, min_score=None, platform=None) == out / "x_2026-11-01.csv"
    assert export.export_path(out, "x", RUN_DATE, min_score=0.5, zone="West Bay/2") == out / (
        "x_2026-11-01_min-score-0.5_zone-West-Bay-2.csv"
    )


def test_export_all_writes_every_segment_even_empty_ones(published, tmp_path):
    settings = Settings.from_env(environ={}, home=tmp_path, warehouse_url=published)
    with psycopg.connect(published) as conn:
        paths = export.export_all(conn, RUN_DATE, settings)

    # Every segment table's file, and the scored lifecycle segments that have members that day.
    names = [*segments.SEGMENTS, "lapsed"]
    assert paths == {name: settings.exports_dir / f"{name}_2026-11-01.csv" for name in names}
    assert len(_read(paths["lapsed_personalised"])) == 4
    with paths["merchant_superfans"].open(newline="") as f:
        assert list(csv.reader(f)) == [
            [
                "user_id",
                "segment",
                "recommended_merchant_id",
                "recommended_merchant_name",
                "score",
                "export_date",
                "fan_rank",
                "order_count",
                "total_spent",
            ]
        ]


def test_unknown_segment_is_refused_with_the_valid_names(published, tmp_path):
    with pytest.raises(ValueError, match="valid segments: high_affinity_prospects, lapsed_personalised"):
        _export(published, tmp_path, segment="lapsed_members")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    return export_cli.cmd_export(parser.parse_args(argv))


@pytest.fixture
def environment(published, tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("REKINDLE_HOME", str(tmp_path))
    monkeypatch.setenv("REKINDLE_WAREHOUSE_URL", published)
    return Settings.from_env()


def test_cli_exports_the_latest_run_to_the_exports_folder(environment, capsys):
    assert _cli(["lapsed_personalised"]) == 0

    path = environment.exports_dir / "lapsed_personalised_2026-11-01.csv"
    assert len(_read(path)) == 4
    assert str(path) in capsys.readouterr().out


def test_cli_date_filters_and_out_folder(environment, tmp_path):
    out = tmp_path / "elsewhere"

    assert (
        _cli(
            [
                "lapsed_personalised",
                "--date",
                "2026-10-31",
                "--min-score",
                "0.5",
                "--platform",
                "web",
                "--zone",
                "east",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert [
        r["user_id"] for r in _read(out / "lapsed_personalised_2026-10-31_min-score-0.5_platform-web_zone-east.csv")
    ] == ["9"]


def test_cli_filtered_export_leaves_the_daily_file_alone(environment, capsys):
    daily = environment.exports_dir / "lapsed_personalised_2026-11-01.csv"
    assert _cli(["lapsed_personalised"]) == 0
    before = daily.read_bytes()

    assert _cli(["lapsed_personalised", "--min-score", "0.9", "--platform", "ios"]) == 0

    filtered = environment.exports_dir / "lapsed_personalised_2026-11-01_min-score-0.9_platform-ios.csv"
    assert str(filtered) in capsys.readouterr().out
    assert [r["user_id"] for r in _read(filtered)] == ["1"]
    assert daily.read_bytes() == before


def test_cli_unknown_segment_exits_2_listing_the_segments(environment, capsys):
    assert _cli(["superfans"]) == 2

    error = capsys.readouterr().err
    assert error.startswith("rekindle export: error: unknown segment 'superfans'")
    assert all(name in error for name in (*segments.SEGMENTS, "lapsed", "dormant"))
    assert _cli(["dormant"]) == 0  # a scored lifecycle segment, with no members that day: a header only
    assert len(_read(environment.exports_dir / "dormant_2026-11-01.csv")) == 0
    assert _cli(["lapsed", "--min-score", "0.5"]) == 2  # the members' scores are the ranker's, on no 0-1 scale
    assert "--min-score filters the segment tables' scores (0-1)" in capsys.readouterr().err


def test_cli_without_any_published_run_says_so(settings, monkeypatch, capsys):
    monkeypatch.setenv("REKINDLE_HOME", str(settings.home))
    monkeypatch.setenv("REKINDLE_WAREHOUSE_URL", settings.warehouse_url)

    assert _cli(["lapsed_personalised"]) == 2
    assert capsys.readouterr().err == "rekindle export: error: nothing published to crm yet: run `rekindle run` first\n"


def test_cli_a_date_with_nothing_published_is_an_error_not_an_empty_file(environment, capsys):
    assert _cli(["lapsed_personalised", "--date", "2026-10-15"]) == 2

    error = capsys.readouterr().err
    assert "nothing published to crm for 2026-10-15: the latest publication is 2026-11-01" in error
    assert not environment.exports_dir.exists() or not any(environment.exports_dir.iterdir())
