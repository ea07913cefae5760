"""Whether a host is this machine: the one rule for what may go unprotected (an http
source without a token, spores unsigned over a broker)."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (``[::1]`` too); a name is never resolved
    here, so another name is not assumed local."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
