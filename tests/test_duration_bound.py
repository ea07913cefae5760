"""A duration is at most a year, however it is written: found by a review.

The bound was kept for a number of seconds (``parse_duration``, the organism file's
schema) and, a second copy, for an ``expires_in`` given as text (``steps.expire``); a
duration written with its unit everywhere else (an agent's timeout in organism.yaml, the
``expires_in`` of an XML reply, the CLI's ``--timeout``) skipped it: ``timeout: 10000h``
loaded while ``timeout: 36000000`` was refused.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sporeflow.config import ConfigError, SporeError, organism_from_dict, parse_duration
from sporeflow.pipeline import Organism, Spore

_OVER_A_YEAR = ("8761h", "525601m", "31536001s", "31536000001ms")


@pytest.mark.parametrize("text", _OVER_A_YEAR)
def test_a_duration_written_with_its_unit_is_bounded_as_a_number_is(text: str) -> None:
    with pytest.raises(ValueError, match="year"):
        parse_duration(31536001)
    with pytest.raises(ValueError, match=r"longer than a year; write one up to 8760h"):
        parse_duration(text)
    assert parse_duration("8760h") == 365 * 24 * 3600.0


def test_an_agent_timeout_over_a_year_with_its_unit_is_refused_at_its_place() -> None:
    with pytest.raises(ConfigError) as caught:
        organism_from_dict({"agents": {"a": {"handler": "operator:eq", "timeout": "10000h"}}})
    assert "agents.a.timeout: '10000h' is not valid here" in str(caught.value)
    assert "at most a year: 8760h" in str(caught.value)


def test_an_agent_timeout_over_a_year_in_seconds_is_told_the_bound_too() -> None:
    # Found by a README check: 'timeout: 36000000' was told "write a number of seconds
    # (5, unquoted), or a string with its unit", which it was: nothing named the bound.
    with pytest.raises(ConfigError) as caught:
        organism_from_dict({"agents": {"a": {"handler": "operator:eq", "timeout": 36000000}}})
    assert "agents.a.timeout: 36000000 is not valid here" in str(caught.value)
    assert "at most a year: 8760h" in str(caught.value)


def test_an_xml_reply_expiring_after_a_year_is_refused_as_a_send_is() -> None:
    got: list[dict[str, Any]] = []

    async def writer(spore: Spore, ctx: Any) -> str:
        with pytest.raises(SporeError, match="year"):
            ctx.send("sink", {}, expires_in="10000h")
        return '<note to="sink" expires_in="10000h">late</note>'

    def sink(spore: Spore, ctx: Any) -> None:
        got.append(spore.knowledge)

    async def main() -> list[str]:
        organism = Organism.from_dict({"organism": {"name": "duration-bound"}, "agents": {
            "writer": {"handler": writer}, "sink": {"handler": sink}}})
        async with organism.running():
            await organism.send("writer", {})
            await organism.idle()
        return [letter.error or "" for letter in organism.dead_letters]

    errors = asyncio.run(main())
    assert got == []
    [error] = errors
    assert "longer than a year; write one up to 8760h" in error


def test_a_request_timeout_over_a_year_as_a_number_is_refused_naming_the_timeout() -> None:
    # Found by a review: written with its unit it was refused as a timeout; as a number
    # of seconds it passed, and its request's expiry refused it naming `expires_in`, a
    # keyword the caller never gave.
    def echo(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {}

    async def main() -> list[str]:
        organism = Organism.from_dict({"organism": {"name": "timeout-bound"},
                                       "agents": {"echo": {"handler": echo}}})
        said = []
        async with organism.running():
            for timeout in (400 * 24 * 3600, "9600h"):
                with pytest.raises(SporeError) as caught:
                    await organism.request("echo", {}, timeout=timeout)
                said.append(str(caught.value))
        return said

    for said in asyncio.run(main()):
        assert said.startswith("timeout: duration"), said
        assert "year" in said
