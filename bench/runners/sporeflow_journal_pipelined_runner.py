"""sporeflow with the journal on and pipelined outside sends (`confirm=False`, then one
`confirmed()`): the journal groups one sender's spores into few commits."""

from bench.runners.sporeflow_runner import variant

RUNS = variant(journal=True, pipelined=True)
