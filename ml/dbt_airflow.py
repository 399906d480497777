"""The dbt project as Airflow tasks (astronomer-cosmos): every model and its tests become visible tasks."""

from __future__ import annotations

from datetime import date

from ml.settings import Settings

PROFILE_NAME = "rekindle"
TARGET_NAME = "dev"


def dbt_task_group(settings: Settings, group_id: str = "dbt_build"):
    """A Cosmos DbtTaskGroup for the project; call inside a DAG context.

    The profile file is written by the ``prepare_warehouse`` task from the live warehouse URL; Cosmos only
    needs the path when parsing, so a placeholder is written when it does not exist yet.
    """
    from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
    from cosmos.constants import InvocationMode, LoadMode, TestBehavior, TestIndirectSelection

    from ml.transform import DBT_SESSION_OPTIONS, dbt_vars, write_profile

    profiles = settings.dbt_profiles_dir / "profiles.yml"
    if not profiles.exists():
        write_profile(settings, settings.warehouse_url or f"postgresql://postgres@/rekindle?host={settings.warehouse_dir}")
    # run_date is templated so each DAG run (and backfill) builds the marts as of its own logical date.
    vars_ = {**dbt_vars(settings, date.today()), "run_date": "{{ ds }}"}
    return DbtTaskGroup(
        group_id=group_id,
        project_config=ProjectConfig(dbt_project_path=settings.dbt_project_dir, manifest_path=None),
        profile_config=ProfileConfig(profile_name=PROFILE_NAME, target_name=TARGET_NAME, profiles_yml_filepath=profiles),
        # Each model's test task runs only the tests on that model; relationship tests (two parents) get
        # their own tasks after both models are built.
        execution_config=ExecutionConfig(
            invocation_mode=InvocationMode.DBT_RUNNER, test_indirect_selection=TestIndirectSelection.CAUTIOUS
        ),
        render_config=RenderConfig(
            load_method=LoadMode.DBT_LS,
            test_behavior=TestBehavior.AFTER_EACH,
            invocation_mode=InvocationMode.DBT_RUNNER,
            should_detach_multiple_parents_tests=True,
        ),
        operator_args={"vars": vars_, "install_deps": False, "env": {"PGOPTIONS": DBT_SESSION_OPTIONS}},
    )
