"""The ids of what handlers produce: derived from the spore handled, so that handling it
again produces the same ids and receivers can tell a copy by ``spore.id``.

A spore that ``agent`` produces while it handles ``parent`` gets the id

    "r-" + blake2b(f"{parent.id}|{agent}|{position}", digest_size=9).hexdigest()

where ``position`` is, for what the handler returns or yields, its index among them
(0, 1, ...: an iterable or a stream is counted across its items, XML text by its
elements); for what it sends with ``ctx.send``, ``ctx.broadcast`` or ``ctx.reply``,
``s`` and its index among those sends (``s0``, ``s1``, ...). Each handler run counts
from 0: a retried attempt, or a run on a redelivered or replayed spore, gives the same
output the same ids, in the same order. Two counts rather than one: what a handler
returns is shaped after it ran, without its sends in view.

Fresh ids stay where a copy cannot arise or an id must not be guessed: requests
(``ctx.request``, ``ctx.gather``, ``organism.request``) keep random ids, on which the
pairing of their responses rests (see ``pipeline.core.requests``); and what comes from
outside a handler (``organism.send``, boot spores, notices) keeps the id it was given.
"""

from __future__ import annotations

from hashlib import blake2b

__all__ = ["derived_id"]


def derived_id(parent: str, agent: str, position: int | str) -> str:
    """The id of the spore ``agent`` produced at ``position`` while handling ``parent``."""
    return "r-" + blake2b(f"{parent}|{agent}|{position}".encode(), digest_size=9).hexdigest()
