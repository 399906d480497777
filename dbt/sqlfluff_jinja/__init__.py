"""dbt's Jinja context for sqlfluff's jinja templater (see .sqlfluff): lint the models without a database.

Every top-level name here is a variable in the templates. ``var`` answers with the defaults in
dbt_project.yml (``run_date`` empty -> ``run_started_at``); ``modules``, ``exceptions`` and
``run_started_at`` stand in for dbt's. ``ref``, ``source``, ``config`` and ``is_incremental`` are
sqlfluff's dbt builtins.
"""

import datetime as _datetime
import re as _re
import types as _types
from pathlib import Path as _Path

import yaml as _yaml

_VARS = _yaml.safe_load((_Path(__file__).resolve().parents[1] / "dbt_project.yml").read_text())["vars"]

modules = _types.SimpleNamespace(re=_re, datetime=_datetime)
run_started_at = _datetime.datetime(2024, 1, 1, tzinfo=_datetime.UTC)


class _CompilerError(Exception):
    pass


def _raise_compiler_error(message):
    raise _CompilerError(message)


exceptions = _types.SimpleNamespace(raise_compiler_error=_raise_compiler_error)


def var(name, default=None):
    return _VARS.get(name, default)
