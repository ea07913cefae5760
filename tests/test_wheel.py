"""The built wheel holds every package of the source tree, under the sporeflow namespace."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# pipeline/toplevel is the package `sporeflow` itself (pyproject.toml's package-dir).
FOLDERS = {"pipeline/toplevel": "sporeflow", "pipeline": "sporeflow/pipeline",
           "steps": "sporeflow/steps", "config": "sporeflow/config"}


def _target(path: Path) -> str | None:
    """Where ``path`` of the source tree is in the wheel (None: not a module or marker)."""
    if path.suffix not in (".py", ".typed") or "__pycache__" in path.parts:
        return None
    for folder, target in FOLDERS.items():  # the most specific folder first
        if path.is_relative_to(ROOT / folder):
            return f"{target}/{path.relative_to(ROOT / folder).as_posix()}"
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "--quiet", "-w", str(folder), str(ROOT)], check=True, cwd=folder)
    (built,) = folder.glob("sporeflow-*.whl")
    return built


def test_the_wheel_contains_every_subpackage_and_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {target for folder in ("pipeline", "steps", "config")
                for path in (ROOT / folder).rglob("*") if (target := _target(path))}
    assert {"sporeflow/__init__.py", "sporeflow/__main__.py", "sporeflow/testing.py",
            "sporeflow/py.typed"} <= expected
    assert expected <= names, sorted(expected - names)
    # No generic top-level package that a user's own `config.py` could clash with.
    assert not {name.split("/")[0] for name in names} & {"pipeline", "steps", "config"}
    assert not [name for name in names if name.startswith("sporeflow/pipeline/toplevel/")]


def test_a_regular_install_of_the_wheel_has_the_public_api(wheel: Path,
                                                          tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(tmp_path), str(wheel)], check=True)
    script = ("import sporeflow, sporeflow.testing; from sporeflow import Organism, Spore, "
              "Context; print(sporeflow.__file__, sporeflow.testing.TestOrganism.__name__)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}  # before the editable install's path
    shown = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, check=True, cwd=tmp_path).stdout.split()
    assert shown == [str(tmp_path / "sporeflow" / "__init__.py"), "TestOrganism"]
    version = subprocess.run([sys.executable, "-m", "sporeflow", "--version"], env=env,
                             capture_output=True, text=True, check=True, cwd=tmp_path)
    assert version.stdout.startswith("sporeflow, version ")


def test_the_wheel_ships_the_dashboards_static_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    static = {f"sporeflow/pipeline/service/static/{path.name}"
              for path in (ROOT / "pipeline" / "service" / "static").iterdir()}
    assert {f"sporeflow/pipeline/service/static/{name}"
            for name in ("index.html", "dashboard.js", "dashboard.css")} <= static
    assert static <= names, sorted(static - names)
