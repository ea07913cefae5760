"""The small news organism that the live view and the Prometheus tests watch: a source
broadcasting on ``news`` to two readers, and an agent failing on odd numbers."""

from __future__ import annotations

from typing import Any

from sporeflow.pipeline import Context, Spore


async def relay(spore: Spore, ctx: Context) -> dict[str, Any]:
    return {"n": spore.knowledge["n"]}


async def listen(spore: Spore, ctx: Context) -> None:
    return None


async def flaky(spore: Spore, ctx: Context) -> None:
    if spore.knowledge["n"] % 2:
        raise ValueError("odd")


def news_agents() -> dict[str, dict[str, Any]]:
    return {
        "source": {"handler": relay, "emit": {"channel": "news"}},
        "reader1": {"handler": listen, "subscribe": ["news"]},
        "reader2": {"handler": listen, "subscribe": ["news"]},
        "flaky": {"handler": flaky},
    }
