"""``run --reload``: the familiar name (FastStream, uvicorn) of ``run --watch``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sporeflow.pipeline.cli.main import cli

SMALL = Path(__file__).parent / "organisms" / "small" / "organism.yaml"


@pytest.mark.parametrize("flag", ["--watch", "--reload"])
def test_reload_is_watch(monkeypatch: pytest.MonkeyPatch, flag: str) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # the watch extra is missing
    result = CliRunner().invoke(cli, ["run", str(SMALL), flag, "--until-idle", "-q"])
    assert result.exit_code == 1
    assert result.stderr.startswith("MissingExtra: watching files needs watchfiles")


def test_help_names_both_spellings() -> None:
    result = CliRunner().invoke(cli, ["run", "--help"])
    assert "--watch, --reload" in result.output
