"""The systems under benchmark: which runner module, which package it needs, which size."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class System:
    name: str
    module: str
    requires: str  # top-level package; when it is missing the runner skips, it does not fail
    peer: bool  # peers run from --python-peers, sporeflow and the limit from --python
    scale: float = 1.0  # default size factor for this system
    baseline: bool = False  # runs from --baseline-python: another build of sporeflow


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        # Hand-written asyncio: the limit sporeflow is measured against.
        System("asyncio", "bench.runners.asyncio_runner", "asyncio", peer=False),
        System("sporeflow", "bench.runners.sporeflow_runner", "sporeflow", peer=False),
        # The same runs with the journal, or the live view, on: what each costs.
        System("sporeflow+journal", "bench.runners.sporeflow_journal_runner", "sporeflow",
               peer=False),
        System("sporeflow+journal-pipelined",
               "bench.runners.sporeflow_journal_pipelined_runner", "sporeflow", peer=False),
        # The journal's limit: plain SQLite, WAL, 256 rows per commit (W1, W4, W5 only).
        System("sqlite", "bench.runners.sqlite_runner", "sqlite3", peer=False),
        System("sporeflow+live", "bench.runners.sporeflow_live_runner", "sporeflow", peer=False),
        System("autogen-core", "bench.runners.autogen_runner", "autogen_core", peer=True),
        # praval handles ~2k spores/s: full sizes would take ~12 minutes for 5 runs.
        System("praval", "bench.runners.praval_runner", "praval", peer=True, scale=0.1),
    )
}
LIMIT = "asyncio"
SUBJECT = "sporeflow"

# `--baseline-python PY` runs these again under PY (a venv with an older sporeflow),
# as NAME@base: the bench code of this checkout, the sporeflow build of PY.
BASE = "@base"
BASELINES: dict[str, System] = {
    s.name + BASE: replace(s, name=s.name + BASE, baseline=True)
    for s in (SYSTEMS["sporeflow"], SYSTEMS["sporeflow+journal"],
              SYSTEMS["sporeflow+journal-pipelined"])
}


def origin(name: str) -> str:
    """Return the system a baseline twin runs again (`sporeflow@base` -> `sporeflow`)."""
    return name.removesuffix(BASE)
