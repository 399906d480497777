"""docs/configuration.md is generated from the settings object and every setting is described."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from ml.settings import DESCRIPTIONS, PROJECT_ROOT, Settings, configuration_markdown

DOC = PROJECT_ROOT / "docs" / "configuration.md"
REGENERATE = "python -m ml.settings > docs/configuration.md"


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Settings)])
def test_every_setting_has_a_description(name):
    assert DESCRIPTIONS.get(name, "").strip(), (
        f"Settings.{name} has no description: add one to DESCRIPTIONS in ml/settings.py"
    )


def test_no_description_for_a_setting_that_does_not_exist():
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(DESCRIPTIONS) <= fields, f"DESCRIPTIONS names unknown settings: {sorted(set(DESCRIPTIONS) - fields)}"


def test_configuration_doc_is_up_to_date():
    assert DOC.exists(), f"docs/configuration.md is missing: run `{REGENERATE}`"
    assert DOC.read_text() == configuration_markdown(), f"docs/configuration.md is stale: run `{REGENERATE}`"


def test_every_setting_is_in_the_doc_with_its_variable_and_default():
    text = configuration_markdown()
    for f in dataclasses.fields(Settings):
        row = next(line for line in text.splitlines() if line.startswith(f"| `REKINDLE_{f.name.upper()}` |"))
        assert DESCRIPTIONS[f.name].split()[0] in row
        if f.name != "home" and f.default not in ("", ()):
            default = ",".join(f.default) if isinstance(f.default, tuple) else str(f.default)
            assert f"`{default}`" in row


def test_the_module_main_prints_the_doc():
    printed = subprocess.run(
        [sys.executable, "-m", "ml.settings"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert printed == configuration_markdown()


def test_a_missing_description_fails(monkeypatch):
    monkeypatch.delitem(DESCRIPTIONS, "seed")
    with pytest.raises(AssertionError, match="Settings.seed has no description"):
        test_every_setting_has_a_description("seed")
