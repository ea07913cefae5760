"""sporeflow with the live view redrawing (into an in-memory terminal) throughout."""

from bench.runners.sporeflow_runner import variant

RUNS = variant(live=True)
