"""Declared sources (``sources:`` in organism.yaml): HTTP ingress, timers, lines of a file
or of standard input, new files in a folder. Each is an outside sender of the organism:
it reaches it only through :class:`SourcePort` (its public API). See ``runner``."""

from sporeflow.pipeline.sources.port import SourcePort, SourceStats
from sporeflow.pipeline.sources.runner import Sources

__all__ = ["SourcePort", "SourceStats", "Sources"]
