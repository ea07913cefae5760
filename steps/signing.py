"""HMAC signing of spores, so a spore injected into the broker without the key is refused.

The signature is HMAC-SHA256 over the spore's canonical JSON form (its ``to_dict``,
keys sorted, ASCII, no spaces) with ``metadata["signature"]`` itself left out, and
travels in ``metadata["signature"]`` as ``hmac-sha256:<hex>``: metadata is part of
every wire form (JSON, XML envelope, AMQP body), so no form needs a new field.

Every field is covered, ``hops`` and ``expires_at`` included: a relay that changes
anything must sign again. The publisher signs (:func:`signed`); the broker consumer
verifies (:func:`verify`, or ``validate(..., verify=signature_check(key))`` on a
stream of spores) and dead-letters a spore that is unsigned or badly signed with
reason ``bad signature``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from sporeflow.config.errors import SporeError
from sporeflow.config.reasons import Reason
from sporeflow.config.secrets import Secret
from sporeflow.steps.spore import Spore

__all__ = [
    "SIGNATURE_FIELD",
    "BadSignature",
    "sign",
    "signature_check",
    "signed",
    "signing_bytes",
    "verify",
]

SIGNATURE_FIELD = "signature"
_SCHEME = "hmac-sha256:"

Key = bytes | str | Secret


class BadSignature(SporeError):
    """A spore is unsigned, or its signature does not match this organism's key."""

    reason = Reason.BAD_SIGNATURE


def signing_bytes(spore: Spore) -> bytes:
    """The bytes a signature covers: canonical JSON of ``spore`` minus its signature."""
    try:
        data: dict[str, Any] = spore.to_dict()
        metadata = data["metadata"]
        if isinstance(metadata, dict) and SIGNATURE_FIELD in metadata:
            data["metadata"] = {k: v for k, v in metadata.items() if k != SIGNATURE_FIELD}
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False)
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise SporeError(f"spore {spore.id!r:.80} has no canonical JSON form to sign: "
                         f"{exc}") from None
    return text.encode("ascii")


def sign(spore: Spore, key: Key) -> str:
    """Return the signature of ``spore`` under ``key`` (``hmac-sha256:<hex>``)."""
    digest = hmac.new(_key_bytes(key), signing_bytes(spore), hashlib.sha256).hexdigest()
    return _SCHEME + digest


def signed(spore: Spore, key: Key) -> Spore:
    """A copy of ``spore`` carrying its signature in ``metadata["signature"]``."""
    return dataclasses.replace(
        spore, metadata={**spore.metadata, SIGNATURE_FIELD: sign(spore, key)})


def verify(spore: Spore, key: Key) -> None:
    """Return if ``spore`` is signed with ``key``; else raise :class:`BadSignature`."""
    metadata = spore.metadata
    claimed = metadata.get(SIGNATURE_FIELD) if isinstance(metadata, dict) else None
    if not isinstance(claimed, str):
        raise BadSignature(
            f"spore {spore.id!r:.80} from {spore.from_agent!r:.80} carries no signature in "
            f"metadata[{SIGNATURE_FIELD!r}]; this organism accepts only spores signed with "
            f"its key")
    try:
        expected = sign(spore, key)
    except SporeError as exc:
        raise BadSignature(str(exc)) from None
    if not hmac.compare_digest(claimed.encode("utf-8", "surrogatepass"), expected.encode()):
        raise BadSignature(
            f"spore {spore.id!r:.80} from {spore.from_agent!r:.80} has a bad signature: it "
            f"was signed with another key, or changed after signing")


def signature_check(key: Key) -> Callable[[Spore], None]:
    """The ``verify=`` hook of ``validate`` that checks signatures under ``key``."""
    raw = _key_bytes(key)

    def check(spore: Spore) -> None:
        verify(spore, raw)

    return check


def _key_bytes(key: Key) -> bytes:
    raw = key.reveal() if isinstance(key, Secret) else key
    raw = raw.encode() if isinstance(raw, str) else raw
    if not raw:
        raise ValueError("the signing key is empty; an empty key would sign nothing")
    return raw
