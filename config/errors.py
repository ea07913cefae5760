"""The one error tree of sporeflow.

It lives in ``config`` because that is the lowest layer: the steps and the
runtime both raise these, and ``config`` imports nothing of either.

    SporeflowError
    ├── ConfigError            an organism file (or dict) is wrong; carries every Problem
    ├── SporeError             a spore is malformed (decoding, construction)
    │   ├── LimitExceeded      a spore breaks a declared limit (size, depth, hops, ...)
    │   ├── SchemaViolation    its knowledge fails the recipient's schema (config.schemas)
    │   ├── XmlPayloadError    XML a handler returned cannot be read (steps.xmlpayload)
    │   ├── BadSignature       a brokered spore's signature is missing or wrong (steps.signing)
    │   └── Replayed           a signature outside the window or seen before (steps.signing)
    ├── DeliveryError          a spore could not be delivered (refused, unroutable, expired)
    │   └── NotAPeer           the sender may not address that agent or channel
    ├── HandlerError           the handler of a request failed; carries the cause
    ├── RequestTimeout         no response arrived in time
    ├── OrganismStateError     the organism is not running, or already running
    │   └── StreamInterrupted  a stop cut a stream short; kept, it starts again (agents)
    ├── OrganismFull           it stayed full as long as the sender would wait (admit_within)
    ├── UsageError             a call given what it cannot take (TestOrganism's helpers)
    ├── MissingExtra           a feature's optional extra is not installed (config.extras)
    ├── NoSuchDeadLetter       a dead letter named by number or spore id is not kept (dlq)
    ├── UnknownAgent           a dead-letter filter names no agent, nor a letter's (dlq)
    ├── ControlError           a running organism's control endpoint (pipeline.service)
    │   ├── AlreadyRunning     a run of that organism file is going on already
    │   ├── NotRunning         no run of that organism file answers on its socket
    │   ├── NoSuchProcess      --process names no running process of it (service.processes)
    │   └── AmbiguousProcess   it runs in several processes; the command needs one chosen
    ├── BrokerError            the message broker failed or is unreachable
    │   ├── Disconnected       the link went down before the broker confirmed (broker.link)
    │   ├── Requeued           a delivery's link went down: the broker took it back
    │   └── Unroutable         the broker returned a publish: no queue bound to its key
    └── JournalError           the journal file is foreign, damaged or failed (pipeline.journal)
        └── JournalGone        its file was deleted or replaced while open (journal.sqlite)

The dead-letter reason of each refusal is a :class:`~sporeflow.config.reasons.Reason`.
Every message names the place, the bad value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from sporeflow.config.reasons import Reason

__all__ = [
    "BrokerError",
    "ConfigError",
    "DeliveryError",
    "HandlerError",
    "JournalError",
    "LimitExceeded",
    "NotAPeer",
    "OrganismFull",
    "OrganismStateError",
    "Problem",
    "RequestTimeout",
    "SporeError",
    "StreamInterrupted",
    "SporeflowError",
    "UsageError",
]


class SporeflowError(Exception):
    """The root of every error sporeflow raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One located mistake in an organism file."""

    file: str
    line: int
    column: int
    path: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        kind = "warning: " if self.warning else ""
        return f"{where}: {self.path or '<root>'}: {kind}{self.message}"


class ConfigError(SporeflowError):
    """An organism declaration is invalid; ``problems`` lists every mistake found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        warned = sum(problem.warning for problem in problems)
        count = len(problems) - warned
        head = f"{count} problem{'s' if count != 1 else ''} in the organism"
        if warned:  # shown with them, but no problem (found by a new user: "3 problems")
            head += f", and {warned} warning{'s' if warned != 1 else ''}"
        super().__init__("\n".join([head, *(str(p) for p in problems)]))


class SporeError(SporeflowError):
    """A spore is malformed: a field is missing, of the wrong type, or out of range."""


class LimitExceeded(SporeError):
    """A spore breaks one of the organism's limits; the message names limit and value."""

    reason = Reason.LIMIT_EXCEEDED


class DeliveryError(SporeflowError):
    """A spore could not be delivered; ``reason`` is the dead-letter reason."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class NotAPeer(DeliveryError):
    """The sender's ``peers`` (or a channel's ``publish`` list) forbid this destination."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=Reason.NOT_A_PEER)


class HandlerError(SporeflowError):
    """A handler failed on a request; the original exception is ``__cause__``."""

    def __init__(self, message: str, *, agent: str, spore_id: str) -> None:
        super().__init__(message)
        self.agent = agent
        self.spore_id = spore_id


class RequestTimeout(SporeflowError, TimeoutError):
    """A request got no response within its timeout."""


class OrganismStateError(SporeflowError):
    """The organism is not in a state that allows this call (not started, stopping...)."""


class StreamInterrupted(OrganismStateError):
    """A stop cut a handler's stream short where the organism keeps unfinished work (a
    journal, a broker): its spore is kept, and the stream starts again at the next start."""

    reason = Reason.SHUTDOWN


class UsageError(SporeflowError, ValueError):
    """A call given what it cannot take: a name the organism does not have, a span of
    time that is none (``TestOrganism``'s helpers)."""


class OrganismFull(SporeflowError):
    """The organism had no room for a spore for as long as its sender would wait to be
    admitted (``admit_within``); nothing was admitted: try again later."""


class BrokerError(SporeflowError):
    """The message broker failed; the broker's own exception is ``__cause__``."""


class JournalError(SporeflowError):
    """The journal file cannot be used (foreign, damaged, in use) or a write failed.

    Raised by ``sporeflow.pipeline.journal``; it lives here so that catching it never
    loads SQLite."""
