"""Experiment readout: measure the win-back campaign whose reactivation window has just closed.

The run for logical date D reads out ``winback-<D - reactivation_window_days>`` (arms against the
holdout and against non-personalised offers), stores it in ``crm.experiment_results`` and logs it to
MLflow (experiment ``rekindle-experiments``). It waits for the same day's ``reengagement_daily`` marts
(built and gated), whose ``marts.orders`` holds the window's orders, each once. Days with no such campaign
finish with a note.
"""

from __future__ import annotations

from datetime import date

from airflow.providers.standard.sensors.external_task import ExternalTaskSensor
from airflow.sdk import dag, task

from ml.pipeline.airflow import FIRST_RUN_DATE, task_retries
from ml.settings import Settings


@dag(
    dag_id="experiment_readout",
    schedule="@daily",
    start_date=FIRST_RUN_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=task_retries(Settings.from_env()),
    tags=["rekindle"],
    doc_md=__doc__,
)
def experiment_readout():
    # ml.pipeline.tasks (MLflow, SciPy, ...) is imported inside the task so that parsing this file stays light.
    @task
    def read_out_campaign(ds: str | None = None) -> dict:
        from ml.pipeline import tasks

        return tasks.read_out_campaign(Settings.from_env(), date.fromisoformat(ds))

    marts_ready = ExternalTaskSensor(
        task_id="wait_for_daily_marts",
        external_dag_id="reengagement_daily",
        external_task_id="check_mart_quality",
        mode="reschedule",
        poke_interval=600,
        timeout=12 * 3600,
    )
    marts_ready >> read_out_campaign()


experiment_readout()
