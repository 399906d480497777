"""Every DAG file imports without errors and cheaply, has no cycles, and its tasks call into ml/."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ml.settings import PROJECT_ROOT


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "reengagement_daily" in dagbag.dag_ids


def test_dags_have_no_cycles(dagbag):
    for dag in dagbag.dags.values():
        dag.check_cycle()


def test_daily_dag_order_gates_before_publishing(dagbag):
    dag = dagbag.dags["reengagement_daily"]
    assert dag.schedule == "@daily"
    publish = dag.get_task("publish_segments")
    upstream = publish.get_flat_relative_ids(upstream=True)
    for gate in ("load_events", "check_raw_quality", "check_mart_quality", "train_ranker"):
        assert gate in upstream
    # Cosmos turned every dbt model into one task that builds it and runs its tests, all before the mart gate.
    dbt_tasks = {t for t in dag.task_ids if t.startswith("dbt_build.")}
    models = {path.stem for path in (PROJECT_ROOT / "dbt" / "models").rglob("*.sql")}
    assert "user_segments" in models
    assert {f"dbt_build.{model}_model_build" for model in models} <= dbt_tasks
    assert dbt_tasks <= dag.get_task("check_mart_quality").get_flat_relative_ids(upstream=True)


HEAVY_MODULES = {"mlflow", "lightgbm", "implicit", "great_expectations", "sklearn", "scipy", "matplotlib"}
PARSE_SCRIPT = """
import json, sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules})))
"""


@pytest.mark.parametrize("dag_file", sorted((PROJECT_ROOT / "dags").glob("*.py")), ids=lambda path: path.name)
def test_parsing_a_dag_file_imports_nothing_heavy_and_writes_nothing(dag_file, airflow_db, tmp_path):
    """What the dag-processor pays at every parse: no ML libraries, no files in the Rekindle home (no dbt profile)."""
    home = tmp_path / "home"
    home.mkdir()
    parsed = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(dag_file)],
        env={**os.environ, "REKINDLE_HOME": str(home)},
        capture_output=True,
        text=True,
    )
    assert parsed.returncode == 0, parsed.stderr[-3000:]
    imported = set(json.loads(parsed.stdout.splitlines()[-1]))
    assert imported & HEAVY_MODULES == set()
    assert list(home.rglob("*")) == []
