"""Signed spores: who sent what, once.

A signature travels in ``metadata["signature"]`` (metadata is part of every wire
form, so no form needs a new field) as

    sf2:<key id>:<signed at, ms since the epoch>:<signature, base64url>

and covers, besides the spore's canonical JSON (its ``to_dict``, keys sorted, ASCII,
without the signature itself), the key id, the signing time and the broker queue
the answer is to go to (AMQP ``reply_to``, which is not part of the spore): a relay
that changes any of them must sign again, and cannot without the key.

:func:`verify` refuses, as ``bad signature``, a spore that is unsigned, signed with
an unknown or retired key, changed after signing, or whose ``from_agent`` is not the
owner of the key (an agent with a key of its own signs only its own spores, and only
it does); and, as ``replayed``, one signed outside the window. A
:class:`ReplayGuard` refuses the same signature seen twice within the window (as
JetStream's duplicate window does), remembering a bounded number of them.

Keys are ``sporeflow.config.KeySpec``: HMAC-SHA256 (the organism's shared key) or
Ed25519 (one agent's; needs the ``cryptography`` package).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from sporeflow.config.errors import SporeError
from sporeflow.config.reasons import Reason
from sporeflow.config.secrets import Secret
from sporeflow.config.signing_keys import KeySpec, SigningSpec, key_id
from sporeflow.steps.seen import SeenByTime
from sporeflow.steps.spore import Spore

__all__ = [
    "SIGNATURE_FIELD",
    "BadSignature",
    "ReplayGuard",
    "Replayed",
    "Signature",
    "as_keys",
    "sign",
    "signature_check",
    "signed",
    "signing_bytes",
    "verify",
    "verify_origin",
]

SIGNATURE_FIELD = "signature"
_VERSION = "sf2"
_MAX_TOKEN = 256  # a longer signature field is not one of ours
_STAMP = re.compile(r"0|[1-9][0-9]*")  # ms since the epoch, as str(int) writes them

Key = bytes | str | Secret | KeySpec
Keys = SigningSpec | Key


class BadSignature(SporeError):
    """A spore is unsigned, or its signature is not good for its key, sender or content."""

    reason = Reason.BAD_SIGNATURE


class Replayed(SporeError):
    """A signature outside the window, or one seen before within it."""

    reason = Reason.REPLAYED


class Signature(NamedTuple):
    """A verified signature: the key that made it, when, and its text."""

    key: KeySpec
    signed_at: float  # seconds since the epoch
    token: str


def as_keys(keys: Keys) -> SigningSpec:
    """``keys`` as a :class:`SigningSpec` (a raw key is a shared HMAC key)."""
    if isinstance(keys, SigningSpec):
        return keys
    return SigningSpec((_as_key(keys),))


def _as_key(key: Key) -> KeySpec:
    if isinstance(key, KeySpec):
        return key
    raw = key.reveal() if isinstance(key, Secret) else key
    raw = raw.encode() if isinstance(raw, str) else raw
    if not raw:
        raise ValueError("the signing key is empty; an empty key would sign nothing")
    return KeySpec(key_id("hmac-sha256", raw), "hmac-sha256", secret=Secret(raw))


def signing_bytes(spore: Spore, *, kid: str = "", signed_at: int = 0,
                  reply_queue: str = "") -> bytes:
    """The bytes a signature covers: its key id, time and reply queue, then the
    canonical JSON of ``spore`` minus its signature."""
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
    head = f"{_VERSION}\n{kid}\n{signed_at}\n{reply_queue}\n"
    return head.encode("utf-8", "surrogatepass") + text.encode("ascii")


def sign(spore: Spore, key: Keys, *, reply_queue: str = "",
         now: float | None = None) -> str:
    """The signature of ``spore`` sent by ``spore.from_agent`` with the key that signs for
    it, at ``now`` (seconds since the epoch), its answer due on ``reply_queue``."""
    keys = as_keys(key)
    chosen = keys.signer(spore.from_agent) if isinstance(spore.from_agent, str) else None
    if chosen is None or chosen.secret is None:
        raise BadSignature(
            f"this process holds no key to sign spore {spore.id!r:.80} from "
            f"{spore.from_agent!r:.80}: that agent signs with a key of its own, whose "
            f"private half only the process hosting it has")
    stamp = int((time.time() if now is None else now) * 1000)
    data = signing_bytes(spore, kid=chosen.id, signed_at=stamp, reply_queue=reply_queue)
    return f"{_VERSION}:{chosen.id}:{stamp}:{_b64(_make(chosen, data))}"


def signed(spore: Spore, key: Keys, *, reply_queue: str = "",
           now: float | None = None) -> Spore:
    """A copy of ``spore`` carrying its signature in ``metadata["signature"]``."""
    token = sign(spore, key, reply_queue=reply_queue, now=now)
    return dataclasses.replace(spore, metadata={**spore.metadata, SIGNATURE_FIELD: token})


def verify(spore: Spore, key: Keys, *, reply_queue: str = "",
           now: float | None = None) -> Signature:
    """Return the good signature of ``spore``; raise :class:`BadSignature` or
    :class:`Replayed`."""
    keys = as_keys(key)
    signature = verify_origin(spore, keys, reply_queue=reply_queue)
    age = (time.time() if now is None else now) - signature.signed_at
    if abs(age) > keys.window:
        raise Replayed(
            f"spore {spore.id!r:.80} was signed {age:.0f} s ago, outside the "
            f"{keys.window:.0f} s window (a replay, a clock out of step, or a spore "
            f"queued longer than signing.window)")
    return signature


def verify_origin(spore: Spore, key: Keys, *, reply_queue: str = "") -> Signature:
    """Return the good signature of ``spore`` whatever its age, proving who made it (what
    a dead letter's replay checks before signing it afresh); raise :class:`BadSignature`."""
    keys = as_keys(key)
    kid, stamp, raw = _parse(spore)
    chosen = keys.key(kid)
    if chosen is None:
        raise BadSignature(
            f"spore {spore.id!r:.80} from {spore.from_agent!r:.80} is signed with key "
            f"{kid!r}, which this organism does not know (retired, or never its own)")
    try:
        data = signing_bytes(spore, kid=kid, signed_at=stamp, reply_queue=reply_queue)
    except SporeError as exc:
        raise BadSignature(str(exc)) from None
    if not _good(chosen, data, raw):
        raise BadSignature(
            f"spore {spore.id!r:.80} from {spore.from_agent!r:.80} has a bad signature: it "
            f"was signed with another key, or changed after signing (its reply queue too)")
    _check_sender(spore, chosen, keys)
    return Signature(chosen, stamp / 1000, str(spore.metadata[SIGNATURE_FIELD]))


def _check_sender(spore: Spore, key: KeySpec, keys: SigningSpec) -> None:
    sender = spore.from_agent
    if key.owner is not None and sender != key.owner:
        raise BadSignature(
            f"spore {spore.id!r:.80} claims to be from {sender!r:.80} but is signed with "
            f"the key of agent {key.owner!r}")
    if key.owner is None and sender in keys.owners:
        raise BadSignature(
            f"spore {spore.id!r:.80} claims to be from {sender!r:.80}, which signs with a "
            f"key of its own, but is signed with the organism's shared key")


def _parse(spore: Spore) -> tuple[str, int, bytes]:
    metadata = spore.metadata
    token = metadata.get(SIGNATURE_FIELD) if isinstance(metadata, dict) else None
    if not isinstance(token, str):
        raise BadSignature(
            f"spore {spore.id!r:.80} from {spore.from_agent!r:.80} carries no signature in "
            f"metadata[{SIGNATURE_FIELD!r}]; this organism accepts only signed spores")
    parts = token.split(":") if len(token) <= _MAX_TOKEN else []
    # The time as a signer writes it, str(int): another way of writing the same number
    # (a leading 0, another script's digits) would be a new token to the replay guard.
    if len(parts) != 4 or parts[0] != _VERSION or not _STAMP.fullmatch(parts[2]):
        raise BadSignature(
            f"spore {spore.id!r:.80} from {spore.from_agent!r:.80} carries a signature "
            f"that is not of the form {_VERSION}:<key id>:<time>:<signature>")
    text = parts[3]
    try:  # strictly: a character out of the alphabet is no signature, not one skipped
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    # Only the one way of writing it: another (junk, spare bits) would be a new token to
    # the replay guard, which remembers tokens, for a signature it has seen.
    if not raw or _b64(raw) != text:
        raise BadSignature(f"spore {spore.id!r:.80} carries a signature that is not "
                           f"unpadded URL-safe base64 as a signer writes it")
    return parts[1], int(parts[2]), raw


def _make(key: KeySpec, data: bytes) -> bytes:
    assert key.secret is not None
    if key.algorithm == "hmac-sha256":
        return hmac.new(key.secret.reveal(), data, hashlib.sha256).digest()
    signature: bytes = _private(key.secret.reveal()).sign(data)
    return signature


def _good(key: KeySpec, data: bytes, signature: bytes) -> bool:
    if key.algorithm == "hmac-sha256":
        assert key.secret is not None
        expected = hmac.new(key.secret.reveal(), data, hashlib.sha256).digest()
        return hmac.compare_digest(signature, expected)
    from cryptography.exceptions import InvalidSignature
    assert key.public is not None
    try:
        _public(key.public).verify(signature, data)
    except InvalidSignature:
        return False
    return True


@functools.lru_cache(maxsize=256)
def _private(raw: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    return ed25519.Ed25519PrivateKey.from_private_bytes(raw)


@functools.lru_cache(maxsize=1024)
def _public(raw: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class ReplayGuard:
    """Refuses a signature seen before within the window, per scope (the queue it came
    from: a broadcast reaches each subscriber's queue once).

    At most ``max_seen`` signatures are remembered; when one is forgotten early to stay
    within that bound, every signature at least as old is refused from then on, so a
    replay is never let through for want of memory (the window only shrinks).
    """

    def __init__(self, window: float, max_seen: int) -> None:
        self.window = window
        self.max_seen = max_seen
        self._seen = SeenByTime(window, max_seen)  # digest -> signed at
        self._forgotten_up_to = 0.0  # signatures this old or older may have been seen
        self.refused = 0

    def check(self, scope: str, signature: Signature, *, now: float | None = None) -> None:
        """Remember ``signature``; raise :class:`Replayed` when it was seen before."""
        now = time.time() if now is None else now
        digest = self._digest(scope, signature, now)
        if digest in self._seen or signature.signed_at <= self._forgotten_up_to:
            self.refused += 1
            raise Replayed(f"signature {signature.token[:40]}... was seen before within the "
                           f"{self.window:.0f} s window on {scope!r}: a replay")
        self._remember(digest, signature, now)

    def note(self, scope: str, signature: Signature, *, now: float | None = None) -> None:
        """Remember ``signature`` without refusing it: a broker's redelivery of what this
        process may have seen (a copy published again afterwards is still refused)."""
        now = time.time() if now is None else now
        self._remember(self._digest(scope, signature, now), signature, now)

    def _digest(self, scope: str, signature: Signature, now: float) -> int:
        self._seen.forget(now)
        return int.from_bytes(hashlib.blake2b(
            f"{scope}\0{signature.token}".encode("utf-8", "surrogatepass"),
            digest_size=8).digest(), "big")

    def _remember(self, digest: int, signature: Signature, now: float) -> None:
        dropped = self._seen.add(digest, signature.signed_at)
        if dropped is not None:  # the oldest time kept: one dated ahead is dropped last
            self._forgotten_up_to = max(self._forgotten_up_to, dropped)

    def __len__(self) -> int:
        return len(self._seen)


def signature_check(key: Keys) -> Callable[[Spore], None]:
    """The ``verify=`` hook of ``validate`` that checks signatures under ``key`` (no replay
    memory: the broker bridge adds that)."""
    keys = as_keys(key)

    def check(spore: Spore) -> None:
        verify(spore, keys)

    return check
