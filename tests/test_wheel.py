"""The built wheel holds every package of the source tree, under the sporeflow namespace."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"pipeline": "sporeflow/pipeline", "steps": "sporeflow/steps",
           "config": "sporeflow/config"}


def test_the_wheel_contains_every_subpackage_and_module(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "--quiet", "-w", str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("sporeflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{target}/{path.relative_to(ROOT / folder).as_posix()}"
                for folder, target in FOLDERS.items()
                for path in (ROOT / folder).rglob("*")
                if path.suffix in (".py", ".typed") and "__pycache__" not in path.parts}
    assert expected <= names, sorted(expected - names)
    # No generic top-level package that a user's own `config.py` could clash with.
    assert not {name.split("/")[0] for name in names} & {"pipeline", "steps", "config"}
