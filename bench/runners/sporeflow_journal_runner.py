"""sporeflow with the durable journal on (`organism.journal`, WAL, group commit)."""

from bench.runners.sporeflow_runner import variant

RUNS = variant(journal=True)
