"""MLflow tracking and registry on the warehouse: log runs, register versions, champion/challenger gate."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from urllib.parse import quote

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import psycopg
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from ml.recommend.modes import DISCOVERY
from ml.settings import Settings
from ml.warehouse.postgres import sqlalchemy_url

log = logging.getLogger(__name__)

MLFLOW_SCHEMA = "mlflow"
CHAMPION = "champion"
CHALLENGER = "challenger"


def tracking_uri(url: str) -> str:
    """MLflow's tables live in their own schema of the warehouse database."""
    separator = "&" if "?" in url else "?"
    return sqlalchemy_url(url) + f"{separator}options={quote(f'-csearch_path={MLFLOW_SCHEMA}')}"


def configure(settings: Settings, url: str) -> str:
    """Point this process's MLflow client at the tracking server of ``settings.mlflow_tracking_uri`` if set (it
    stores the artifacts too), else at the warehouse-backed store; returns the tracking URI."""
    if settings.mlflow_tracking_uri:
        uri = settings.mlflow_tracking_uri
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {MLFLOW_SCHEMA}")
        uri = tracking_uri(url)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def artifact_root(settings: Settings) -> str:
    """Where experiments created without a tracking server keep their artifacts (a URI)."""
    if settings.mlflow_artifact_root:
        return settings.mlflow_artifact_root.rstrip("/")
    return settings.mlflow_artifacts_dir.as_uri()


def experiment_id(settings: Settings, name: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if settings.mlflow_tracking_uri:  # the server's own artifact store (mlflow-artifacts:/...)
        return mlflow.create_experiment(name)
    if not settings.mlflow_artifact_root:
        settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(name, artifact_location=f"{artifact_root(settings)}/{name}")


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """A fitted MerchantRecommender behind MLflow's pyfunc: ``predict`` takes user ids (strings), returns their
    top-N in the ``mode`` param's mode (ml/recommend/modes.py)."""

    def __init__(self, recommender):
        self.recommender = recommender

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        return self.recommender.recommend(
            model_input["user_id"].tolist(), n=int(params.get("n", 10)), mode=params.get("mode", DISCOVERY)
        )


SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "user_id")]),
    outputs=Schema(
        [
            ColSpec("string", "user_id"),
            ColSpec("long", "rank"),
            ColSpec("string", "merchant_id"),
            ColSpec("double", "score"),
            ColSpec("string", "reason", required=False),
        ]
    ),
    params=ParamSchema([ParamSpec("n", "long", 10), ParamSpec("mode", "string", DISCOVERY)]),
)


class OfferPyfunc(mlflow.pyfunc.PythonModel):
    """A fitted OfferResponseModel: ``predict`` takes user features, returns P(reactivate) per offer arm."""

    def __init__(self, model):
        self.model = model

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.model.predict(model_input)[0]


# What a logged model needs to load, pinned to the running versions. Listing them spares MLflow its
# requirement inference, which re-imports the model in a subprocess (about 10 s per model logged).
MODEL_REQUIREMENTS = ("rekindle", "lightgbm", "implicit", "numpy", "pandas", "scipy", "cloudpickle")


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in MODEL_REQUIREMENTS]


def log_model(python_model, registered_name: str, signature: ModelSignature | None = SIGNATURE) -> str:
    """Log the pyfunc in the active run and register it; returns the new version number."""
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=python_model,
        registered_model_name=registered_name,
        signature=signature,
        pip_requirements=pip_requirements(),
    )
    return str(info.registered_model_version)


# A run's tag: what the model it registers was fitted from (recipe and data); see log_model_once.
FIT_KEY_TAG = "rekindle.fit_key"


def fit_key(recipe: object, *frames: pd.DataFrame) -> str:
    """A digest of a recipe (its repr) and the data a model is fitted on: fitting is seeded, so equal keys mean
    equal models. Each frame counts as a set of rows: a mart rebuilt by dbt may return its rows in another order."""
    digest = hashlib.sha256(repr(recipe).encode())
    for frame in frames:
        digest.update(repr(list(frame.columns)).encode())
        digest.update(np.sort(pd.util.hash_pandas_object(frame, index=True).to_numpy()).tobytes())
    return digest.hexdigest()


def log_model_once(python_model, registered_name: str, key: str, signature: ModelSignature | None = SIGNATURE) -> str:
    """``log_model``, unless a version fitted from ``key`` is registered already (a re-run of a day whose run
    registered its model and then died): that version is returned, so a re-run leaves the registry and the
    published model_version as one uninterrupted run would."""
    from mlflow import MlflowClient

    active = mlflow.active_run()
    mlflow.set_tag(FIT_KEY_TAG, key)
    client = MlflowClient()
    same_fit = client.search_runs([active.info.experiment_id], f"tags.`{FIT_KEY_TAG}` = '{key}'")
    versions = [
        int(version.version)
        for run in same_fit
        if run.info.run_id != active.info.run_id
        for version in client.search_model_versions(f"name = '{registered_name}' AND run_id = '{run.info.run_id}'")
    ]
    if versions:
        log.info("%s v%s was fitted from the same recipe and data: reusing it", registered_name, min(versions))
        return str(min(versions))
    return log_model(python_model, registered_name, signature)


# On the run of a version an erasure refitted (``ml.privacy.models``): the versions it replaces, comma-separated, the
# one it was refitted from last (an earlier erasure's refit replaced the ones before it).
CLEANED_FROM_TAG = "rekindle.cleaned_from_version"


def replaced_versions(name: str, version: str) -> list[str]:
    """The versions an erasure's refit ``version`` replaces (scores from them are its own, but for the erased
    users'); none for a version the daily training registered."""
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    return [number for number in client.get_run(run_id).data.tags.get(CLEANED_FROM_TAG, "").split(",") if number]


def alias_version(name: str, alias: str) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def load_alias(name: str, alias: str = CHAMPION):
    """The python object behind ``models:/name@alias`` (what scoring uses).

    Without MLflow's check of the model's pinned requirements against the installed packages: they were pinned
    from this same environment at logging (``log_model_once``), and the check costs 2-3 s of package-metadata
    scanning in every scoring task."""
    return mlflow.pyfunc.load_model(f"models:/{name}@{alias}", suppress_warnings=True).unwrap_python_model()


def loadable_champion(name: str):
    """The ``@champion`` python model of ``name``, or None when there is none or this code cannot load it (a version
    logged by an older release whose classes are gone): the gate then judges the challenger as if it were the
    first model, since a champion that cannot be loaded cannot score either."""
    version = alias_version(name, CHAMPION)
    if version is None:
        return None
    try:
        return load_alias(name)
    except (ImportError, AttributeError) as error:
        log.warning(
            "@%s v%s of %s cannot be loaded by this code (%s: %s): judging the challenger without it",
            CHAMPION,
            version,
            name,
            type(error).__name__,
            error,
        )
        return None


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    challenger_version: str
    champion_version: str | None
    metric: str
    challenger_value: float
    champion_value: float | None
    reason: str


def gate(
    name: str,
    challenger_version: str,
    metric: str,
    challenger_value: float,
    champion_value: float | None,
    margin: float,
    same_recipe: bool = False,
) -> GateDecision:
    """Tag the new version ``challenger``; make it ``champion`` only if it beats the champion by ``margin``.

    Both values must come from the same evaluation window. With no champion yet, the first version wins. A
    challenger built from the champion's own recipe (``same_recipe``) is that champion refitted on newer data,
    so it replaces it: comparing the two would compare a model with itself.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_registered_model_alias(name, CHALLENGER, challenger_version)
    champion_version = alias_version(name, CHAMPION)
    if champion_version is None or champion_value is None:
        promoted, reason = True, "no champion yet: first version becomes champion"
    elif champion_version == challenger_version:
        promoted, reason = True, f"v{champion_version} is champion already: the same recipe fitted on the same data"
    elif same_recipe:
        promoted = True
        reason = f"same recipe as champion v{champion_version}, refitted on today's data: it replaces it"
    elif challenger_value > champion_value * (1.0 + margin):
        promoted = True
        reason = f"{metric} {challenger_value:.4f} beats champion v{champion_version}'s {champion_value:.4f} by more than {margin:.0%}"
    else:
        promoted = False
        reason = (
            f"champion v{champion_version} stays: challenger {metric} {challenger_value:.4f} does not beat "
            f"{champion_value:.4f} by more than {margin:.0%}"
        )
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, challenger_version)
    log.info("%s gate: %s", name, reason)
    return GateDecision(
        promoted=promoted,
        challenger_version=challenger_version,
        champion_version=challenger_version if promoted else champion_version,
        metric=metric,
        challenger_value=challenger_value,
        champion_value=champion_value,
        reason=reason,
    )
