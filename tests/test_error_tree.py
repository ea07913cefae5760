"""The error tree drawn in config/errors.py lists every SporeflowError there is."""

from __future__ import annotations

import re

import sporeflow.config.errors as errors
import sporeflow.pipeline  # noqa: F401  (imports every module that defines an error)
import sporeflow.pipeline.journal.store  # noqa: F401
import sporeflow.pipeline.service.processes  # noqa: F401  (ControlError and its kin)
import sporeflow.steps  # noqa: F401
from sporeflow.config.errors import SporeflowError


def all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *all_subclasses(sub)}
    return found


def drawn_tree() -> dict[str, int]:
    """Each name in the module docstring's tree, with its depth."""
    assert errors.__doc__ is not None
    tree = {}
    for line in errors.__doc__.splitlines():
        match = re.match(r"^(\s*(?:[│ ]   )*)(?:[├└]── )?([A-Z][A-Za-z]+)\b", line)
        if match and ("──" in line or match.group(2) == "SporeflowError"):
            tree[match.group(2)] = line.index(match.group(2))
    return tree


def test_the_docstring_draws_every_sporeflow_error() -> None:
    drawn = set(drawn_tree())
    defined = {cls.__name__ for cls in all_subclasses(SporeflowError)} | {"SporeflowError"}
    assert drawn == defined


def test_the_drawing_nests_each_error_under_its_base() -> None:
    tree = drawn_tree()
    for cls in all_subclasses(SporeflowError):
        base = next(b for b in cls.__mro__[1:] if issubclass(b, SporeflowError))
        assert tree[cls.__name__] > tree[base.__name__], cls.__name__
