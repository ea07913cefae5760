"""``sporeflow init [DIR]``: an organism that check, run and pytest accept as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sporeflow.pipeline.cli.init import scaffold_files
from sporeflow.pipeline.cli.main import cli


def test_init_writes_an_organism_that_checks_runs_and_passes_its_test(
        tmp_path: Path) -> None:
    folder = tmp_path / "triage-bot"
    result = CliRunner().invoke(cli, ["init", str(folder)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == sorted(scaffold_files("triage-bot"))
    assert (folder / "triage_bot_agents.py").exists()
    assert "next: cd " in result.output

    checked = CliRunner().invoke(cli, ["check", str(folder / "organism.yaml")])
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.endswith("organism 'triage-bot', 2 agents, 1 channel, 0 warnings\n")
    assert checked.stderr == ""

    # A process of its own per tool, in the new folder, as a user runs them.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    ran = subprocess.run([sys.executable, "-m", "sporeflow", "run", "--until-idle", "-q"],
                         cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "hello, world\n"
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed" in tested.stdout


def test_init_never_overwrites_and_then_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("mine\n")
    result = CliRunner().invoke(cli, ["init", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"SporeflowError: {tmp_path / 'README.md'} already exists;"
                                    f" sporeflow init never overwrites")
    # Found by a new user: it suggested the folder it refused ('sporeflow init
    # my-organism' after 'sporeflow init my-organism'); now one that is free.
    assert result.stderr.strip().endswith(f"e.g. sporeflow init {tmp_path.name}-2")
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]
    assert (tmp_path / "README.md").read_text() == "mine\n"


def test_init_defaults_to_the_current_folder_and_names_the_organism_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "2nd try!"
    folder.mkdir()
    monkeypatch.chdir(folder)
    result = CliRunner().invoke(cli, ["init"])
    assert result.exit_code == 0, result.output
    assert "next: sporeflow check" in result.output
    assert "organism: {name: organism-2nd-try}" in (folder / "organism.yaml").read_text()
    assert (folder / "organism_2nd_try_agents.py").exists()
    assert CliRunner().invoke(cli, ["check"]).exit_code == 0


def test_two_organisms_made_side_by_side_test_in_one_pytest(tmp_path: Path) -> None:
    # Found by a new user: both got agents.py and test_organism.py, so one pytest over
    # both folders stopped at "import file mismatch", and one process could not import
    # both handler modules.
    for name in ("alpha", "beta"):
        assert CliRunner().invoke(cli, ["init", str(tmp_path / name)]).exit_code == 0
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "alpha", "beta"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "2 passed" in tested.stdout


def test_the_next_step_quotes_a_folder_with_a_space(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by a documentation audit: `init "a b"` said `cd a b && ...`, which a shell
    # reads as cd with two arguments.
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["init", "a b"])
    assert result.exit_code == 0, result.output
    assert "next: cd 'a b' && sporeflow check" in result.output


@pytest.mark.parametrize("installed", [True, False])
def test_init_says_how_to_get_pytest_only_where_it_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: bool) -> None:
    # README's first command installs sporeflow alone: its `next: ... && pytest` failed
    # with "pytest: command not found" for a new user.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        real(name, *a) if installed or name != "pytest" else None))
    result = CliRunner().invoke(cli, ["init", str(tmp_path / "bot")])
    assert result.exit_code == 0, result.output
    assert ("pip install pytest" in result.output) is not installed
