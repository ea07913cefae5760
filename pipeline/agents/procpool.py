"""``cpu_bound`` agents: their handlers run in worker processes, off the event loop.

A ``cpu_bound: true`` agent's handler is a plain (not async), module-level
function. Each spore crosses to a worker of a ``ProcessPoolExecutor`` as JSON
(``Spore.to_json``) with the handler's ``module:function`` reference; the worker
imports the handler once (beside the organism file, like the loader does),
calls it with a :class:`ProcessContext`, and sends back what it returned as
JSON: None, a dict, a Spore, XML text, or a list of those. The organism then
routes the result like any handler's.

A worker that dies (``BrokenProcessPool``) takes its pool down: the pool is
replaced and each spore that was in it fails that attempt, so the agent's
``retry`` policy decides what happens next. A handler past its ``timeout``
fails its attempt, but its worker finishes the call (a process is not
interrupted mid-call). Workers are started with ``forkserver`` where the
platform has it (safe with the loop's threads), else ``spawn``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sporeflow.config import AgentSpec, HandlerError, SporeError
from sporeflow.config.handlers import resolve_handler
from sporeflow.config.words import with_article
from sporeflow.steps import Spore

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

__all__ = ["ProcessContext", "ProcessPool", "decode_result", "encode_result", "run_in_worker"]


@dataclass(frozen=True, slots=True)
class ProcessContext:
    """What a cpu_bound handler gets besides its spore: it runs in another process, so
    it returns its replies rather than sending them, and keeps no state between calls."""

    agent: str
    spore: Spore
    attempt: int

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger(f"sporeflow.agent.{self.agent}")


def encode_result(result: Any, agent: str) -> Any:
    """What a handler returned, as JSON-ready data (in the worker)."""
    if result is None:
        return {"none": True}
    if type(result) is dict:
        return {"dict": result}
    if isinstance(result, Spore):
        return {"spore": result.to_dict()}
    if isinstance(result, bytes):
        result = result.decode("utf-8", errors="replace")
    if isinstance(result, str):
        return {"xml": result}
    if isinstance(result, list | tuple) or hasattr(result, "__next__"):
        return {"many": [encode_result(item, agent) for item in result]}
    raise SporeError(f"cpu_bound agent {agent!r} returned {with_article(type(result).__name__)} "
                     f"({result!r:.60}); return None, a dict, a Spore, XML text or a list "
                     f"of those")


def decode_result(data: Any) -> Any:
    """The inverse of :func:`encode_result` (in the organism's process)."""
    if "dict" in data:
        return data["dict"]
    if "spore" in data:
        return Spore.from_dict(data["spore"])
    if "xml" in data:
        return data["xml"]
    if "many" in data:
        return [decode_result(item) for item in data["many"]]
    return None


@functools.lru_cache(maxsize=256)
def _handler(ref: str, base_dir: str) -> Callable[..., Any]:
    return resolve_handler(ref, Path(base_dir))


def run_in_worker(ref: str, base_dir: str, agent: str, spore_json: str, attempt: int) -> str:
    """The worker's side: import the handler once, call it, return its result as JSON."""
    spore = Spore.from_json(spore_json)
    result = _handler(ref, base_dir)(spore, ProcessContext(agent, spore, attempt))
    return json.dumps(encode_result(result, agent))


class ProcessPool:
    """The organism's worker processes, started on first use and replaced when broken."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size or os.cpu_count() or 1
        self.replaced = 0
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # Imported here: only organisms with a cpu_bound agent pay for them.
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context(
                "forkserver" if "forkserver" in methods else "spawn")
            self._executor = ProcessPoolExecutor(self.size, mp_context=context)
        return self._executor

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        if self._executor is broken:  # the first of its spores to notice replaces it
            self._executor = None
            self.replaced += 1
            broken.shutdown(wait=False, cancel_futures=True)

    def invoker(self, spec: AgentSpec, base_dir: Path) -> Callable[[Spore, int],
                                                                   Awaitable[Any]]:
        """The lane's invoke for a cpu_bound agent."""
        from concurrent.futures.process import BrokenProcessPool

        ref, name, folder = spec.handler_ref, spec.name, str(base_dir)

        async def invoke(spore: Spore, attempt: int) -> Any:
            executor = self._pool()
            try:
                future = executor.submit(run_in_worker, ref, folder, name, spore.to_json(),
                                         attempt)
                raw = await asyncio.wrap_future(future)
            except BrokenProcessPool as exc:
                self._replace(executor)
                raise HandlerError(
                    f"the worker process running agent {name!r} on spore {spore.id} died "
                    f"({exc}); the pool was replaced", agent=name, spore_id=spore.id) from exc
            return decode_result(json.loads(raw))

        return invoke

    async def close(self) -> None:
        """Shut the workers down (off the loop: joining processes blocks)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
