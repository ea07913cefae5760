"""Agent state: class agents (one instance per agent, with hooks) and organism snapshots.

A handler may be a class. The organism makes one instance per agent, on its
first spore or, with ``lazy: false``, at start; each spore is handled by the
instance's ``handle(spore, ctx)`` (or ``__call__``). Optional hooks:
``async on_start()`` after the instance is made, ``async on_stop()`` on a
graceful stop after the drain, ``save_state() -> JSON`` and
``load_state(state)``. Function handlers keep their state in ``ctx.state``.

A snapshot is plain JSON: ``{"sporeflow_state": 1, "organism": name,
"agents": {agent: state}}``; with keyed agents (``agents.X.key``) a section of their
own, ``"keys": {agent: {key: state}}``; and ``"spores"`` when some were queued (see
``agents.queued``: what it keeps, and how they come back). State loaded for an agent
whose instance does not exist yet (or that is not running yet) is kept and applied
when it appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sporeflow.config import OrganismStateError
from sporeflow.config.handlers import agent_method
from sporeflow.pipeline.agents.queued import SPORES, QueuedSpores, SnapshotPort, parse
from sporeflow.pipeline.agents.threads import AgentThreads
from sporeflow.pipeline.core.privatefiles import private_temporary
from sporeflow.pipeline.core.wiring import AgentRuntime
from sporeflow.steps import Spore

__all__ = ["AgentStates", "ClassAgent", "check_writable", "read_snapshot", "write_snapshot"]

SNAPSHOT_VERSION = 1
HOOK_GRACE = 0.5  # seconds on_stop hooks get at least, even once a stop's drain used its time
_NOTHING: Any = object()


class ClassAgent:
    """The one instance of an agent's handler class, made once, on demand."""

    def __init__(self, cls: type, name: str) -> None:
        self.cls = cls
        self.name = name
        self.method = agent_method(cls)
        function = getattr(cls, self.method)
        self.is_async = inspect.iscoroutinefunction(function)
        self.is_async_gen = inspect.isasyncgenfunction(function)
        self.instance: Any = None
        self.pending: Any = _NOTHING  # state loaded before the instance existed
        self._lock = asyncio.Lock()

    async def ensure(self) -> Any:
        """Return the instance, making it (and running ``on_start``) the first time."""
        if self.instance is None:
            async with self._lock:  # concurrent first spores make one instance
                if self.instance is None:
                    instance = self.cls()
                    if self.pending is not _NOTHING:
                        _load_into(instance, self.pending, self.name)
                        self.pending = _NOTHING
                    on_start = getattr(instance, "on_start", None)
                    if on_start is not None:
                        await on_start()
                    self.instance = instance
        return self.instance

    def save(self) -> Any:
        """The instance's ``save_state()``; what was loaded if it is not made yet."""
        if self.instance is None:
            return None if self.pending is _NOTHING else self.pending
        save = getattr(self.instance, "save_state", None)
        return save() if save is not None else None

    def load(self, state: Any) -> None:
        if self.instance is None:
            self.pending = state
        else:
            _load_into(self.instance, state, self.name)

    async def stop(self, logger: logging.Logger, *, within: float | None = None,
                   hurry: asyncio.Future[None] | None = None) -> None:
        """Run the instance's ``on_stop`` if it has one, for at most ``within`` seconds
        (None: no bound) and not past ``hurry``: a hook that fails is logged, one that
        has not ended by then is cancelled, logged and abandoned, and so is one whose
        wait is cancelled (a stop ending a reload's work). The hook is the user's code:
        whatever it does, the stop goes on."""
        on_stop = getattr(self.instance, "on_stop", None) if self.instance is not None else None
        if on_stop is None:
            return
        hook = asyncio.ensure_future(on_stop())
        waited: set[asyncio.Future[Any]] = {hook} if hurry is None else {hook, hurry}
        try:
            await asyncio.wait(waited, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # our caller gave up (a stop ended a reload's work)
            hook.cancel()  # the hook with it, never left running on its own
            hook.add_done_callback(_retrieved)
            raise
        if not hook.done():
            hook.cancel()  # not awaited: a hook that ignores its cancellation is let go
            hook.add_done_callback(_retrieved)
            logger.error("on_stop of agent %r did not end within %ss of the stop's drain "
                         "timeout; cancelled and abandoned (make it finish sooner, or give "
                         "the stop a longer drain timeout)", self.name, within)
        elif not hook.cancelled() and (error := hook.exception()) is not None:
            logger.error("on_stop of agent %r failed", self.name, exc_info=error)

    async def call(self, spore: Spore, ctx: Any, threads: AgentThreads, *,
                   payload: Any = _NOTHING) -> Any:
        """Handle ``spore`` with the instance's method (making the instance first); a
        sync method runs on one of ``threads``, the agent's. A typed method gets
        ``payload``, the value made of the spore's knowledge, instead of the spore."""
        instance = self.instance
        if instance is None:
            instance = await self.ensure()
        method = getattr(instance, self.method)
        given = spore if payload is _NOTHING else payload
        if self.is_async:
            return await method(given, ctx)
        if self.is_async_gen:
            return method(given, ctx)
        # A plain method may block: it runs on a thread of the agent, off the loop.
        return await threads.run(method, given, ctx, spore=spore)


def _retrieved(hook: asyncio.Future[Any]) -> None:
    """An abandoned hook's end: its exception taken, so asyncio does not report it."""
    if not hook.cancelled():
        hook.exception()


def _load_into(instance: Any, state: Any, name: str) -> None:
    if (refusal := _class_refusal(type(instance), name)) is not None:
        raise refusal
    instance.load_state(state)


def _class_refusal(cls: type, name: str) -> OrganismStateError | None:
    """Why agent ``name``'s class ``cls`` cannot take saved state, if it cannot."""
    if callable(getattr(cls, "load_state", None)):
        return None
    return OrganismStateError(
        f"agent {name!r} has saved state but its class {cls.__qualname__!r} has no "
        f"load_state(state) method; add one or drop its entry from the snapshot")


class AgentStates:
    """The organism's side of agent state: class instances, hooks, and snapshots."""

    def __init__(self, organism: str, logger: logging.Logger) -> None:
        self.organism = organism
        self.logger = logger
        self.pending: dict[str, Any] = {}  # state for agents not built yet
        self.pending_keys: dict[str, Any] = {}  # keyed agents' states, for those not built
        self.spores = QueuedSpores(logger)

    def attach(self, agent: AgentRuntime) -> None:
        """Give a newly built agent its class holder and any state loaded for it."""
        handler = agent.spec.handler
        if inspect.isclass(handler) and agent.spec.gather is None and (
                agent.spec.sequence is None) and agent.keys is None:
            agent.actor = ClassAgent(handler, agent.spec.name)
        state = self.pending.pop(agent.spec.name, _NOTHING)
        if state is not _NOTHING:
            _apply(agent, state)
        if agent.keys is not None and agent.spec.name in self.pending_keys:
            agent.keys.load(self.pending_keys.pop(agent.spec.name))

    async def start(self, agents: Mapping[str, AgentRuntime],
                    port: SnapshotPort | None = None) -> None:
        """Make the instances of ``lazy: false`` class agents, running their ``on_start``;
        at an organism's start (``port``: its ingress), feed the spores loaded before it."""
        if port is not None:
            self.spores.start(port)
        for agent in agents.values():
            if agent.actor is not None and not agent.spec.lazy:
                try:
                    await agent.actor.ensure()
                except Exception as exc:
                    raise OrganismStateError(
                        f"agent {agent.spec.name!r} could not start: its class "
                        f"{agent.actor.cls.__qualname__!r} raised {type(exc).__name__}: "
                        f"{exc}") from exc

    async def stop(self, agents: Mapping[str, AgentRuntime], *, until: float | None = None,
                   hurry: asyncio.Future[None] | None = None) -> None:
        """Run each made instance's ``on_stop``, side by side, until the loop's time
        ``until`` (a stop's drain deadline; a grace of ``HOOK_GRACE`` seconds at least) or
        ``hurry`` (see :meth:`ClassAgent.stop`): one hook that hangs holds up no other, nor
        the stop past then; a failing or hanging hook is logged, not raised."""
        within = None if until is None else max(
            HOOK_GRACE, until - asyncio.get_running_loop().time())
        stopping: list[ClassAgent] = []
        for agent in agents.values():
            actors = [agent.actor] if agent.actor is not None else []
            if agent.keys is not None:  # each live key's instance (steps.keytable)
                actors = [holder.actor for holder in agent.keys.live.values()
                          if getattr(holder, "actor", None) is not None]
            stopping.extend(actors)
        await asyncio.gather(*(actor.stop(self.logger, within=within, hurry=hurry)
                               for actor in stopping))

    def save(self, agents: Mapping[str, AgentRuntime],
             port: SnapshotPort | None = None) -> dict[str, Any]:
        """A JSON-serialisable snapshot of every agent's state (and of state still pending)
        and of the spores queued (see ``agents.queued``), taken in one step."""
        states: dict[str, Any] = dict(self.pending)
        for name, agent in agents.items():
            state = agent.actor.save() if agent.actor is not None else (agent.state or None)
            if state is None:
                continue
            try:  # a JSON round trip both checks the state and detaches it from the agent
                states[name] = json.loads(json.dumps(state))
            except (TypeError, ValueError) as exc:
                where = "save_state()" if agent.actor is not None else "ctx.state"
                raise OrganismStateError(
                    f"agent {name!r}: {where} is not JSON-serialisable ({exc}); keep only "
                    f"dicts, lists, strings, numbers, booleans and None there") from exc
        snapshot: dict[str, Any] = {"sporeflow_state": SNAPSHOT_VERSION, "organism": self.organism,
                                    "agents": states}
        keys = dict(self.pending_keys)
        for name, agent in agents.items():
            if agent.keys is not None:
                keys[name] = agent.keys.snapshot()
        if keys:  # only with keyed agents: other snapshots stay as they were
            snapshot["keys"] = keys
        spores = self.spores.save(agents, port)
        if spores is not None:
            snapshot[SPORES] = spores
        return snapshot

    def load(self, snapshot: Mapping[str, Any], agents: Mapping[str, AgentRuntime],
             port: SnapshotPort | None = None) -> None:
        """Restore ``snapshot``: running agents now, the others when they are built; its
        spores enter through ``port`` (a running organism's ingress) now, else at the
        next start."""
        if not isinstance(snapshot, Mapping) or snapshot.get(
                "sporeflow_state") != SNAPSHOT_VERSION or not isinstance(
                snapshot.get("agents"), Mapping):
            raise OrganismStateError(
                f"not a sporeflow state snapshot (version {SNAPSHOT_VERSION}): expected "
                f"{{'sporeflow_state': 1, 'agents': {{...}}}}, got {snapshot!r:.80}")
        keys = snapshot.get("keys", {})
        if not isinstance(keys, Mapping) or not all(
                isinstance(states, Mapping) for states in keys.values()):
            raise OrganismStateError(
                f"the snapshot's 'keys' must map each keyed agent to {{key: state}}, got "
                f"{keys!r:.80}")
        # A bad spore, or a state an agent running cannot take, raises here, before any
        # state is applied: a snapshot is loaded whole or not at all.
        spores = parse(snapshot[SPORES]) if SPORES in snapshot else []
        for name, state in snapshot["agents"].items():
            if name in agents and (refusal := _refusal(agents[name], state)) is not None:
                raise refusal
        for name, state in snapshot["agents"].items():
            agent = agents.get(name)
            if agent is None:
                self.pending[name] = state
            else:
                _apply(agent, state)
        for name, states in keys.items():
            agent = agents.get(name)
            if agent is not None and agent.keys is not None:
                agent.keys.load(states)
            else:  # not built yet, or not keyed (yet): applied when it is built keyed
                self.pending_keys[name] = dict(states)
        if snapshot.get("organism") not in (None, self.organism):
            self.logger.warning("loading state saved by organism %r into %r",
                                snapshot.get("organism"), self.organism)
        if spores:
            self.spores.load(spores, port)


def _what(agent: AgentRuntime) -> str:
    return f"agent {agent.spec.name!r} is a function agent: its state"


def _apply(agent: AgentRuntime, state: Any) -> None:
    apply_state(agent.actor, agent.state, state, _what(agent))


def _refusal(agent: AgentRuntime, state: Any) -> OrganismStateError | None:
    return state_refusal(agent.actor, state, _what(agent))


def state_refusal(actor: ClassAgent | None, state: Any, what: str) -> OrganismStateError | None:
    """Why ``state`` cannot be loaded into a class agent (``actor``: its class has no
    ``load_state``) or a function agent (None: it is no dict), if it cannot."""
    if actor is not None:
        return _class_refusal(actor.cls, actor.name)
    if not isinstance(state, dict):
        return OrganismStateError(f"{what} must be a dict (ctx.state), got "
                                  f"{type(state).__name__}")
    return None


def apply_state(actor: ClassAgent | None, held: dict[str, Any], state: Any,
                what: str) -> None:
    """Load ``state`` into a class agent's instance (``actor``), else into ``held``, a
    function agent's ``ctx.state``; ``what`` names it in the error for a non-dict (a class
    without ``load_state`` is told as its instance is made: :func:`state_refusal`)."""
    if actor is not None:
        actor.load(state)
        return
    if (refusal := state_refusal(actor, state, what)) is not None:
        raise refusal
    held.clear()  # in place: running handlers hold this very dict
    held.update(state)


def read_snapshot(path: str | Path) -> dict[str, Any] | None:
    """The snapshot saved at ``path``, or None when there is no such file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OrganismStateError(f"cannot read the state file {str(file)!r}: "
                                 f"{exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise OrganismStateError(f"the state file {str(file)!r} is not UTF-8 text (byte "
                                 f"{exc.object[exc.start]:#04x} at {exc.start}); remove it "
                                 f"to start afresh") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # nested past the parser's depth too
        why = "it nests deeper than the parser goes" if isinstance(exc, RecursionError) else exc
        raise OrganismStateError(f"the state file {str(file)!r} is not JSON ({why}); "
                                 f"remove it to start afresh") from None
    if not isinstance(data, dict):
        raise OrganismStateError(f"the state file {str(file)!r} holds a "
                                 f"{type(data).__name__}, not a snapshot object")
    return data


def write_snapshot(path: str | Path, snapshot: Mapping[str, Any]) -> None:
    """Write ``snapshot`` atomically: a temporary file beside ``path``, then a rename; the
    file is 0600, its folder made 0700 if missing (see ``core.privatefiles``)."""
    file = Path(path)
    try:
        handle, temporary = private_temporary(file.parent, f".{file.name}.", ".tmp")
    except OSError as exc:
        raise _unwritable(file, exc) from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(snapshot, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, file)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise _unwritable(file, exc) from None
        raise


def check_writable(path: str | Path) -> None:
    """Raise what :func:`write_snapshot` would at ``path`` for its folder: told before a
    run, not after it, when the state it built would be lost."""
    file = Path(path)
    try:
        handle, temporary = private_temporary(file.parent, f".{file.name}.", ".tmp")
    except OSError as exc:
        raise _unwritable(file, exc) from None
    os.close(handle)
    os.unlink(temporary)


def _unwritable(file: Path, error: OSError) -> OrganismStateError:
    return OrganismStateError(f"cannot write the state file {str(file)!r}: "
                              f"{error.strerror or error}; choose a file in a folder this "
                              f"process may write")
