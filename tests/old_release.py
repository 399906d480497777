"""A registered model an older release logged: its class is pickled by reference to a module the next release
no longer has. ``OldRelease.log`` registers one; ``OldRelease.upgrade`` removes the module, as an upgrade does."""

from __future__ import annotations

import sys
from pathlib import Path

MODULE = "old_release_models"
SOURCE = '''
from ml.pipeline.tracking import RecommenderPyfunc


class OldReleasePyfunc(RecommenderPyfunc):
    """A model class of an older release."""
'''


class OldRelease:
    def __init__(self, folder: Path, monkeypatch):
        self.file = folder / f"{MODULE}.py"
        self.file.write_text(SOURCE)
        self.monkeypatch = monkeypatch
        monkeypatch.syspath_prepend(str(folder))

    def log(self, recommender, registered_name: str) -> str:
        """Register ``recommender`` wrapped in the old release's class (inside an active MLflow run)."""
        import importlib

        from ml.pipeline import tracking

        module = importlib.import_module(MODULE)
        return tracking.log_model(module.OldReleasePyfunc(recommender), registered_name)

    def upgrade(self) -> None:
        self.monkeypatch.delitem(sys.modules, MODULE, raising=False)
        self.file.unlink()
