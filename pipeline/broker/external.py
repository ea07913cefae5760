"""What the bridge does for agents outside sporeflow on its broker (``config.external``).

Sporeflow publishes to them like to any agent (route treats them as agents; no queue or
lane of theirs exists here). What they send arrives in our agents' queues; two things
differ from our own spores:

- A Praval broadcast carries no channel (its routing key is ``broadcast.<type>``, no
  header names one): it is delivered on the channel declared for its sender. Every queue
  bound by ``broadcast.*`` receives a copy; one whose agent does not hear that channel
  acks it and counts it, as it does its own broadcasts.
- With signing, an unsigned spore passes only when it claims to come from an agent
  named in ``signing.accept_unsigned_from``; the claim is the broker's word alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from sporeflow.config import OrganismSpec
from sporeflow.steps import Spore
from sporeflow.steps.signing import SIGNATURE_FIELD

__all__ = ["ExternalAgents"]


class ExternalAgents:
    """The external agents of one organism, as the bridge needs them."""

    def __init__(self, spec: OrganismSpec) -> None:
        self._channels = {name: agent.channel for name, agent in spec.external.items()}
        self._unsigned = spec.signing.unsigned_from if spec.signing is not None else frozenset()

    def broadcast_for(self, agent: str, spore: Spore,
                      subscribers: Mapping[str, tuple[str, ...]]) -> Spore | None:
        """``spore``, arrived in ``agent``'s queue, as delivered here: a broadcast from an
        external agent on the channel declared for it; None when ``agent`` does not hear
        that channel (a copy for the other queues bound by ``broadcast.*``)."""
        channel = self._channels.get(spore.from_agent) if spore.to_agent is None else None
        if channel is None:
            return spore
        if agent not in subscribers.get(channel, ()):
            return None
        return spore if spore.channel == channel else dataclasses.replace(spore,
                                                                          channel=channel)

    def unsigned_accepted(self, spore: Spore) -> bool:
        """True for an unsigned spore that claims a sender whose unsigned spores pass."""
        return spore.from_agent in self._unsigned and SIGNATURE_FIELD not in spore.metadata
