"""A bare number in a millisecond-scale duration is seconds, with a warning saying so."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from sporeflow.config import ConfigError, check_organism, load_organism, parse_duration
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


@pytest.mark.parametrize(("written", "fix"), [
    ("-1s", "; a duration is 0 or more"),
    ("5S", "; the unit is 's': 5s"),
    ("5sec", "; the unit is 's': 5s"),
    ("1h30m", "; one number and one unit: 90m"),
    ("2 minutes", "; the unit is 'm': 2m"),
])
def test_a_duration_written_a_common_wrong_way_says_how_to_write_it(
        tmp_path: Path, written: str, fix: str) -> None:
    # Found by a new user: '-1s', '5S' and '1h30m' said only "is not valid here; write ...
    # like 250ms, 5s or 2m", while '5 s' and '1.5m' passed.
    file = tmp_path / "organism.yaml"
    file.write_text(f"agents:\n  a: {{handler: operator:eq, timeout: '{written}'}}\n")
    with pytest.raises(ConfigError) as refused:
        check_organism(file)
    assert refused.value.problems[0].message.endswith(fix)
    with pytest.raises(ValueError, match=f"{re.escape(fix)}$"):
        parse_duration(written)


def test_a_warning_beside_a_problem_is_not_counted_as_one(tmp_path: Path) -> None:
    # Found by a new user: "3 problems in the organism" where one was a warning.
    file = tmp_path / "organism.yaml"
    file.write_text("agents:\n  a: {handler: operator:eq, retry: {attempts: 3, backoff: 50}, "
                    "concurrency: 0}\n")
    with pytest.raises(ConfigError) as refused:
        check_organism(file)
    assert str(refused.value).splitlines()[0] == "1 problem in the organism, and 1 warning"
