"""What an organism takes beside its spec, however the spec is made: ``Organism(spec,
...)``, ``Organism.from_file(path, ...)`` and ``Organism.from_dict(data, ...)`` take the
same options, and both constructors hand them to ``Organism`` as they are."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from sporeflow.config import StageSpec
from sporeflow.pipeline.broker.backend import Backend
from sporeflow.pipeline.observe.tracing import SporeTracer

if TYPE_CHECKING:  # SQLite is imported only by an organism that keeps a journal
    from sporeflow.pipeline.journal.store import Journal

__all__ = ["OrganismOptions"]


class OrganismOptions(TypedDict, total=False):
    """The options of an organism (all optional).

    ``now``: its clock; ``tracing``: OpenTelemetry spans (or a tracer of the caller's);
    ``journal``: a journal file overriding ``organism.journal``; ``backend``: a broker
    (a ``Backend``, or a URL overriding ``organism.backend``); ``hosted``: the agents this
    process runs on it (None: all; a broker only); ``stages``: the caller's own stages.
    """

    now: Callable[[], datetime]
    tracing: bool | SporeTracer
    journal: str | Path | Journal | None
    backend: Backend | str | None
    hosted: Iterable[str] | None
    stages: Sequence[StageSpec]
