"""dbt's Jinja context for sqlfluff's jinja templater (see .sqlfluff): lint the models without a database.

Every top-level name here is a variable in the templates. ``var`` answers what ml/warehouse/dbt_runner.py
passes: the defaults in dbt_project.yml plus the event data contract (``ml.warehouse.contract.dbt_vars``);
``run_date`` empty -> ``run_started_at``. ``modules``, ``exceptions``, ``run_started_at``, ``execute`` (False:
nothing queries the database), ``model``, ``local_md5`` and ``tojson`` stand in for dbt's. ``ref``, ``source``,
``config``, ``this`` and ``is_incremental`` (False: the first build's SQL is linted) are sqlfluff's dbt builtins.
"""

import datetime as _datetime
import hashlib as _hashlib
import json as _json
import re as _re
import types as _types
from pathlib import Path as _Path

import yaml as _yaml
from jinja2.exceptions import TemplateRuntimeError as _TemplateRuntimeError


def _project_vars() -> dict:
    values = dict(_yaml.safe_load((_Path(__file__).resolve().parents[1] / "dbt_project.yml").read_text())["vars"])
    try:
        from ml.warehouse import contract
    except ImportError:  # the project not installed: the contract vars stay missing (a lint error naming them)
        return values
    values.update(contract.dbt_vars())
    return values


_VARS = _project_vars()

modules = _types.SimpleNamespace(re=_re, datetime=_datetime)
run_started_at = _datetime.datetime(2024, 1, 1, tzinfo=_datetime.UTC)
execute = False
model = _types.SimpleNamespace(raw_code="")


def local_md5(value):
    return _hashlib.md5(str(value).encode()).hexdigest()


def tojson(value):
    return _json.dumps(value)


def _raise_compiler_error(message):
    # a jinja error: sqlfluff reports it as a templating violation of the file (TMP), not a traceback
    raise _TemplateRuntimeError(message)


exceptions = _types.SimpleNamespace(raise_compiler_error=_raise_compiler_error)


def var(name, default=None):
    return _VARS.get(name, default)
