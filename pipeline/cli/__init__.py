"""The ``sporeflow`` command line: thin parsing over the organism's public API."""

from sporeflow.pipeline.cli.main import main

__all__ = ["main"]
