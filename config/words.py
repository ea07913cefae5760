"""Counts in words: ``1 agent``, ``2 agents``, for what the CLI and the summary print."""

from __future__ import annotations

__all__ = ["plural", "with_article"]


def plural(count: int, word: str, many: str | None = None) -> str:
    """``count`` and ``word``, in the plural (``many``, else ``word + 's'``) unless 1:
    ``plural(1, "reply", "replies")`` is ``1 reply``. Counts get thousands separators."""
    return f"{count:,} {word if count == 1 else many or word + 's'}"


def with_article(word: str) -> str:
    """``word`` after "a" or "an", by its first letter: ``an int``, ``a str``."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
