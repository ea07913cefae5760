"""Where ``sporeflow trace`` finds the steps of a spore's tree: a running organism's
control endpoint (its recent window) or a journal file at rest."""

from __future__ import annotations

from collections.abc import Sequence
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


async def trace_from_endpoint(sockets: Sequence[Path], spore_id: str) -> TraceNode | None:
    """The tree of ``spore_id`` from the running organism at ``sockets`` (over a broker,
    one per process: the steps each process's window holds of the tree, together); None
    when no window holds that spore. Raises :class:`ControlError` when one refuses."""
    steps: list[TraceStep] = []
    for socket in sockets:
        steps += await _steps_at(socket, {"id": spore_id})
    root = next((step for step in steps if step.id == spore_id), None)
    if root is None:
        return None
    if len(sockets) > 1:
        # Found by a new user: a process holds the steps it settled, and one that never
        # saw the root holds its descendants all the same: every process is asked for the
        # root's conversation, which each of them carries (correlation_id).
        conversation = root.correlation_id or root.id
        for socket in sockets:
            steps += await _steps_at(socket, {"conversation": conversation})
        steps = list(dict.fromkeys(steps))  # a process's steps came twice
    return trace_tree(steps, spore_id)


async def _steps_at(socket: Path, query: dict[str, str]) -> list[TraceStep]:
    async with ControlClient(socket) as client:
        status, answer = await client.get("trace", query)
    if status == 404:
        return []
    if status != 200 or not isinstance(answer, dict) or not isinstance(
            answer.get("steps"), list):
        message = answer.get("message") if isinstance(answer, dict) else answer
        raise ControlError(f"{socket}: the organism answered {status} to trace: {message}")
    return [step for step in map(TraceStep.from_json, answer["steps"]) if step is not None]
