"""The top-level name: ``from sporeflow import Organism``, ``python -m sporeflow``."""

from __future__ import annotations

import asyncio
import builtins
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sporeflow
import sporeflow.config
import sporeflow.pipeline
import sporeflow.steps

SMALL = Path(__file__).parent / "organisms" / "small" / "organism.yaml"
README = Path(__file__).parent.parent / "README.md"
TREE = sporeflow.config.errors.__doc__ or ""
ERROR_TREE = re.findall(r"[├└]── (\w+)", TREE)


def test_the_public_names_are_the_layers_own() -> None:
    from sporeflow import Context, Organism, Spore, StageSpec

    assert Organism is sporeflow.pipeline.Organism
    assert Context is sporeflow.pipeline.Context
    assert Spore is sporeflow.steps.Spore
    assert StageSpec is sporeflow.config.StageSpec


def test_all_lists_names_that_all_resolve() -> None:
    for name in sporeflow.__all__:
        assert getattr(sporeflow, name) is not None, name
    assert set(sporeflow.__all__) <= set(dir(sporeflow))
    assert sorted(sporeflow.__all__) == sporeflow.__all__
    with pytest.raises(AttributeError, match="no attribute 'Organsim'"):
        sporeflow.Organsim  # noqa: B018 - the attribute access is the test


def test_every_error_of_the_tree_imports_from_sporeflow() -> None:
    assert len(ERROR_TREE) > 20, TREE  # the tree drawn in config/errors.py was read
    for name in ["SporeflowError", *ERROR_TREE]:
        error = getattr(sporeflow, name)
        assert issubclass(error, sporeflow.SporeflowError), name
        assert name in sporeflow.__all__, name


def test_every_error_the_readme_names_imports_from_sporeflow() -> None:
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"\b[A-Z]\w*Error\b", text))
    named |= {name for name in ERROR_TREE if re.search(rf"\b{name}\b", text)}
    # Python's own (TimeoutError, asyncio's CancelledError) are Python's to export.
    named = {name for name in named if not hasattr(builtins, name) and not hasattr(asyncio, name)}
    assert {"OrganismFull", "JournalError", "SporeflowError"} <= named
    missing = sorted(name for name in named if name not in sporeflow.__all__)
    assert missing == [], f"README.md names errors sporeflow does not export: {missing}"
    for name in named:
        assert issubclass(getattr(sporeflow, name), Exception), name


def test_the_errors_load_no_xml_or_sqlite() -> None:
    script = ("import sys; from sporeflow import JournalError, OrganismFull, SchemaViolation, "
              "XmlPayloadError; print(sorted(m for m in ('lxml.etree', 'sqlite3') "
              "if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert shown == "[]"


def test_the_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    assert sporeflow.__version__ == version("sporeflow")


def test_a_lower_layer_alone_does_not_load_the_runtime() -> None:
    script = ("import sys, sporeflow.config; "
              "print(sorted(m for m in sys.modules if m.startswith('sporeflow.pipeline')))")
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert shown == "[]"


def test_python_m_sporeflow_is_the_command() -> None:
    result = subprocess.run([sys.executable, "-m", "sporeflow", "check", str(SMALL)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{SMALL}: ok: organism 'small'")
    usage = subprocess.run([sys.executable, "-m", "sporeflow", "--help"],
                           capture_output=True, text=True, check=True).stdout
    assert usage.startswith("Usage: sporeflow ")
