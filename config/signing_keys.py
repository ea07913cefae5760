"""The keys that sign spores on the broker, as declared in ``organism.signing``.

    organism:
      signing:
        key_env: SPOREFLOW_KEY            # HMAC-SHA256, the organism's shared key
        accept_key_env: SPOREFLOW_KEY_2   # also accepted, never used to sign (rotation)
        window: 5m                        # a signature older (or newer) than this is refused
        accept_unsigned_from: [pr]        # external agents whose unsigned spores pass
        agents:                           # Ed25519 keys of single agents (sporeflow[signing])
          vault:
            public_key: <base64 of the 32-byte public key>
            private_key_env: VAULT_KEY    # needed only by the process hosting vault

``signing_key_env: NAME`` is short for ``signing: {key_env: NAME}``.

Every key has an id derived from its material (``h...`` for HMAC, ``e...`` for
Ed25519), so two processes with the same key agree on its id without configuring one,
and a signature names the key that made it. A key of one agent signs only that agent's
spores; the shared key signs the others (outside senders, agents with no key of their
own). The signing itself is in ``sporeflow.steps.signing``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sporeflow.config.extras import extra_hint
from sporeflow.config.secrets import ENV_NAME_PATTERN, Secret, read_secret_env
from sporeflow.config.units import parse_duration

__all__ = [
    "DEFAULT_MAX_SEEN",
    "DEFAULT_WINDOW",
    "SIGNING_SCHEMA",
    "KeySpec",
    "SigningSpec",
    "key_id",
    "read_signing",
]

DEFAULT_WINDOW = 300.0  # seconds; JetStream's duplicate window is 2 minutes
DEFAULT_MAX_SEEN = 500_000  # signatures remembered against replays, per process
SIGNING_EXTRA_HINT = extra_hint("signing")
_ED25519_BYTES = 32

Algorithm = Literal["hmac-sha256", "ed25519"]
Problem = Callable[[tuple[str | int, ...], str], None]


def key_id(algorithm: Algorithm, material: bytes) -> str:
    """The public id of a key: a digest of its material (the public key for Ed25519)."""
    prefix = "h" if algorithm == "hmac-sha256" else "e"
    return prefix + hashlib.sha256(b"sporeflow key id\0" + material).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One key: HMAC (``secret`` is the key) or Ed25519 (``public``; ``secret`` is the
    private key, present only where its agent is hosted)."""

    id: str
    algorithm: Algorithm
    owner: str | None = None  # the agent whose spores it signs; None: the shared key
    current: bool = True  # signs; an accepted key only verifies
    secret: Secret | None = field(default=None, repr=False)
    public: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SigningSpec:
    """The organism's keys and the replay rules."""

    keys: tuple[KeySpec, ...]
    window: float = DEFAULT_WINDOW
    max_seen: int = DEFAULT_MAX_SEEN
    # External agents (a Praval agent signs nothing) whose unsigned spores are accepted:
    # a spore claiming one of these senders is taken on the broker's word alone.
    unsigned_from: frozenset[str] = frozenset()
    _by_id: Mapping[str, KeySpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {key.id: key for key in self.keys})

    def key(self, kid: str) -> KeySpec | None:
        """The key with id ``kid``, signing or accepted (None: unknown or retired)."""
        return self._by_id.get(kid)

    @property
    def owners(self) -> frozenset[str]:
        """The agents that sign with a key of their own."""
        return frozenset(key.owner for key in self.keys if key.owner is not None)

    def signer(self, sender: str) -> KeySpec | None:
        """The key that signs ``sender``'s spores here (None: this process holds none)."""
        owned = sender in self.owners
        for key in self.keys:
            if key.current and key.secret is not None and (key.owner == sender if owned
                                                           else key.owner is None):
                return key
        return None

    @property
    def shared_key(self) -> Secret | None:
        """The current shared HMAC key."""
        return next((key.secret for key in self.keys
                     if key.owner is None and key.current), None)

    def secrets(self) -> list[Secret]:
        """Every secret held, to be masked in all output."""
        return [key.secret for key in self.keys if key.secret is not None]


def _key_env(description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": ENV_NAME_PATTERN,
            "description": description}


# The pattern is for editors (`sporeflow schema`); the loader reports a bad key once,
# by _decode_key's own message ("x-checked-by").
_BASE64 = {"type": "string", "pattern": r"^[A-Za-z0-9+/_-]{43}=?$",
           "x-checked-by": "config.signing_keys",
           "description": "the raw 32-byte Ed25519 public key, base64"}
SIGNING_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "description": "sign spores on the broker and refuse unsigned, forged or replayed ones",
    "properties": {
        "key_env": _key_env("environment variable holding the shared HMAC key"),
        "accept_key_env": _key_env("variable holding a second shared key, accepted but "
                                   "never used to sign: the next key while processes "
                                   "move to it, then the previous one"),
        "window": {"oneOf": [{"type": "number", "minimum": 1, "maximum": 7 * 24 * 3600},
                             {"type": "string"}],
                   "x-write": "a duration like 5m: signatures older than this are refused"},
        "accept_unsigned_from": {
            "type": "array", "uniqueItems": True, "items": {"type": "string"},
            "description": "external agents (agents: {x: {external: praval}}) whose "
                           "unsigned spores are accepted; anyone who may publish on the "
                           "exchange can claim to be one of them"},
        "max_seen": {"type": "integer", "minimum": 1000,
                     "description": "signatures remembered against replays in one process"},
        "agents": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": False, "required": ["public_key"],
            "properties": {
                "public_key": _BASE64,
                "accept_public_key": _BASE64,
                "private_key_env": _key_env("variable holding this agent's private key "
                                            "(base64), where the agent is hosted"),
            }}},
    },
}


def read_signing(organism: Mapping[str, Any], agents: Iterable[str], problem: Problem, *,
                 external: Iterable[str] = (), unset: Problem | None = None
                 ) -> SigningSpec | None:
    """The signing keys ``organism`` declares (None: unsigned); each mistake is reported
    through ``problem(path, message)``. ``unset``: where a shared key's variable unset or
    empty is told instead, its key left out (for a command that signs nothing)."""
    conf = organism.get("signing")
    short = organism.get("signing_key_env")
    if conf is None and short is None:
        return None
    conf = dict(conf) if isinstance(conf, dict) else {}
    paths: dict[str, tuple[str | int, ...]] = {
        name: ("organism", "signing", name) for name in ("key_env", "accept_key_env")}
    if short is not None:
        if "key_env" in conf:
            problem(("organism", "signing_key_env"),
                    "signing_key_env and signing.key_env both name the key; keep one")
        conf["key_env"], paths["key_env"] = short, ("organism", "signing_key_env")
    keys: list[KeySpec] = []
    for name, current in (("key_env", True), ("accept_key_env", False)):
        env = conf.get(name)
        if isinstance(env, str) and env.isidentifier():  # else the schema reported it
            secret = _secret(env, paths[name], problem, unset)
            if secret is not None:
                keys.append(KeySpec(key_id("hmac-sha256", secret.reveal()), "hmac-sha256",
                                    current=current, secret=secret))
    if "key_env" not in conf:
        problem(("organism", "signing"), "signing needs key_env: the shared key signs the "
                "spores of outside senders and of agents without a key of their own")
    known = set(agents)
    for agent, entry in (conf.get("agents") or {}).items():
        where = ("organism", "signing", "agents", agent)
        if agent not in known:
            problem(where, f"signing.agents names {agent!r}, which is no agent of this "
                           f"organism; its agents are {sorted(known)!r}")
            continue
        if isinstance(entry, dict):
            keys += _agent_keys(agent, entry, where, problem)
    try:
        window = parse_duration(conf.get("window", DEFAULT_WINDOW))
    except ValueError as exc:
        problem(("organism", "signing", "window"), str(exc))
        window = DEFAULT_WINDOW
    return SigningSpec(tuple(keys), window=window,
                       max_seen=int(conf.get("max_seen", DEFAULT_MAX_SEEN)),
                       unsigned_from=_unsigned_from(conf, set(external), problem))


def _unsigned_from(conf: Mapping[str, Any], external: set[str],
                   problem: Problem) -> frozenset[str]:
    """The external agents whose unsigned spores pass: only those (an agent of ours signs)."""
    named = conf.get("accept_unsigned_from") or []
    accepted = set()
    for i, name in enumerate(named if isinstance(named, list) else []):
        if name in external:
            accepted.add(name)
        elif isinstance(name, str):  # else the schema reported it
            problem(("organism", "signing", "accept_unsigned_from", i),
                    f"{name!r} is no external agent of this organism; only those may send "
                    f"unsigned spores (declare it under agents: as {{{name}: {{external: "
                    f"praval}}}}); its external agents are {sorted(external)!r}")
    return frozenset(accepted)


def _secret(env: str, where: tuple[str | int, ...], problem: Problem,
            unset: Problem | None = None) -> Secret | None:
    try:
        return read_secret_env(env)
    except LookupError as exc:
        if unset is None:
            problem(where, str(exc))
        else:
            unset(where, f"{exc} before a command that signs spores (run, send, dlq "
                         f"replay); this one signs none")
        return None


def _agent_keys(agent: str, entry: Mapping[str, Any], where: tuple[str | int, ...],
                problem: Problem) -> list[KeySpec]:
    """An agent's Ed25519 keys: the current public key (with the private key when its
    variable is set here) and the accepted public key."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        problem(where, f"Ed25519 keys need the cryptography package: {SIGNING_EXTRA_HINT}")
        return []
    keys = []
    for name, current in (("public_key", True), ("accept_public_key", False)):
        raw = _decode_key(entry.get(name), (*where, name), problem)
        if raw is None:
            continue
        keys.append(KeySpec(key_id("ed25519", raw), "ed25519", owner=agent, current=current,
                            public=raw))
    env = entry.get("private_key_env")
    # Unset here: this process does not host the agent (checked when it is hosted).
    if isinstance(env, str) and os.environ.get(env) and keys and keys[0].current:
        text = os.environ[env].strip()
        raw = _decode_key(text, (*where, "private_key_env"), problem)
        if raw is not None:
            public = ed25519.Ed25519PrivateKey.from_private_bytes(raw).public_key()
            if public.public_bytes_raw() != keys[0].public:
                problem((*where, "private_key_env"),
                        f"${env} holds a private key that does not match {agent}'s "
                        f"public_key; put the key pair's private half in it")
            else:
                keys[0] = dataclasses.replace(keys[0], secret=Secret(raw, source=f"${env}"))
    return keys


def _decode_key(text: Any, where: tuple[str | int, ...], problem: Problem) -> bytes | None:
    if not isinstance(text, str):
        return None
    text = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:  # strict: a character outside base64 is a mistake, not something to skip
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _ED25519_BYTES:
        problem(where, f"{where[-1]} is not a base64 Ed25519 key of {_ED25519_BYTES} bytes; "
                       f"make a key pair with `sporeflow keygen`")
        return None
    return raw

