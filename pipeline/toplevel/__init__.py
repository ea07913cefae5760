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
    from sporeflow.config import SchemaViolation, StageSpec
    from sporeflow.config.errors import (
        BrokerError,
        ConfigError,
        DeliveryError,
        HandlerError,
        JournalError,
        LimitExceeded,
        NotAPeer,
        OrganismFull,
        OrganismStateError,
        RequestTimeout,
        SporeError,
        SporeflowError,
        StreamInterrupted,
        UsageError,
    )
    from sporeflow.config.extras import MissingExtra
    from sporeflow.pipeline import Context, DeadLetter, Organism
    from sporeflow.pipeline.broker.link import Disconnected, Requeued, Unroutable
    from sporeflow.pipeline.core.deadletters import NoSuchDeadLetter, UnknownAgent
    from sporeflow.pipeline.journal.sqlite import JournalGone
    from sporeflow.pipeline.service.address import AlreadyRunning, ControlError, NotRunning
    from sporeflow.pipeline.service.processes import AmbiguousProcess, NoSuchProcess
    from sporeflow.steps import Spore, SporeType
    from sporeflow.steps.signing import BadSignature, Replayed
    from sporeflow.steps.xmlrepair import XmlPayloadError

__all__ = [
    "AlreadyRunning",
    "AmbiguousProcess",
    "BadSignature",
    "BrokerError",
    "ConfigError",
    "Context",
    "ControlError",
    "DeadLetter",
    "DeliveryError",
    "Disconnected",
    "HandlerError",
    "JournalError",
    "JournalGone",
    "LimitExceeded",
    "MissingExtra",
    "NoSuchDeadLetter",
    "NoSuchProcess",
    "NotAPeer",
    "NotRunning",
    "Organism",
    "OrganismFull",
    "OrganismStateError",
    "Replayed",
    "RequestTimeout",
    "Requeued",
    "SchemaViolation",
    "Spore",
    "SporeError",
    "SporeType",
    "SporeflowError",
    "StageSpec",
    "StreamInterrupted",
    "UnknownAgent",
    "Unroutable",
    "UsageError",
    "XmlPayloadError",
]

# Each name's home module, imported on the name's first use: the errors of the whole
# tree drawn in ``config/errors.py`` are here, wherever they are defined. (Not
# ``config.lazy_names.homes_of``: importing ``sporeflow`` loads no layer.)
_HOMES_BY_MODULE = {
    "sporeflow.config": "StageSpec",
    "sporeflow.config.errors": "BrokerError ConfigError DeliveryError HandlerError JournalError "
    "LimitExceeded NotAPeer OrganismFull OrganismStateError RequestTimeout SporeError "
    "SporeflowError StreamInterrupted UsageError",
    "sporeflow.config.extras": "MissingExtra",
    "sporeflow.config.schemas": "SchemaViolation",
    "sporeflow.pipeline": "Context DeadLetter Organism",
    "sporeflow.pipeline.broker.link": "Disconnected Requeued Unroutable",
    "sporeflow.pipeline.core.deadletters": "NoSuchDeadLetter UnknownAgent",
    "sporeflow.pipeline.journal.sqlite": "JournalGone",
    "sporeflow.pipeline.service.address": "AlreadyRunning ControlError NotRunning",
    "sporeflow.pipeline.service.processes": "AmbiguousProcess NoSuchProcess",
    "sporeflow.steps": "Spore SporeType",
    "sporeflow.steps.signing": "BadSignature Replayed",
    "sporeflow.steps.xmlrepair": "XmlPayloadError",
}
_HOMES = {name: module for module, names in _HOMES_BY_MODULE.items() for name in names.split()}

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
