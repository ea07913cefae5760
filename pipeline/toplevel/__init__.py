"""sporeflow: a message pipeline for multi-agent systems.

The public API at the top-level name, for handlers and applications::

    from sporeflow import Context, Organism, Spore

The installed package is this folder (``pipeline/toplevel``), mapped to ``sporeflow``
in pyproject.toml; the layers live beneath it (``sporeflow.config``, ``sporeflow.steps``,
``sporeflow.pipeline``). A name here loads its layer on first use: importing
``sporeflow.config`` alone never loads the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sporeflow.config import (
        BrokerError,
        ConfigError,
        DeliveryError,
        HandlerError,
        LimitExceeded,
        NotAPeer,
        OrganismStateError,
        RequestTimeout,
        SporeError,
        SporeflowError,
        StageSpec,
    )
    from sporeflow.pipeline import Context, DeadLetter, Organism
    from sporeflow.steps import Spore, SporeType

__all__ = [
    "BrokerError",
    "ConfigError",
    "Context",
    "DeadLetter",
    "DeliveryError",
    "HandlerError",
    "LimitExceeded",
    "NotAPeer",
    "Organism",
    "OrganismStateError",
    "RequestTimeout",
    "Spore",
    "SporeError",
    "SporeType",
    "SporeflowError",
    "StageSpec",
]

_HOMES = {
    **dict.fromkeys(["BrokerError", "ConfigError", "DeliveryError", "HandlerError",
                     "LimitExceeded", "NotAPeer", "OrganismStateError", "RequestTimeout",
                     "SporeError", "SporeflowError", "StageSpec"], "sporeflow.config"),
    **dict.fromkeys(["Context", "DeadLetter", "Organism"], "sporeflow.pipeline"),
    **dict.fromkeys(["Spore", "SporeType"], "sporeflow.steps"),
}

__version__: str


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        value: Any = version("sporeflow")
    elif name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    else:
        raise AttributeError(f"module 'sporeflow' has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
