"""Daily re-engagement: load events, gate raw data, build dbt marts, gate marts, train the recommender and
the offer model, score users in hash-bucket shards (mapped tasks), publish recommendations, offers and CRM
segments."""

from __future__ import annotations

from datetime import date

from airflow.sdk import dag, task

from ml.pipeline.airflow import FIRST_RUN_DATE, task_retries
from ml.pipeline.cosmos import dbt_task_group
from ml.settings import Settings


def _run_date(ds: str) -> date:
    return date.fromisoformat(ds)


@dag(
    dag_id="reengagement_daily",
    schedule="@daily",
    start_date=FIRST_RUN_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=task_retries(Settings.from_env()),
    tags=["rekindle"],
    doc_md=__doc__,
)
def reengagement_daily():
    # ml.pipeline.tasks (MLflow, LightGBM, GX, ...) is imported inside the tasks so that parsing this file stays light.
    @task
    def prepare_warehouse(ds: str | None = None) -> dict:
        from ml.pipeline import tasks

        return tasks.prepare_warehouse(Settings.from_env(), _run_date(ds))

    @task
    def load_events(ds: str | None = None) -> dict:
        from ml.pipeline import tasks

        return tasks.load_events(Settings.from_env(), _run_date(ds))

    @task
    def check_raw_quality(ds: str | None = None) -> dict:
        from ml.pipeline import tasks

        return tasks.check_raw_quality(Settings.from_env(), _run_date(ds))

    @task
    def check_mart_quality(ds: str | None = None) -> dict:
        from ml.pipeline import tasks

        return tasks.check_mart_quality(Settings.from_env(), _run_date(ds))

    @task
    def train_ranker(ds: str | None = None) -> dict:
        from ml.pipeline import tasks

        return tasks.train_ranker(Settings.from_env(), _run_date(ds))

    @task
    def train_offer_model(ds: str | None = None) -> dict:
        from ml.pipeline import tasks

        return tasks.train_offer_model(Settings.from_env(), _run_date(ds))

    @task
    def score_shard(shard: int, ds: str | None = None) -> dict:
        from ml.pipeline import tasks

        return tasks.score_shard(Settings.from_env(), _run_date(ds), shard)

    @task
    def publish_segments(ds: str | None = None) -> dict:
        from ml.pipeline import tasks

        return tasks.publish_segments(Settings.from_env(), _run_date(ds))

    settings = Settings.from_env()
    dbt = dbt_task_group(settings)
    marts_ready = prepare_warehouse() >> load_events() >> check_raw_quality() >> dbt >> check_mart_quality()
    ranker, offer_model, publish = train_ranker(), train_offer_model(), publish_segments()
    marts_ready >> [ranker, offer_model]
    # Scoring needs only the ranker: its shards may run while the offer model trains.
    ranker >> score_shard.expand(shard=list(range(settings.score_shards))) >> publish
    offer_model >> publish


reengagement_daily()
