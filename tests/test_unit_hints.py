"""A bare number in a millisecond-scale duration is seconds, with a warning saying so."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from sporeflow.config import check_organism, load_organism
from sporeflow.pipeline.cli.main import cli

ORGANISM = """\
agents:
  a:
    handler: operator:eq
    retry: {attempts: 3, backoff: %s}
limits: {loop_stall_warning: %s}
"""


def write(folder: Path, backoff: str, stall: str = "1s") -> Path:
    file = folder / "organism.yaml"
    file.write_text(ORGANISM % (backoff, stall))
    return file


def test_a_large_bare_backoff_is_seconds_with_a_warning(tmp_path: Path) -> None:
    spec, warnings = check_organism(write(tmp_path, "50", stall="12.5"))
    assert spec.agents["a"].retry.backoff == 50.0  # seconds, as everywhere
    assert [str(w) for w in warnings] == [
        f"{tmp_path / 'organism.yaml'}:4:35: agents.a.retry.backoff: warning: 50 is read as "
        f"50 seconds; write 50s to keep it, or 50ms",
        f"{tmp_path / 'organism.yaml'}:5:30: limits.loop_stall_warning: warning: 12.5 is read "
        f"as 12.5 seconds; write 12.5s to keep it, or 12.5ms"]


@pytest.mark.parametrize("backoff", ["2", "0.5", "50ms", "50s", "9.5"])
def test_small_or_unit_bearing_durations_get_no_warning(tmp_path: Path, backoff: str) -> None:
    _, warnings = check_organism(write(tmp_path, backoff))
    assert [w for w in warnings if "is read as" in w.message] == []  # 50s: above max_backoff


def test_check_prints_it_and_a_load_logs_it(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    file = write(tmp_path, "100")
    result = CliRunner().invoke(cli, ["check", str(file)])
    assert result.exit_code == 0
    assert "agents.a.retry.backoff: warning: 100 is read as 100 seconds" in result.stderr
    assert result.stdout.endswith("1 warning\n")
    with caplog.at_level(logging.WARNING, logger="sporeflow.config"):
        load_organism(file)
    assert ["100 is read as 100 seconds" in r.getMessage() for r in caplog.records] == [True]
