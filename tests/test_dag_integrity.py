"""Every DAG file imports without errors and cheaply, a cycle is rejected, and its tasks call into ml/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from ml.settings import PROJECT_ROOT, Settings


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "reengagement_daily" in dagbag.dag_ids


def test_every_task_of_every_dag_runs_for_a_past_year(dagbag):
    """Airflow creates no task instance for a logical date before the task's start_date: a run of such a day
    ends "success" at once, having run nothing."""
    from ml.pipeline.airflow import FIRST_RUN_DATE

    past_year = datetime(2015, 6, 1, tzinfo=UTC)
    for dag in dagbag.dags.values():
        assert dag.start_date == FIRST_RUN_DATE.replace(tzinfo=UTC), dag.dag_id
        assert all(task.start_date <= past_year for task in dag.tasks), dag.dag_id


CYCLIC_DAG = """
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="cyclic", schedule=None, start_date=datetime(2026, 1, 1))
def cyclic():
    @task
    def first(): ...

    @task
    def second(): ...

    a, b = first(), second()
    a >> b >> a


cyclic()
"""


def test_a_cyclic_dag_file_is_rejected_as_an_import_error(airflow_db, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "cyclic.py").write_text(CYCLIC_DAG)
    bag = DagBag(dag_folder=str(tmp_path))
    assert bag.dag_ids == []
    [error] = bag.import_errors.values()
    assert "Cycle detected in Dag: cyclic" in error


def test_an_edge_back_from_publishing_to_loading_is_a_cycle_in_the_daily_dag(airflow_db):
    from airflow.sdk.exceptions import AirflowDagCycleException

    from ml.pipeline.airflow import load_dag

    dag = load_dag("reengagement_daily")  # a DagBag of its own: the shared one stays intact
    dag.check_cycle()
    dag.get_task("publish_segments") >> dag.get_task("load_events")
    with pytest.raises(AirflowDagCycleException, match="reengagement_daily"):
        dag.check_cycle()


def test_daily_dag_order_gates_before_publishing(dagbag):
    dag = dagbag.dags["reengagement_daily"]
    assert dag.schedule == "@daily"
    publish = dag.get_task("publish_segments")
    upstream = publish.get_flat_relative_ids(upstream=True)
    for gate in ("load_events", "check_raw_quality", "check_mart_quality", "train_ranker", "train_offer_model"):
        assert gate in upstream
    # Scoring is mapped over one task per user hash bucket, after the ranker, while the offer model may train.
    score = dag.get_task("score_shard")
    assert score.upstream_task_ids == {"train_ranker"} and score.downstream_task_ids == {"publish_segments"}
    assert score.op_kwargs_expand_input.value == {"shard": list(range(Settings.from_env().score_shards))}
    assert "train_offer_model" not in score.get_flat_relative_ids(upstream=True)
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


def test_every_task_retries_with_exponential_back_off(dagbag):
    from ml.pipeline.airflow import task_retries

    retries = task_retries(Settings.from_env())

    for dag in dagbag.dags.values():
        for task in dag.tasks:  # the Cosmos dbt tasks as well: they inherit the DAG's default_args
            assert task.retries == retries["retries"] >= 2, (dag.dag_id, task.task_id)
            assert task.retry_exponential_backoff == retries["retry_exponential_backoff"] > 1
            assert task.retry_delay == retries["retry_delay"]
            assert task.max_retry_delay == retries["max_retry_delay"] > task.retry_delay


def test_a_slow_first_parse_has_time_to_finish(airflow_db):
    """A fresh clone's first parse runs `dbt ls` for Cosmos; on a busy 2-core machine it took over Airflow's 30 s
    default, and `make run` stopped on a DAG import error. The dag-processor must allow a file longer still."""
    from airflow.configuration import conf

    import_timeout = conf.getfloat("core", "dagbag_import_timeout")
    assert import_timeout >= 120
    assert conf.getfloat("dag_processor", "dag_file_processor_timeout") > import_timeout
