"""Each package's ``__all__`` lists exactly its public names."""

from __future__ import annotations

import importlib
import types

import pytest


@pytest.mark.parametrize("package", ["sporeflow.pipeline", "sporeflow.steps", "sporeflow.config"])
def test_all_lists_exactly_the_public_names(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:  # a lazy package loads each name on first use
        assert getattr(module, name) is not None, name
    public = {
        name for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert set(module.__all__) == public
    assert sorted(module.__all__) == sorted(set(module.__all__))
