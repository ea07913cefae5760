"""What a reload over a broker refuses (pipeline/reload/diff.py ``broker_bound``): the
refusal names what the file would add or take away, so that the user knows what to undo."""

from __future__ import annotations

from typing import Any

import pytest

from sporeflow.config import organism_from_dict
from sporeflow.pipeline.reload.diff import broker_bound, diff_specs


def _sink(spore: Any, ctx: Any) -> None:
    return None


def _spec(agents: list[str], channels: list[str]) -> Any:
    return organism_from_dict({
        "organism": {"name": "bound"},
        "channels": {name: {} for name in channels},
        "agents": {name: {"handler": _sink} for name in agents},
    })


@pytest.mark.parametrize(("agents", "channels", "named"), [
    (["a", "c"], [], "added c"),
    (["a"], ["news"], "removed b"),
    (["a", "b"], ["news", "weather"], "added weather"),
    (["a", "b"], [], "removed news"),
], ids=["agent-added", "agent-removed", "channel-added", "channel-removed"])
def test_refusal_over_a_broker_names_the_agents_and_channels(
        agents: list[str], channels: list[str], named: str) -> None:
    # Found by fault injection: renaming an agent over RabbitMQ was refused with "a
    # reload cannot add or remove agents", naming neither.
    said = broker_bound(diff_specs(_spec(["a", "b"], ["news"]), _spec(agents, channels)))
    assert named in said, said
