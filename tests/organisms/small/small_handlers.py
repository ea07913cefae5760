"""Handlers of the small test organism: each one exercises one rule of the contract."""

from __future__ import annotations

from typing import Any


async def intake(spore: Any, ctx: Any) -> dict[str, Any]:
    """emit to an agent: returned knowledge goes to 'shouter'."""
    return {"text": spore.knowledge["text"]}


async def shout(spore: Any, ctx: Any) -> dict[str, Any]:
    """emit to a channel: returned knowledge is broadcast on 'loud'."""
    return {"text": spore.knowledge["text"].upper()}


async def listen(spore: Any, ctx: Any) -> None:
    ctx.state.setdefault("heard", []).append(spore.knowledge["text"])


def picky(spore: Any, ctx: Any) -> dict[str, Any]:
    """A plain function (runs on a thread) that raises on some spores."""
    number = spore.knowledge["n"]
    if number % 3 == 0:
        raise ValueError(f"{number} is a multiple of three")
    return {"n": number}


async def square(spore: Any, ctx: Any) -> dict[str, Any]:
    """Answers requests: a returned dict becomes the response."""
    return {"square": spore.knowledge["n"] ** 2}


async def asker(spore: Any, ctx: Any) -> dict[str, Any]:
    """Asks another agent and passes on what it learned."""
    answer = await ctx.request("squarer", {"n": spore.knowledge["n"]}, timeout=5)
    return {"asked": spore.knowledge["n"], "square": answer.knowledge["square"]}
