"""Unsigned spores over a network: refused, unless the organism says ``insecure: true``.

Without signing, a spore's sender is whatever its ``from_agent`` says: any client of
the broker can read the spores and inject its own as any agent. On a broker on this
machine (loopback) that is a development setup, and the process warns once; on
any other, it does not start unless the organism accepts it.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

from sporeflow.config import ConfigError, OrganismSpec, Problem
from sporeflow.config.hosts import is_loopback

__all__ = ["check_transport"]

# One warning per process, however many organisms it starts (tests reset it).
_warned = threading.Event()


def check_transport(spec: OrganismSpec, address: str, logger: logging.Logger) -> None:
    """Refuse to run ``spec`` unsigned over the broker at ``address`` (a redacted URL)
    unless it is on this machine or ``spec.insecure``; warn once on loopback."""
    parts = urlsplit(address)
    if parts.scheme not in ("amqp", "amqps") or spec.signs or spec.insecure:
        return  # in-process, signed, or accepted
    host = parts.hostname or "localhost"
    where = f"{host}:{parts.port}" if parts.port else host
    if not is_loopback(host):
        source = str(spec.source or f"<organism {spec.name}>")
        raise ConfigError([Problem(source, 1, 1, "organism.insecure", (
            f"organism {spec.name!r} would run unsigned over the broker at {where}, which "
            f"is not on this machine: any client of that broker could read its spores and "
            f"send spores as any of its agents. Configure signing (organism.signing), or "
            f"accept the risk with organism.insecure: true"))])
    if not _warned.is_set():
        _warned.set()
        logger.warning("spores are unsigned on the broker at %s: any client of it can read "
                       "them and send spores as any agent; fine on this machine, but "
                       "configure organism.signing before a broker elsewhere", where)
