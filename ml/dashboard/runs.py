"""The daily ranker runs in MLflow as the dashboard shows them: metrics per model, mode and lifecycle segment, the
trend over run dates, the gate's decisions and the metric@K curves (names as ``ml.pipeline.tasks._log_comparison``
logs them: ``<mode>_<metric>`` for the ranker, ``<mode>_<model>_<metric>`` for the others,
``<mode>_<model>_<segment>_ndcg_at_10`` per segment)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ml.pipeline import tracking
from ml.pipeline.tasks import METRIC_AT_K_ARTIFACT
from ml.recommend.lifecycle import LIFECYCLE_SEGMENTS
from ml.recommend.modes import MODES
from ml.settings import Settings

RANKER = "ranker"
BASELINES = ("popularity", "random")
GATE_METRIC_KEY = "gate_ndcg_at_10"
SUMMARY_METRICS = ("precision_at_5", "recall_at_5", "ndcg_at_10", "hit_rate_at_5", "coverage", "diversity", "novelty")
RUN_COLUMNS = ["run_id", "run_date", "started_at", "version", "promoted", "gate", GATE_METRIC_KEY]


def client_for(settings: Settings, url: str) -> MlflowClient:
    """A client of the pipeline's tracking store and registry (``ml.pipeline.tracking``: the MLflow server of
    ``settings.mlflow_tracking_uri``, which also serves the artifacts, else the warehouse's store), without
    touching this process's global MLflow state."""
    uri = settings.mlflow_tracking_uri or tracking.tracking_uri(url)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def metric_name(mode: str, model: str, metric: str) -> str:
    return f"{mode}_{metric}" if model == RANKER else f"{mode}_{model}_{metric}"


def models_of(params: dict) -> list[str]:
    """The comparison set of a run: the ranker, its generators (the ``generators`` param) and the baselines."""
    generators = [name for name in params.get("generators", "").split(",") if name]
    return [RANKER, *generators, *BASELINES]


def ranker_runs(client: MlflowClient, model_name: str) -> tuple[pd.DataFrame, dict[str, dict]]:
    """One row per run of the ranker's experiment, oldest first (with its registered version and gate tags),
    and each run's params and metrics by run_id."""
    experiment = client.get_experiment_by_name(model_name)
    if experiment is None:
        return pd.DataFrame(columns=RUN_COLUMNS), {}
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)
    versions = {v.run_id: str(v.version) for v in client.search_model_versions(f"name = '{model_name}'")}
    rows, details = [], {}
    for run in runs:
        data = run.data
        rows.append(
            {
                "run_id": run.info.run_id,
                "run_date": data.params.get("run_date"),
                "started_at": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"),
                "version": versions.get(run.info.run_id),
                "promoted": data.tags.get("promoted"),
                "gate": data.tags.get("gate"),
                GATE_METRIC_KEY: data.metrics.get(GATE_METRIC_KEY),
            }
        )
        details[run.info.run_id] = {"params": dict(data.params), "metrics": dict(data.metrics)}
    return pd.DataFrame(rows, columns=RUN_COLUMNS), details


def champion_version(client: MlflowClient, model_name: str) -> str | None:
    try:
        version = client.get_registered_model(model_name).aliases.get(tracking.CHAMPION)
    except MlflowException:
        return None
    return None if version is None else str(version)


def summary_table(run: dict, mode: str) -> pd.DataFrame:
    """Models x summary metrics of one run in one mode."""
    metrics = run["metrics"]
    return pd.DataFrame(
        [
            {"model": model, **{m: metrics.get(metric_name(mode, model, m)) for m in SUMMARY_METRICS}}
            for model in models_of(run["params"])
        ]
    ).set_index("model")


def segment_table(run: dict, mode: str) -> pd.DataFrame:
    """Long form: model, lifecycle segment, NDCG@10 (segments the run logged only)."""
    metrics = run["metrics"]
    rows = [
        {"model": model, "segment": segment, "ndcg_at_10": metrics[key]}
        for model in models_of(run["params"])
        for segment in LIFECYCLE_SEGMENTS
        if (key := f"{mode}_{model}_{segment}_ndcg_at_10") in metrics
    ]
    return pd.DataFrame(rows, columns=["model", "segment", "ndcg_at_10"])


def trend_table(runs: pd.DataFrame, details: dict[str, dict], mode: str) -> pd.DataFrame:
    """Long form over the runs: run_date, metric, value of the ranker in one mode."""
    rows = [
        {"run_date": run["run_date"], "metric": metric, "value": value}
        for run in runs.to_dict("records")
        for metric in ("ndcg_at_10", "precision_at_5", "recall_at_5")
        if (value := details[run["run_id"]]["metrics"].get(metric_name(mode, RANKER, metric))) is not None
    ]
    return pd.DataFrame(rows, columns=["run_date", "metric", "value"])


def metric_at_k(client: MlflowClient, run_id: str) -> pd.DataFrame | None:
    """Long form: mode, model, metric, K, value from the run's ``metric_at_k.json``; None for runs logged before
    the pipeline wrote it."""
    with tempfile.TemporaryDirectory(prefix="rekindle-dashboard-") as folder:
        try:
            path = client.download_artifacts(run_id, METRIC_AT_K_ARTIFACT, folder)
        except (OSError, MlflowException):
            return None
        curves = json.loads(Path(path).read_text())
    rows = [
        {"mode": mode, "model": model, "metric": metric, "k": k, "value": value}
        for mode in MODES
        for model, by_metric in curves.get(mode, {}).items()
        for metric, values in by_metric.items()
        for k, value in enumerate(values, start=1)
    ]
    return pd.DataFrame(rows, columns=["mode", "model", "metric", "k", "value"])
