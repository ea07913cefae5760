"""The ledger: where every admitted spore is settled, exactly once.

A spore the intake holds ends in one of these ways, and each has one method here:

    handled   its handler returned; its replies are fed back     (``handled``)
    failed    its last attempt failed                            (``failed``)
    rejected  a stage refused it                                 (``reject``)
    resolved  a response that answered a pending request         (``resolve``)
    returned  addressed to the outside world                     (``return_outside``)
    dropped   a copy of one its agent handled lately (dedupe)    (``dropped``)
              or of the response that answered its request       (``response_copy``)

Each settles the intake's count once (``idle()`` and ``max_in_flight`` rest on it).
What watches settlement, the journal, typed events, the broker bridge, attaches as
a :class:`LedgerHook`, registered only while active: an unobserved organism pays one
empty-list test per settlement and nothing more.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sporeflow.config import HandlerError, Limits, OrganismStateError
from sporeflow.config.model import DEAD_LETTER_CHANNEL, SYSTEM_SENDER
from sporeflow.config.reasons import SENDERS_MISTAKES, Reason
from sporeflow.pipeline.core.deadletters import (
    URL_PASSWORDS,
    DeadLetter,
    DeadLetterStore,
    Masker,
    error_text,
)
from sporeflow.pipeline.core.intake import Intake
from sporeflow.pipeline.core.logfields import describe_error, spore_fields
from sporeflow.pipeline.core.outbox import Outbox
from sporeflow.pipeline.core.requests import RequestBook
from sporeflow.pipeline.core.wiring import WiringSnapshot
from sporeflow.steps import Spore, SporeType, check_spore

__all__ = ["OTHER", "Ledger", "LedgerHook"]

OTHER = "other"  # the one name undeclared channels are counted under: input names none



class LedgerHook:
    """What a watcher of settlement may override; each default does nothing.

    ``admitted`` gets spores a handler sent (``parent`` is the spore it was handling)
    or the outside world sent (``parent`` None). ``released`` is called for each
    spore settled without a handler: rejected, resolved or returned.

    ``keeps`` tells, for a spore a stop interrupts, whether the hook keeps it for the
    next start (the journal; the broker, which gets it back unacked): then it is no
    dead letter (see :meth:`Ledger.abandon`).
    """

    def admitted(self, spores: Sequence[Spore], agent: str | None,
                 parent: Spore | None) -> None:
        """Spores entered the organism."""

    def handled(self, spore: Spore, replies: list[Spore], agent: str, latency: float) -> None:
        """A handler finished ``spore``; ``replies`` are about to be fed back."""

    def failed(self, spore: Spore, agent: str, reason: str, error: BaseException,
               attempts: int) -> None:
        """``spore``'s last attempt failed (it is dead-lettered right after)."""

    def dead_lettered(self, letter: DeadLetter) -> None:
        """A dead letter was recorded."""

    def keeps(self, spore: Spore) -> bool:
        """Whether ``spore``, which a stop interrupts, is kept for the next start."""
        return False

    def ended(self, spore: Spore) -> None:
        """``spore`` finished without a handler: it resolved a request, went outside, or
        was dropped as a copy (dedupe)."""

    def fanned_out(self, spore: Spore, targets: int) -> None:
        """Broadcast ``spore`` became ``targets`` (> 1) deliveries, each settled alone."""

    def released(self, spore: Spore) -> None:
        """``spore`` is settled without a handler (rejected, resolved, returned or
        dropped)."""


def _overrides(hooks: Sequence[LedgerHook], name: str,
               guarded: Sequence[LedgerHook], logger: logging.Logger,
               ) -> list[Callable[..., Any]]:
    base = getattr(LedgerHook, name)
    return [_Guarded(hook, name, logger) if any(hook is g for g in guarded)
            else getattr(hook, name)
            for hook in hooks if getattr(type(hook), name) is not base]


class _Guarded:
    """A method of a user's hook: what it raises is logged, never raised into the
    settling of a spore (which would leave it half settled: held for ever, ``idle()``
    waiting for ever). The first failure is logged with its traceback, then every
    thousandth."""

    __slots__ = ("_method", "_where", "_logger", "failures")

    def __init__(self, hook: LedgerHook, name: str, logger: logging.Logger) -> None:
        self._method = getattr(hook, name)
        self._where = f"{type(hook).__qualname__}.{name}"
        self._logger = logger
        self.failures = 0

    def __call__(self, *args: Any) -> Any:
        try:
            return self._method(*args)
        except Exception:
            self.failures += 1
            if self.failures == 1 or self.failures % 1000 == 0:
                self._logger.exception(
                    "the ledger hook %s raised (%d time(s) so far); the spore is settled "
                    "all the same", self._where, self.failures)
            return False  # keeps(): not kept


class Ledger:
    """Settles spores for one organism run; see the module docstring."""

    def __init__(self, *, intake: Intake, dead_letters: DeadLetterStore,
                 requests: RequestBook, wiring: Callable[[], WiringSnapshot],
                 logger: logging.Logger, now: Callable[[], datetime],
                 outbox: Outbox, listeners: list[Callable[[Spore], None]],
                 limits: Limits, masker: Masker = URL_PASSWORDS) -> None:
        self.intake = intake
        self.limits = limits  # the chain's: what a notice of a dead letter must keep to
        # The organism's secrets: masked in every failure's text, before a hook sees it.
        self.masker = masker
        self.dead_letters = dead_letters
        self.requests = requests
        self._wiring = wiring
        self.logger = logger
        self.now = now
        self.outbox = outbox  # the organism's: kept across runs
        self.returned = 0
        # What handlers produced (returned, yielded, sent): not replays, deliveries, notices.
        self.produced = 0
        self.outside_listeners = listeners
        self.on_outside: Callable[[Spore], None] = self.return_outside
        # Tallies for stats(): refusals by sender and reason, per channel, and fan-out.
        self.refused_from: Counter[str] = Counter()
        self.refused_why: Counter[tuple[str, str]] = Counter()
        self.refused_on: Counter[str] = Counter()
        self.fanout: dict[str, list[int]] = {}  # channel -> [broadcasts, deliveries]
        self.kept = 0  # spores a stop interrupted, kept by a hook for the next start
        self.duplicate_responses = 0  # copies of the response that answered a request
        self._hooks: list[LedgerHook] = []
        self._guarded: list[LedgerHook] = []  # the user's (organism.add_hook)
        self._index()

    # -- hooks -----------------------------------------------------------------------

    def add_hook(self, hook: LedgerHook, *, guarded: bool = False) -> None:
        """Tell ``hook`` how each spore is settled; ``guarded`` (a user's hook): what it
        raises is logged, not raised into the settling."""
        if hook not in self._hooks:
            self._hooks.append(hook)
            if guarded:
                self._guarded.append(hook)
            self._index()

    def remove_hook(self, hook: LedgerHook) -> None:
        if hook in self._hooks:
            self._hooks.remove(hook)
            self._guarded = [g for g in self._guarded if g is not hook]
            self._index()

    def _index(self) -> None:
        def told(name: str) -> list[Callable[..., Any]]:
            return _overrides(self._hooks, name, self._guarded, self.logger)

        self._on_admitted = told("admitted")
        self._on_handled = told("handled")
        self._on_failed = told("failed")
        self._on_dead = told("dead_lettered")
        self._on_ended = told("ended")
        self._on_released = told("released")
        self._on_fanned_out = told("fanned_out")
        self.watched = bool(self._hooks)
        self._keepers = told("keeps")

    # -- entering ----------------------------------------------------------------------

    def admitted(self, spores: Sequence[Spore], agent: str | None = None,
                 parent: Spore | None = None) -> None:
        for hook in self._on_admitted:
            hook(spores, agent, parent)

    def feed(self, spores: Sequence[Spore], agent: str | None = None,
             parent: Spore | None = None) -> None:
        """Queue spores made inside the organism (``agent``'s sends, notices); never waits.
        What a handler made counts as its reply; the organism's own notices do not."""
        if agent is not None and agent != SYSTEM_SENDER:
            self.produced += len(spores)
        if self._on_admitted:  # first: a hook that knows them must before any is paged out
            self.admitted(spores, agent, parent)
        self.intake.feed(spores)

    # -- settling ----------------------------------------------------------------------

    def handled(self, spore: Spore, replies: list[Spore], agent: str, latency: float) -> None:
        """``agent`` handled ``spore``: feed its replies back, then settle it."""
        if spore.spore_type is SporeType.REQUEST:  # its requester may wait in vain: say so
            self.requests.returned(spore.id)
        for hook in self._on_handled:
            hook(spore, replies, agent, latency)
        if replies:
            self.produced += len(replies)
            self.intake.feed(replies)
        self.intake.settle(1)

    def failed(self, agent: str, spore: Spore, reason: str, error: BaseException,
               attempts: int) -> None:
        """``spore``'s last attempt at ``agent`` failed: dead-letter and settle it."""
        # A spore that expired in the mailbox never ran, and one a stop interrupted did
        # not fail: each line says what happened (the reason is kept on the record).
        self.logger.warning(_FAILED_LINES.get(reason, _FAILED), {
            "agent": agent, "spore": spore.id, "attempt": attempts,
            "error": describe_error(error, self.masker)},
            extra=spore_fields(spore, agent=agent, event="failed", reason=reason))
        kept = self._kept_for_next_start(reason, spore)  # asked before the hooks hear of it
        for hook in self._on_failed:
            hook(spore, agent, reason, error, attempts)
        if kept:
            self.kept += 1
            text = self.describe(error)
        else:
            text = self.record(spore, reason, error, agent=agent, attempts=attempts).error
        failure = HandlerError(f"agent {agent!r} failed on request {spore.id} ({reason}): "
                               f"{text}", agent=agent, spore_id=spore.id)
        failure.__cause__ = error
        self.requests.fail(spore.id, failure, reason=reason)
        self.intake.settle(1)

    def describe(self, error: BaseException) -> str:
        """``Type: message`` of ``error``, masked: for a hook that writes a failure."""
        return error_text(error, self.masker)

    def reject(self, spore: Spore, reason: str, error: BaseException | None) -> None:
        """A stage refused ``spore`` (or one delivery of it): dead-letter and settle it."""
        producer = spore.from_agent
        if (reason in SENDERS_MISTAKES and type(producer) is str
                and producer in self._wiring().lanes):
            # What one of our handlers returned or yielded: its send, told as one.
            self.refuse_sent(spore, reason, error, producer)
        else:
            self.logger.info("dead letter %s from %r: %s: %s", spore.id, producer,
                             reason, describe_error(error, self.masker),
                             extra=spore_fields(spore, event="dead-lettered", reason=reason))
            self.refused(spore, reason, error)
        self.intake.settle(1)
        for hook in self._on_released:
            hook(spore)

    def refuse_sent(self, spore: Spore, reason: str, error: BaseException | None,
                    agent: str) -> None:
        """What ``agent`` (one of ours, or a source) sent, returned or yielded breaks a
        rule: a WARNING naming it and the target, and a dead letter naming it. One rule
        for every way a handler's output comes out (no settlement: see ``refused``)."""
        self.logger.warning(
            "refused: %s -> %s: %s: %s", spore.from_agent,
            spore.to_agent or f"#{spore.channel}", reason, describe_error(error, self.masker),
            extra=spore_fields(spore, agent=agent, event="refused", reason=reason))
        self.refused(spore, reason, error, agent=agent)

    def refused(self, spore: Spore, reason: str, error: BaseException | None, *,
                agent: str | None = None) -> None:
        """Record a refusal (no settlement: the caller settles, or it was never held)."""
        self.record(spore, reason, error, agent=agent, trace_it=False)
        # A refused spore may be malformed in any field: hash only what is a string.
        if type(spore.from_agent) is str and spore.from_agent in self._wiring().lanes:
            self.refused_from[spore.from_agent] += 1
            self.refused_why[spore.from_agent, reason] += 1
        if spore.to_agent is None and type(spore.channel) is str:
            self.refused_on[self._counted_under(spore.channel)] += 1
        # A refused request fails its waiter now, and so does a refused response from
        # the agent that was asked (a forged one fails nothing).
        if type(spore.id) is str:
            self.requests.refused(spore.id, reason, error)
        if spore.spore_type is SporeType.RESPONSE and type(spore.reply_to) is str:
            self.requests.refused(spore.reply_to, reason, error, responder=spore.from_agent)

    def record(self, spore: Spore, reason: str, error: BaseException | None, *,
               agent: str | None = None, attempts: int = 0,
               trace_it: bool = True) -> DeadLetter:
        """Keep a dead letter and tell whoever listens (hooks, the dead-letter channel)."""
        letter = DeadLetter.of(spore, reason, error, agent=agent, attempts=attempts,
                               trace_it=trace_it, masker=self.masker)
        self.dead_letters.add(letter)
        for hook in self._on_dead:
            hook(letter)
        self._announce(letter)
        return letter

    def _announce(self, letter: DeadLetter) -> None:
        """Broadcast on the ``dead-letter`` channel when some agent listens there. The
        notice carries the dead spore, two levels deeper and with the error besides: when
        that would take it past the chain's limits, or the spore was refused for knowledge
        that is no JSON, the spore goes without its knowledge and metadata, and
        ``omitted`` says why (else the notice itself is refused)."""
        if (not self._wiring().table.subscribers.get(DEAD_LETTER_CHANNEL)
                or letter.spore.channel == DEAD_LETTER_CHANNEL):
            return
        about = {"reason": str(letter.reason), "error": letter.error, "agent": letter.agent,
                 "attempts": letter.attempts}
        dead, thread = letter.spore.to_dict(), letter.spore.thread
        notice = _notice({**about, "spore": dead}, thread)
        try:
            check_spore(notice, self.limits)  # the validate stage's own check
        except Exception as exc:  # as there: hostile knowledge may break a check
            stripped = {**about, "spore": {**dead, "knowledge": {}, "metadata": {}},
                        "omitted": f"the spore's knowledge and metadata: {exc}"}
            notice = _notice(stripped, thread)
            try:
                check_spore(notice, self.limits)
            except Exception:  # noqa: BLE001 - its thread was what is wrong (an id too long)
                notice = _notice(stripped, None)
        self.feed((notice,), SYSTEM_SENDER)  # made inside: the journal keeps it like a send

    def resolve(self, response: Spore) -> None:
        """``response`` answers a pending request: hand it to its waiter."""
        if not self.requests.resolve(response):
            self.on_outside(response)  # the requester is in another process
            return
        self.ended(response)

    def return_outside(self, spore: Spore) -> None:
        """``spore`` is addressed to the outside world: keep it and tell the listeners."""
        self.outbox.append(spore)
        self.returned += 1
        for listener in list(self.outside_listeners):
            try:
                listener(spore)
            except Exception:  # a listener is the caller's code: never let it stop the chain
                self.logger.exception("an outside listener failed on spore %s", spore.id,
                                      extra=spore_fields(spore, event="returned"))
        self.ended(spore)

    def dropped(self, spore: Spore, agent: str) -> None:
        """``agent`` handled a spore of this id within its dedupe window: ``spore``, a copy,
        ends without its handler, and without a dead letter (a copy is no error: a broker
        acks it, a journal finishes it)."""
        self.logger.debug("agent %r dropped spore %s: a copy of one it handled within its "
                          "dedupe window", agent, spore.id,
                          extra=spore_fields(spore, agent=agent, event="deduplicated"))
        self.ended(spore)

    def response_copy(self, response: Spore) -> None:
        """``response`` is a copy of the one that answered its request (the request was
        delivered again, over a broker, and answered again with the same spore): it ends,
        counted, without a dead letter (a copy is no error)."""
        self.duplicate_responses += 1
        self.logger.debug("dropped response %s: a copy of the one that answered request %s",
                          response.id, response.reply_to,
                          extra=spore_fields(response, event="deduplicated"))
        self.ended(response)

    def ended(self, spore: Spore) -> None:
        """``spore`` is finished without a handler."""
        for hook in self._on_ended:
            hook(spore)
        self.intake.settle(1)
        for hook in self._on_released:
            hook(spore)

    def broadcast_routed(self, spore: Spore, targets: int) -> None:
        """Broadcast ``spore`` goes to ``targets`` agents: each delivery is held and settled
        on its own, and the channel's tallies count it (the one place fan-out is counted)."""
        if targets > 1:
            self.intake.fanout(targets - 1)
            for hook in self._on_fanned_out:
                hook(spore, targets)
        channel = self._counted_under(spore.channel)
        counts = self.fanout.get(channel)
        if counts is None:
            counts = self.fanout[channel] = [0, 0]
        counts[0] += 1
        counts[1] += targets

    def _counted_under(self, channel: str) -> str:
        """The name a channel's tallies go under, once and for good: its own while it is
        declared, else ``other`` (a name a sender made up). A channel a reload removes
        keeps what it counted under its name, for when it comes back: ``other`` never
        takes it over, so no count of a name ever goes down."""
        return channel if channel in self._wiring().table.channels else OTHER

    def _kept_for_next_start(self, reason: str, spore: Spore) -> bool:
        """Whether ``spore``, failed or abandoned for ``reason``, is kept by a hook for the
        next start (a stop interrupted it; the journal or the broker has it) rather than
        dead-lettered. The one place this is decided, so that dead letters, stats and
        ``dlq`` agree."""
        return reason == Reason.SHUTDOWN and any(keeps(spore) for keeps in self._keepers)

    def keeps_unfinished(self, spore: Spore) -> bool:
        """Whether ``spore``, were a stop to interrupt it now, would be kept for the next
        start (see :meth:`_kept_for_next_start`): a stream a stop cuts short asks."""
        return self._kept_for_next_start(Reason.SHUTDOWN, spore)

    def kept_elsewhere(self, spore: Spore) -> None:
        """``spore`` could not leave, but what made it went back to the broker unacked, so
        it is made again there: no dead letter (the caller settles it)."""
        self.kept += 1

    def abandon(self, spores: Sequence[tuple[Spore, int]], agent: str | None,
                reason: str) -> int:
        """Dead-letter and settle held spores a stop or removal leaves behind (unless
        :meth:`_kept_for_next_start`)."""
        for spore, attempts in spores:
            if self._kept_for_next_start(reason, spore):
                self.kept += 1
            else:
                where = f"agent {agent!r}" if agent is not None else "the organism"
                self.record(spore, reason, OrganismStateError(f"{where} stopped first"),
                            agent=agent, attempts=attempts)
            self.intake.settle(1)
        return len(spores)


_FAILED = "agent %(agent)r failed on spore %(spore)s (attempt %(attempt)d): %(error)s"
_FAILED_LINES: dict[str, str] = {
    Reason.EXPIRED: "spore %(spore)s expired waiting for agent %(agent)r (attempt "
                    "%(attempt)d): %(error)s",
    Reason.SHUTDOWN: "the stop interrupted agent %(agent)r on spore %(spore)s (attempt "
                     "%(attempt)d): %(error)s",
}


def _notice(knowledge: dict[str, Any], thread: object) -> Spore:
    """The organism's notice on the ``dead-letter`` channel, in the dead spore's
    ``thread`` (None: its own)."""
    return Spore(knowledge=knowledge, spore_type=SporeType.NOTIFICATION,
                 from_agent=SYSTEM_SENDER, channel=DEAD_LETTER_CHANNEL,
                 thread_id=thread)  # type: ignore[arg-type]  # checked with the notice
