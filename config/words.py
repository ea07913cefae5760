"""Words for messages: counts (``1 agent``, ``2 agents``), articles, values cut short."""

from __future__ import annotations

import reprlib

__all__ = ["message_of", "plural", "shown", "with_article"]


def plural(count: int, word: str, many: str | None = None) -> str:
    """``count`` and ``word``, in the plural (``many``, else ``word + 's'``) unless 1:
    ``plural(1, "reply", "replies")`` is ``1 reply``. Counts get thousands separators."""
    return f"{count:,} {word if count == 1 else many or word + 's'}"


def message_of(error: BaseException) -> str:
    """``str(error)``, or what stands for it when that raises: a handler's exception may
    be any object, and its text must never fail the spore's settlement."""
    try:
        text = str(error)
    except BaseException as exc:  # noqa: BLE001 - any __str__ at all, SystemExit too
        return f"<str() failed: {type(exc).__name__}>"
    return text


def with_article(word: str) -> str:
    """``word`` after "a" or "an", by its first letter: ``an int``, ``a str``."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


# repr() of a value a sender gave may be of any size (a list of a million items, a text
# of a megabyte) or raise (an object of its own): this one is bounded, and shows such an
# object by its type (its limits are keyword arguments only from Python 3.12).
_BOUNDED = reprlib.Repr()
_BOUNDED.maxlevel, _BOUNDED.maxstring, _BOUNDED.maxother, _BOUNDED.maxlong = 3, 400, 200, 100
_BOUNDED.maxdict = _BOUNDED.maxlist = _BOUNDED.maxtuple = _BOUNDED.maxset = 20


def shown(value: object, width: int) -> str:
    """``repr(value)`` in at most ``width`` characters, cut with an ellipsis (outside any
    bracket of its own, so a message around it stays balanced); never more work than
    ``width`` is worth, and never an error, whatever ``value`` is."""
    text = _BOUNDED.repr(value)
    return text if len(text) <= width else text[:width - 1] + "…"
