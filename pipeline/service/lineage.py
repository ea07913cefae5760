"""Where ``sporeflow trace`` finds the steps of a spore's tree: a running organism's
control endpoint (its recent window) or a journal file at rest."""

from __future__ import annotations

from pathlib import Path

from sporeflow.pipeline.core.lineage import TraceNode, TraceStep, trace_tree
from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.pipeline.service.address import ControlError
from sporeflow.pipeline.service.client import ControlClient

__all__ = ["trace_from_endpoint", "trace_from_journal"]


def trace_from_journal(path: Path, spore_id: str) -> TraceNode | None:
    """The tree of ``spore_id`` from the journal at ``path``; None when it holds no step
    of that spore. Raises ``JournalError`` for a file that is no journal."""
    with JournalFile(path) as journal:
        return trace_tree(journal.trace_steps(), spore_id)


async def trace_from_endpoint(socket: Path, spore_id: str) -> TraceNode | None:
    """The tree of ``spore_id`` from the running organism at ``socket``; None when its
    window does not hold that spore. Raises :class:`ControlError` when it refuses."""
    async with ControlClient(socket) as client:
        status, answer = await client.get("trace", {"id": spore_id})
    if status == 404:
        return None
    if status != 200 or not isinstance(answer, dict) or not isinstance(
            answer.get("steps"), list):
        message = answer.get("message") if isinstance(answer, dict) else answer
        raise ControlError(f"{socket}: the organism answered {status} to trace: {message}")
    steps = [step for step in map(TraceStep.from_json, answer["steps"]) if step is not None]
    return trace_tree(steps, spore_id)
