"""Orchestration patterns built on ordinary request spores: gather and sequence.

- gather: one request per target agent (the agents listed, or every current
  subscriber of a channel), all at once; once each answered, failed or timed
  out, one combined result names who replied, who is ``missing`` (no answer in
  time) and who ``failed`` (refused, or its handler raised).
- sequence: a request to each step in turn, each response's knowledge the next
  request's knowledge; the last one is the result.

Every wait is a request with a timeout, so an agent that never answers (or
was removed) delays a gather or a sequence by at most that timeout; a late
answer is dead-lettered as ``late response``, like any request's.

In organism.yaml these are agents of their own, with ``emit`` for the result::

    agents:
      poll:  {gather: {to: [a, b, c], timeout: 5s}, emit: {to: judge}}
      chain: {sequence: [parse, enrich, store]}
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sporeflow.config import AgentSpec, HandlerError, RequestTimeout, SporeflowError
from sporeflow.steps import Spore

if TYPE_CHECKING:
    from sporeflow.pipeline.agents.context import Context

__all__ = ["Gathered", "gather_replies", "orchestrator", "run_sequence"]

Ask = Callable[[str, dict[str, Any], float], Awaitable[Spore]]


@dataclass(frozen=True, slots=True)
class Gathered:
    """What a gather collected: responses by agent, and who did not answer and why."""

    replies: Mapping[str, Spore]
    missing: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.failed

    def knowledge(self) -> dict[str, Any]:
        """The combined knowledge: ``{"replies": {agent: knowledge}, "missing": [...],
        "failed": {agent: error}}``."""
        return {"replies": {name: spore.knowledge for name, spore in self.replies.items()},
                "missing": list(self.missing), "failed": dict(self.failed)}


async def gather_replies(ask: Ask, targets: Sequence[str], knowledge: dict[str, Any], *,
                         timeout: float) -> Gathered:
    """Ask every target at once, each with ``timeout``; sort the outcomes by agent."""
    outcomes = await asyncio.gather(*(ask(name, knowledge, timeout) for name in targets),
                                    return_exceptions=True)
    replies: dict[str, Spore] = {}
    missing: list[str] = []
    failed: dict[str, str] = {}
    for name, outcome in zip(targets, outcomes, strict=True):
        if isinstance(outcome, Spore):
            replies[name] = outcome
        elif isinstance(outcome, RequestTimeout):
            missing.append(name)
        elif isinstance(outcome, SporeflowError):
            failed[name] = f"{type(outcome).__name__}: {outcome}"
        else:
            raise outcome  # not an answer but a bug, or a cancellation: let it through
    return Gathered(replies, tuple(missing), failed)


async def run_sequence(ask: Ask, steps: Sequence[str], knowledge: dict[str, Any], *,
                       timeout: float, name: str, spore_id: str) -> dict[str, Any]:
    """Pass ``knowledge`` through ``steps`` in order; a failing step fails the sequence."""
    for number, step in enumerate(steps, 1):
        try:
            answer = await ask(step, knowledge, timeout)
        except SporeflowError as exc:
            raise HandlerError(
                f"sequence {name!r} stopped at step {number} of {len(steps)} ({step!r}): "
                f"{type(exc).__name__}: {exc}", agent=name, spore_id=spore_id) from exc
        knowledge = answer.knowledge
    return knowledge


Handler = Callable[[Spore, "Context"], Awaitable[dict[str, Any]]]


def orchestrator(spec: AgentSpec) -> Handler | None:
    """The built-in handler of a ``gather`` or ``sequence`` agent; None for others."""
    gather, sequence, name = spec.gather, spec.sequence, spec.name
    if gather is not None:

        async def gather_handler(spore: Spore, ctx: Context) -> dict[str, Any]:
            result = await ctx.gather(gather.to, spore.knowledge, channel=gather.channel,
                                      timeout=gather.timeout)
            return result.knowledge()

        return gather_handler
    if sequence is not None:

        async def sequence_handler(spore: Spore, ctx: Context) -> dict[str, Any]:
            async def ask(to: str, knowledge: dict[str, Any], timeout: float) -> Spore:
                return await ctx.request(to, knowledge, timeout=timeout)

            return await run_sequence(ask, sequence.steps, spore.knowledge,
                                      timeout=sequence.timeout, name=name, spore_id=spore.id)

        return sequence_handler
    return None
