"""The dbt project as Airflow tasks (astronomer-cosmos): every model (built with its tests) becomes a visible task."""

from __future__ import annotations

import gc
from datetime import UTC, date, datetime
from functools import cached_property
from typing import Any

from cosmos import (
    DbtTaskGroup,
    ExecutionConfig,
    ProfileConfig,
    ProjectConfig,
    RenderConfig,
)
from cosmos.constants import (
    InvocationMode,
    LoadMode,
    TestBehavior,
    TestIndirectSelection,
)
from cosmos.profiles.base import BaseProfileMapping

from ml.pipeline import DBT_TASK_GROUP
from ml.settings import Settings
from ml.warehouse.dbt_runner import (
    DBT_SESSION_OPTIONS,
    PROFILE_NAME,
    TARGET_NAME,
    connection_params,
    profile_target,
    settings_vars,
    skip_dbt_stack_walks,
)


class WarehouseProfileMapping(BaseProfileMapping):
    """dbt's target for the live warehouse (``REKINDLE_WAREHOUSE_URL`` or the embedded server), resolved only when a
    dbt task runs.

    Parsing renders :attr:`mock_profile` for ``dbt ls``, so it needs neither a running warehouse nor a profiles.yml.
    The password reaches dbt through an environment variable, never the profile Cosmos writes. No Airflow connection
    is involved: ``conn_id`` only names the mapping.
    """

    airflow_connection_type = "postgres"
    dbt_profile_type = "postgres"

    def __init__(self, settings: Settings):
        super().__init__(conn_id="rekindle_warehouse")
        self.settings = settings

    @cached_property
    def _url(self) -> str:
        from ml.warehouse import postgres

        return postgres.start(self.settings)

    @property
    def profile(self) -> dict[str, Any]:
        return {**profile_target(self._url), "password": self.get_env_var_format("password")}

    @property
    def mock_profile(self) -> dict[str, Any]:
        return profile_target("postgresql://mock@mock/mock")

    @property
    def env_vars(self) -> dict[str, str]:
        return {self.get_env_var_name("password"): connection_params(self._url)["password"]}


def _before_dbt(context: Any) -> None:
    skip_dbt_stack_walks()
    gc.freeze()


def _after_dbt(context: Any, result: Any) -> None:
    """Unfreeze the heap, and record the task's seconds in ``ops.pipeline_steps`` (only a task that succeeded)."""
    from ml.pipeline.tasks import record_dbt_task

    gc.unfreeze()
    ti = context["ti"]
    seconds = (datetime.now(UTC) - ti.start_date).total_seconds()
    record_dbt_task(Settings.from_env(), date.fromisoformat(context["ds"]), ti.task_id, seconds)


def dbt_task_group(settings: Settings, group_id: str = DBT_TASK_GROUP) -> DbtTaskGroup:
    """A Cosmos DbtTaskGroup for the project; call inside a DAG context. Nothing is written or connected to here."""
    return DbtTaskGroup(
        group_id=group_id,
        project_config=ProjectConfig(
            dbt_project_path=settings.dbt_project_dir,
            manifest_path=None,
            install_dbt_deps=False,
            env_vars={"PGOPTIONS": DBT_SESSION_OPTIONS},
            # For rendering (dbt ls): the models and tests read the event data contract from vars. The tasks get
            # operator_args' vars, which take precedence.
            dbt_vars=settings_vars(settings),
        ),
        profile_config=ProfileConfig(
            profile_name=PROFILE_NAME, target_name=TARGET_NAME, profile_mapping=WarehouseProfileMapping(settings)
        ),
        # One `dbt build` task per model: the model, then only the tests on that model, so a failing test fails
        # the model's task. Relationship tests (two parents) get their own tasks after both models are built.
        execution_config=ExecutionConfig(
            invocation_mode=InvocationMode.DBT_RUNNER, test_indirect_selection=TestIndirectSelection.CAUTIOUS
        ),
        render_config=RenderConfig(
            load_method=LoadMode.DBT_LS,
            test_behavior=TestBehavior.BUILD,
            invocation_mode=InvocationMode.DBT_RUNNER,
            should_detach_multiple_parents_tests=True,
            emit_datasets=False,
        ),
        # run_date is templated so each DAG run (and backfill) builds the marts as of its own logical date.
        operator_args={
            "vars": {**settings_vars(settings), "run_date": "{{ ds }}"},
            # dbt's JSON artifacts (manifest.json, written twice per invocation, and run_results.json) only feed
            # Cosmos's lineage, and these tasks emit no assets.
            "dbt_cmd_global_flags": ["--no-write-json"],
            # Cosmos runs a full gc.collect() after every dbt invocation; without the freeze it walks the whole
            # heap of the task's process (over a second when the DAG runs in-process with GX and pandas loaded),
            # with it only the objects dbt created.
            "pre_execute": _before_dbt,
            "post_execute": _after_dbt,
        },
    )
