"""The command line's first-run guidance."""

from __future__ import annotations

from ml import cli


def test_run_with_nothing_to_load_says_how_to_get_data_instead_of_failing_a_gate(settings, monkeypatch, capsys):
    monkeypatch.setenv("REKINDLE_HOME", str(settings.home))
    monkeypatch.setenv("REKINDLE_WAREHOUSE_URL", settings.warehouse_url)

    assert cli.main(["run", "--date", "2026-11-01"]) == 2

    err = capsys.readouterr().err
    assert "rekindle generate" in err
    assert str(settings.input_dir) in err
