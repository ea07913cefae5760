"""sporeflow's benchmark suite: the same five workloads on sporeflow, its peers and asyncio.

Run it with `python -m bench` (see BENCHMARKS.md).
"""
