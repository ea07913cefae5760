"""Words for messages: counts (``1 agent``, ``2 agents``), articles, values cut short."""

from __future__ import annotations

__all__ = ["plural", "shown", "with_article"]


def plural(count: int, word: str, many: str | None = None) -> str:
    """``count`` and ``word``, in the plural (``many``, else ``word + 's'``) unless 1:
    ``plural(1, "reply", "replies")`` is ``1 reply``. Counts get thousands separators."""
    return f"{count:,} {word if count == 1 else many or word + 's'}"


def with_article(word: str) -> str:
    """``word`` after "a" or "an", by its first letter: ``an int``, ``a str``."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def shown(value: object, width: int) -> str:
    """``repr(value)`` in at most ``width`` characters, cut with an ellipsis (outside any
    bracket of its own, so a message around it stays balanced)."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 1] + "…"
