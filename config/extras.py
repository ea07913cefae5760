"""The optional extras: one way to say that one is missing, and how to install it.

A feature that needs an extra checks for it where the feature starts (not at import
time) and raises :class:`MissingExtra`, a :class:`SporeflowError`, so the command line
prints one line: ``MissingExtra: tracing needs OpenTelemetry, which is not installed;
install it with: pip install 'sporeflow[tracing]'``.
"""

from __future__ import annotations

import importlib.util

from sporeflow.config.errors import SporeflowError

__all__ = ["MissingExtra", "extra_hint", "has_modules", "missing_extra", "require_extra"]


class MissingExtra(SporeflowError):
    """A feature needs an optional dependency that is not installed."""


def extra_hint(extra: str) -> str:
    """The command that installs ``extra``: ``pip install 'sporeflow[extra]'``."""
    return f"pip install 'sporeflow[{extra}]'"


def missing_extra(feature: str, package: str, extra: str) -> MissingExtra:
    """The error for ``feature`` (``"tracing"``) missing ``package`` of ``extra``."""
    return MissingExtra(f"{feature} needs {package}, which is not installed; install it "
                        f"with: {extra_hint(extra)}")


def has_modules(*names: str) -> bool:
    """Whether every module in ``names`` (dotted names too) can be imported."""
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except ImportError:  # a dotted name whose parent package is missing
            return False
    return True


def require_extra(feature: str, *, modules: tuple[str, ...], package: str, extra: str) -> None:
    """Raise :class:`MissingExtra` unless ``modules`` can be imported."""
    if not has_modules(*modules):
        raise missing_extra(feature, package, extra)
