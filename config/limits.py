"""The ``limits:`` section of organism.yaml to :class:`Limits` (already checked against
the schema): a default for each limit left out, sizes and durations in their units."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sporeflow.config.model import Limits
from sporeflow.config.units import parse_duration, parse_size

__all__ = ["limits_of"]

_DEFAULTS = Limits()


def limits_of(conf: Mapping[str, Any]) -> Limits:
    """The limits ``conf`` (the ``limits:`` mapping, or empty) declares."""
    def given(name: str) -> Any:
        return conf.get(name, getattr(_DEFAULTS, name))

    return Limits(
        max_spore_bytes=parse_size(given("max_spore_bytes")),
        max_hops=given("max_hops"),
        max_in_flight=given("max_in_flight"),
        max_in_memory=given("max_in_memory"),
        max_depth=given("max_depth"),
        max_xml_elements=given("max_xml_elements"),
        max_xml_attributes=given("max_xml_attributes"),
        max_dead_letters=given("max_dead_letters"),
        max_dead_letter_bytes=parse_size(given("max_dead_letter_bytes")),
        max_spores_per_thread=conf.get("max_spores_per_thread"),
        max_cost_per_thread=conf.get("max_cost_per_thread"),
        budget_warnings=tuple(sorted(given("budget_warnings"))),
        process_pool=conf.get("process_pool"),
        loop_stall_warning=parse_duration(given("loop_stall_warning") or 0),
        max_outside_senders=given("max_outside_senders"),
        max_journal_dead_letters=given("max_journal_dead_letters"),
        max_journal_dead_letter_age=parse_duration(
            given("max_journal_dead_letter_age") or 0) or None,
    )
