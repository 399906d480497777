"""Erasure in the model registry: the ranker's pickled recommender holds per-user rows (the interaction matrix,
ALS user factors, the ranker's history of each user, user zones).

Each aliased version (``@champion``, ``@challenger``) that holds an erased user is refitted without them (the
recommender's ``refit`` on today's marts, which no longer hold them: the learned booster is kept, the generators
and per-user features are rebuilt, so it takes one candidate stage, not a training) and registered as a new
version under the same aliases; its MLflow run is tagged with the request id. Every other version that holds one
of them is deleted from the registry together with its artifacts: a superseded model is no reason to keep a
person's data. So is a version this code cannot load (logged by an older release) whose files may hold them: it
can be neither cleaned nor used. The offer model holds no per-user rows (boosters over features), so it is left as it is.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import pandas as pd
import psycopg

from ml.pipeline import tracking
from ml.settings import Settings
from ml.warehouse import marts

log = logging.getLogger(__name__)

ERASURE_TAG = "rekindle.erasure_request"


def remove_users(settings: Settings, url: str, user_ids: list[str], request_id: str) -> dict[str, int]:
    """Clean the registered ranker of ``user_ids``; per place (``mlflow:<model> v<n> ...``), how many of the
    users it held."""
    from mlflow import MlflowClient

    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass(%s)", (f"{tracking.MLFLOW_SCHEMA}.model_versions",)).fetchone()[0] is None:
            return {}  # nothing was ever registered
    tracking.configure(settings, url)
    client = MlflowClient()
    name = settings.ranker_model_name
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        return {}
    ids = pd.Index(user_ids)
    aliases: dict[str, list[str]] = {}
    for alias in (tracking.CHAMPION, tracking.CHALLENGER):
        number = tracking.alias_version(name, alias)
        if number is not None:
            aliases.setdefault(number, []).append(alias)
    removed: dict[str, int] = {}
    # The store's version numbers are integers, alias_version's strings.
    for version in sorted((v for v in versions if str(v.version) in aliases), key=lambda v: int(v.version)):
        number = str(version.version)
        recommender = _load(name, number)
        if recommender is None:
            continue  # deleted below, with its aliases
        held = held_users(recommender, ids)
        if not held:
            continue
        new_version = _register_cleaned(settings, url, client, version, recommender, ids, request_id)
        for alias in aliases[number]:
            client.set_registered_model_alias(name, alias, new_version)
        removed[f"mlflow:{name} v{number} -> v{new_version} ({', '.join(sorted(aliases[number]))})"] = held
    for version in sorted(versions, key=lambda v: int(v.version)):
        if not _may_hold(version, user_ids, client):
            continue
        recommender = _load(name, str(version.version))
        if recommender is None:
            # It may hold them and cannot be cleaned or even read (nor score): it goes, as a superseded one does.
            _delete_version(client, version)
            removed[f"mlflow:{name} v{version.version} (deleted unread: this code cannot load it)"] = len(ids)
            continue
        held = held_users(recommender, ids)
        if held:
            _delete_version(client, version)
            removed[f"mlflow:{name} v{version.version} (deleted)"] = held
    return removed


def held_users(recommender, user_ids: pd.Index) -> int:
    """How many of ``user_ids`` the fitted recommender has rows for."""
    return int(recommender.axes.user_ids.isin(user_ids).sum())


def _load(name: str, version: str):
    """The version's recommender, or None when this code cannot load it (logged by a release whose classes are
    gone)."""
    try:
        return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model().recommender
    except (ImportError, AttributeError) as error:
        log.warning("%s v%s cannot be loaded by this code (%s: %s)", name, version, type(error).__name__, error)
        return None


def _register_cleaned(settings: Settings, url: str, client, version, recommender, user_ids: pd.Index, request_id: str):
    """The recommender refitted on the marts' orders up to its own training date, without ``user_ids``, logged
    in a run of its original's experiment and registered; returns the new version."""
    from ml.pipeline.tasks import load_market_context

    with psycopg.connect(url) as conn:
        orders = marts.load_orders(conn)
        context = load_market_context(conn)
    as_of = recommender.trained_until
    orders = orders[(orders["event_time"] < as_of) & ~orders["user_id"].isin(user_ids)]
    context = type(context)(merchants=context.merchants, users=context.users[~context.users.index.isin(user_ids)])
    if hasattr(recommender, "refit"):
        cleaned = recommender.refit(orders, as_of, context)
    else:
        cleaned = recommender.spec.recommender().fit(orders, as_of, context)
    experiment = client.get_run(version.run_id).info.experiment_id
    with mlflow.start_run(experiment_id=experiment, run_name=f"erasure {request_id}"):
        replaced = [*tracking.replaced_versions(version.name, str(version.version)), str(version.version)]
        mlflow.set_tags({ERASURE_TAG: request_id, tracking.CLEANED_FROM_TAG: ",".join(replaced)})
        return tracking.log_model(tracking.RecommenderPyfunc(cleaned), version.name)


def _artifact_dir(version, client) -> Path | None:
    """The local folder of a version's logged model, or None when its artifacts are not on this machine."""
    model_id = _model_id(version)
    location = client.get_logged_model(model_id).artifact_location if model_id else version.source
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return None
    path = Path(unquote(parsed.path))
    return path if path.is_dir() else None


def _model_id(version) -> str | None:
    """The logged model behind a version (``models:/<model_id>`` is its source; the SQL store leaves
    ``model_id`` unset)."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def _may_hold(version, user_ids: list[str], client) -> bool:
    """Whether the version's files may hold one of the ids: a pickled id is its UTF-8 bytes, so a version whose
    files contain none of them holds none (only a byte match needs the model loaded to tell)."""
    folder = _artifact_dir(version, client)
    if folder is None:
        return True
    needles = [user_id.encode() for user_id in user_ids]
    for file in folder.rglob("*"):
        if file.is_file():
            content = file.read_bytes()
            if any(needle in content for needle in needles):
                return True
    return False


def _delete_version(client, version) -> None:
    folder = _artifact_dir(version, client)
    client.delete_model_version(version.name, version.version)
    model_id = _model_id(version)
    if model_id:
        client.delete_logged_model(model_id)
    if folder is not None:
        shutil.rmtree(folder.parent if folder.name == "artifacts" else folder, ignore_errors=True)
    log.info("deleted %s v%s and its artifacts: it held an erased user", version.name, version.version)
