"""Signing spores: sign, verify, windows and replays, keys of agents, rotation, the validate
hook, and the keys from the environment."""

from __future__ import annotations

import base64
import dataclasses
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sporeflow.config import ConfigError, Limits, Secret, organism_from_dict
from sporeflow.config.signing_keys import SigningSpec
from sporeflow.pipeline.broker.amqp_codec import spore_from_amqp, spore_to_amqp
from sporeflow.steps import (
    SIGNATURE_FIELD,
    BadSignature,
    Replayed,
    ReplayGuard,
    Spore,
    SporeType,
    sign,
    signature_check,
    signed,
    signing_bytes,
    validate,
    verify,
)
from sporeflow.steps.signing import Signature, as_keys

from .conftest import aiter_of, collect

KEY = b"0123456789abcdef-signing-key"
SPORE = Spore(knowledge={"n": 7, "text": "héllo", "nested": {"a": [1, 2.5, None]}},
              spore_type=SporeType.REQUEST, from_agent="asker", to_agent="squarer",
              expires_at=datetime(2030, 1, 1, tzinfo=UTC), metadata={"kind": "q"},
              knowledge_references=("doc-1",), created_at=datetime(2026, 1, 1, tzinfo=UTC))


def test_signature_names_its_key_and_time_and_is_kept_in_metadata() -> None:
    signature = sign(SPORE, KEY, now=1_800_000_000.25)
    assert re.fullmatch(r"sf2:h[0-9a-f]{16}:1800000000250:[A-Za-z0-9_-]{43}", signature)
    stamped = signed(SPORE, KEY, now=1_800_000_000.25)
    assert stamped.metadata == {"kind": "q", SIGNATURE_FIELD: signature}
    # The key may be bytes, text or a Secret: the same key, the same signature.
    assert sign(SPORE, KEY.decode(), now=1.0) == sign(SPORE, Secret(KEY), now=1.0)
    assert sign(SPORE, b"another key", now=1.0) != sign(SPORE, KEY, now=1.0)


def test_the_signature_does_not_cover_itself() -> None:
    assert signing_bytes(signed(SPORE, KEY)) == signing_bytes(SPORE)
    verify(signed(signed(SPORE, KEY), KEY), KEY)  # a signature over a signature is replaced


def test_signed_spore_verifies_after_every_wire_form() -> None:
    stamped = signed(SPORE, KEY)
    verify(stamped, KEY)
    verify(Spore.from_json(stamped.to_json()), KEY)
    verify(Spore.from_xml(stamped.to_xml()), KEY)
    body, headers, _ = spore_to_amqp(stamped)
    verify(spore_from_amqp(body, headers), KEY)


@pytest.mark.parametrize(
    "change",
    [
        {"knowledge": {**SPORE.knowledge, "n": 8}},
        {"to_agent": "someone-else"},
        {"from_agent": "impostor"},
        {"priority": 10},
        {"hops": 1},
        {"expires_at": datetime(2031, 1, 1, tzinfo=UTC)},
        {"created_at": SPORE.created_at + timedelta(microseconds=1)},
        {"knowledge_references": ("doc-2",)},
    ],
)
def test_any_change_after_signing_is_a_bad_signature(change: dict[str, Any]) -> None:
    tampered = dataclasses.replace(signed(SPORE, KEY), **change)
    with pytest.raises(BadSignature, match="has a bad signature: it was signed with another "
                                           "key, or changed after signing") as caught:
        verify(tampered, KEY)
    assert caught.value.reason == "bad signature"


def test_unsigned_and_wrongly_keyed_spores_are_refused() -> None:
    with pytest.raises(BadSignature, match=r"carries no signature in metadata\['signature'\]"):
        verify(SPORE, KEY)
    with pytest.raises(BadSignature, match="which this organism does not know"):
        verify(signed(SPORE, b"not the key"), KEY)
    forged = dataclasses.replace(SPORE, metadata={SIGNATURE_FIELD: "hmac-sha256:" + "0" * 64})
    with pytest.raises(BadSignature):
        verify(forged, KEY)
    odd = dataclasses.replace(SPORE, metadata={SIGNATURE_FIELD: "\ud800 not ascii ✓"})
    with pytest.raises(BadSignature):
        verify(odd, KEY)
    with pytest.raises(BadSignature, match="carries no signature"):
        verify(dataclasses.replace(SPORE, metadata={SIGNATURE_FIELD: 42}), KEY)


def test_a_spore_without_canonical_json_cannot_be_verified() -> None:
    broken = dataclasses.replace(signed(SPORE, KEY), knowledge={"f": float("nan")})
    with pytest.raises(BadSignature, match="no canonical JSON form"):
        verify(broken, KEY)


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="the signing key is empty"):
        sign(SPORE, b"")


async def test_validate_verify_hook_dead_letters_bad_signatures() -> None:
    good = signed(SPORE, KEY)
    unsigned = SPORE
    tampered = dataclasses.replace(good, knowledge={"n": 0})
    rejected: list[tuple[Spore, str, Any]] = []
    out = await collect(validate.raw(
        aiter_of([good, unsigned], [tampered]), limits=Limits(),
        on_reject=lambda spore, reason, error: rejected.append((spore, reason, error)),
        verify=signature_check(Secret(KEY))))
    assert out == [[good]]
    assert [(spore, reason) for spore, reason, _ in rejected] == [
        (unsigned, "bad signature"), (tampered, "bad signature")]
    assert all(isinstance(error, BadSignature) for _, _, error in rejected)


async def test_validate_without_verify_takes_unsigned_spores() -> None:
    out = await collect(validate.raw(aiter_of([SPORE]), limits=Limits(),
                                     on_reject=lambda *args: None))
    assert out == [[SPORE]]


# -- the key in the organism file ------------------------------------------------------------


def agents() -> dict[str, Any]:
    async def handler(spore: Spore, ctx: Any) -> None:
        return None

    return {"a": {"handler": handler}}


def test_signing_key_comes_from_the_named_environment_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOREFLOW_TEST_KEY", "k3y-from-the-env")
    spec = organism_from_dict({"organism": {"signing_key_env": "SPOREFLOW_TEST_KEY"},
                               "agents": agents()})
    assert spec.signing_key_env == "SPOREFLOW_TEST_KEY"
    assert spec.signing_key is not None
    assert spec.signing_key.reveal() == b"k3y-from-the-env"
    assert "k3y-from-the-env" not in repr(spec)
    assert "k3y-from-the-env" not in repr(spec.signing_key)
    assert str(spec.signing_key) == "***"
    verify(signed(SPORE, spec.signing_key), b"k3y-from-the-env")


def test_without_signing_key_env_spores_are_unsigned() -> None:
    spec = organism_from_dict({"agents": agents()})
    assert (spec.signing_key_env, spec.signing_key) == (None, None)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "environment variable 'SPOREFLOW_TEST_KEY' is not set; export it with the key"),
        ("  ", "environment variable 'SPOREFLOW_TEST_KEY' is empty; put the key in it"),
    ],
)
def test_a_missing_or_empty_key_variable_is_a_located_config_error(
        monkeypatch: pytest.MonkeyPatch, value: str | None, message: str) -> None:
    if value is None:
        monkeypatch.delenv("SPOREFLOW_TEST_KEY", raising=False)
    else:
        monkeypatch.setenv("SPOREFLOW_TEST_KEY", value)
    with pytest.raises(ConfigError) as caught:
        organism_from_dict({"organism": {"signing_key_env": "SPOREFLOW_TEST_KEY"},
                            "agents": agents()})
    [problem] = caught.value.problems
    assert (problem.path, problem.message) == ("organism.signing_key_env", message)


def test_signing_key_env_must_be_a_variable_name() -> None:
    with pytest.raises(ConfigError) as caught:
        organism_from_dict({"organism": {"signing_key_env": "NOT A NAME"},
                            "agents": agents()})
    assert [p.message for p in caught.value.problems] == [
        "'NOT A NAME' is not an environment variable name; use letters, digits and '_'"]


# -- issue 17: signatures that prove who sent what, once ------------------------------------


def ed25519_pair() -> tuple[str, str]:
    """A fresh key pair as organism.yaml and the environment hold it: (public, private)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    private = ed25519.Ed25519PrivateKey.generate()
    return (base64.b64encode(private.public_key().public_bytes_raw()).decode(),
            base64.b64encode(private.private_bytes_raw()).decode())


def test_the_reply_queue_is_signed_too() -> None:
    stamped = signed(SPORE, KEY, reply_queue="amq.gen-asker")
    verify(stamped, KEY, reply_queue="amq.gen-asker")
    with pytest.raises(BadSignature, match=r"changed after signing \(its reply queue too\)"):
        verify(stamped, KEY, reply_queue="amq.gen-attacker")


def test_a_signature_outside_the_window_is_refused_as_replayed() -> None:
    keys = as_keys(KEY)
    assert keys.window == 300  # the default: 5 minutes
    stamped = signed(SPORE, KEY, now=10_000.0)
    verify(stamped, keys, now=10_000.0 + 299)
    for late in (10_000.0 + 301, 10_000.0 - 301):  # too old, or from a clock far ahead
        with pytest.raises(Replayed, match="outside the 300 s window") as caught:
            verify(stamped, keys, now=late)
        assert caught.value.reason == "replayed"


def test_the_replay_guard_refuses_a_signature_seen_within_the_window() -> None:
    guard = ReplayGuard(window=300, max_seen=1000)
    first = verify(signed(SPORE, KEY, now=50.0), KEY, now=50.0)
    guard.check("vault", first, now=50.0)
    guard.check("archive", first, now=50.0)  # the same broadcast in another agent's queue
    with pytest.raises(Replayed, match="seen before within the 300 s window on 'vault'"):
        guard.check("vault", first, now=60.0)
    # The same spore signed again (a retry, a dlq replay) is a new signature, not a replay.
    again = verify(signed(SPORE, KEY, now=61.0), KEY, now=61.0)
    guard.check("vault", again, now=61.0)
    assert guard.refused == 1


def test_the_replay_guard_stays_bounded_and_never_forgets_into_a_hole() -> None:
    guard = ReplayGuard(window=300, max_seen=1000)
    times = [100.0 + i / 10 for i in range(1500)]  # 1,500 signatures within 150 s
    signatures = [verify(signed(dataclasses.replace(SPORE, id=f"s{i}"), KEY, now=at), KEY,
                         now=at) for i, at in enumerate(times)]
    for signature, at in zip(signatures, times, strict=True):
        guard.check("q", signature, now=at)
        assert len(guard) <= 1000
    # The first 500 were forgotten early, inside the window: each is still refused.
    with pytest.raises(Replayed):
        guard.check("q", signatures[10], now=times[-1])
    # Past the window everything is forgotten by time, not by count.
    guard.check("q", verify(signed(SPORE, KEY, now=5000.0), KEY, now=5000.0), now=5000.0)
    assert len(guard) == 1


def test_an_agent_key_signs_only_its_agent_and_only_it_signs_that_agent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    public, private = ed25519_pair()
    monkeypatch.setenv("SPOREFLOW_TEST_KEY", "shared-" + "k" * 24)
    monkeypatch.setenv("ASKER_KEY", private)
    spec = organism_from_dict({
        "organism": {"signing": {"key_env": "SPOREFLOW_TEST_KEY",
                                 "agents": {"asker": {"public_key": public,
                                                      "private_key_env": "ASKER_KEY"}}}},
        "agents": {"asker": agents()["a"], "squarer": agents()["a"]}})
    keys = spec.signing
    assert keys is not None
    assert keys.owners == {"asker"}
    own = signed(SPORE, keys)  # from asker: its own Ed25519 key
    assert verify(own, keys).key.owner == "asker"
    assert own.metadata[SIGNATURE_FIELD].split(":")[1].startswith("e")
    # asker's key used for a spore claiming to be from squarer.
    stolen = dataclasses.replace(keys.keys[-1], owner=None)
    forged = signed(dataclasses.replace(SPORE, from_agent="squarer"),
                    as_keys(stolen))
    with pytest.raises(BadSignature, match="claims to be from 'squarer' but is signed with "
                                           "the key of agent 'asker'"):
        verify(forged, keys)
    # The shared key used for a spore claiming to be from asker.
    shared = [key for key in keys.keys if key.owner is None]
    posing = signed(SPORE, SigningSpec(tuple(shared)))
    with pytest.raises(BadSignature, match="which signs with a key of its own, but is signed "
                                           "with the organism's shared key"):
        verify(posing, keys)
    # A process without asker's private key cannot sign for asker at all.
    monkeypatch.delenv("ASKER_KEY")
    elsewhere = organism_from_dict({
        "organism": {"signing": {"key_env": "SPOREFLOW_TEST_KEY",
                                 "agents": {"asker": {"public_key": public,
                                                      "private_key_env": "ASKER_KEY"}}}},
        "agents": {"asker": agents()["a"], "squarer": agents()["a"]}}).signing
    assert elsewhere is not None
    with pytest.raises(BadSignature, match="holds no key to sign spore"):
        signed(SPORE, elsewhere)
    verify(own, elsewhere)  # but it verifies asker's spores with the public key


def test_rotation_accepts_a_second_key_and_refuses_a_retired_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY_ONE", "one-" + "1" * 28)
    monkeypatch.setenv("KEY_TWO", "two-" + "2" * 28)

    def keys(**signing: str) -> SigningSpec:
        made = organism_from_dict({"organism": {"signing": signing}, "agents": agents()})
        assert made.signing is not None
        return made.signing

    old, step, new = (keys(key_env="KEY_ONE"), keys(key_env="KEY_ONE", accept_key_env="KEY_TWO"),
                      keys(key_env="KEY_TWO", accept_key_env="KEY_ONE"))
    final = keys(key_env="KEY_TWO")
    # Every pair of neighbouring phases understands each other both ways.
    for a, b in ((old, step), (step, new), (new, final)):
        verify(signed(SPORE, a), b)
        verify(signed(SPORE, b), a)
    with pytest.raises(BadSignature, match="signed with key 'h[0-9a-f]{16}', which this "
                                           "organism does not know"):
        verify(signed(SPORE, old), final)  # KEY_ONE is retired


def test_signing_config_mistakes_are_located(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOREFLOW_TEST_KEY", "k" * 32)
    monkeypatch.setenv("A_KEY", "not-a-key")
    with pytest.raises(ConfigError) as caught:
        organism_from_dict({"organism": {"signing_key_env": "SPOREFLOW_TEST_KEY", "signing": {
            "key_env": "SPOREFLOW_TEST_KEY", "window": "soon",
            "agents": {"ghost": {"public_key": "A" * 43 + "="},
                       "a": {"public_key": "A" * 43 + "=", "private_key_env": "A_KEY"}}}},
            "agents": agents()})
    found = {(p.path, p.message) for p in caught.value.problems}
    assert ("organism.signing_key_env",
            "signing_key_env and signing.key_env both name the key; keep one") in found
    assert ("organism.signing.window",
            "duration 'soon' is not understood; write it like 250ms, 5s or 2m") in found
    assert ("organism.signing.agents.ghost", "signing.agents names 'ghost', which is no "
            "agent of this organism; its agents are ['a']") in found
    assert ("organism.signing.agents.a.private_key_env", "private_key_env is not a base64 "
            "Ed25519 key of 32 bytes; make a key pair with `sporeflow keygen`") in found


@pytest.mark.parametrize("key", ["mU2abc", "A" * 42 + "!=", "A" * 44 + "="],
                         ids=["short", "not-base64", "long"])
def test_a_bad_public_key_is_not_called_a_bad_name(monkeypatch: pytest.MonkeyPatch,
                                                   key: str) -> None:
    # One problem, the key's own: not also the rule of names, whose fix leads nowhere.
    monkeypatch.setenv("SPOREFLOW_TEST_KEY", "k" * 32)
    with pytest.raises(ConfigError) as caught:
        organism_from_dict({"organism": {"signing": {
            "key_env": "SPOREFLOW_TEST_KEY", "agents": {"a": {"public_key": key}}}},
            "agents": agents()})
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("organism.signing.agents.a.public_key", "public_key is not a base64 Ed25519 key of "
         "32 bytes; make a key pair with `sporeflow keygen`")]


def test_a_private_key_that_does_not_match_is_refused_without_showing_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    public, _ = ed25519_pair()
    _, other = ed25519_pair()
    monkeypatch.setenv("SPOREFLOW_TEST_KEY", "k" * 32)
    monkeypatch.setenv("A_KEY", other)
    with pytest.raises(ConfigError) as caught:
        organism_from_dict({"organism": {"signing": {
            "key_env": "SPOREFLOW_TEST_KEY",
            "agents": {"a": {"public_key": public, "private_key_env": "A_KEY"}}}},
            "agents": agents()})
    [problem] = caught.value.problems
    assert problem.message == ("$A_KEY holds a private key that does not match a's "
                               "public_key; put the key pair's private half in it")
    assert other not in str(caught.value)


def verified(spore_id: str, *, signed_at: float, now: float) -> Signature:
    """SPORE as ``spore_id``, signed at ``signed_at``, verified at ``now``."""
    return verify(signed(dataclasses.replace(SPORE, id=spore_id), KEY, now=signed_at), KEY,
                  now=now)


def test_one_signature_dated_ahead_never_makes_the_guard_refuse_honest_ones() -> None:
    # Found by an attacker: the guard forgets in the order it was told; one signature
    # stamped 299 s ahead held the front, was the one dropped at the cap, and its time
    # became the bound below which all were refused: every honest spore for 5 minutes.
    guard = ReplayGuard(window=300, max_seen=1000)
    t0 = 1_000_000.0
    ahead = verified("ahead", signed_at=t0 + 299, now=t0)
    guard.check("vault", ahead, now=t0)
    refused = 0
    for i in range(3000):  # honest traffic, 10 a second, each signed as it is sent
        now = t0 + i / 10
        honest = verified(f"h{i}", signed_at=now, now=now)
        try:
            guard.check("vault", honest, now=now)
        except Replayed:
            refused += 1
    assert refused == 0


def test_a_signature_is_read_only_as_its_signer_wrote_it() -> None:
    # Found by an attacker: base64 read leniently took 'SIG!' (or spare bits set) for
    # 'SIG', a new token to the replay guard for the same signature.
    stamped = signed(SPORE, KEY, now=50.0)
    token = stamped.metadata["signature"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = alphabet[alphabet.index(token[-1]) ^ 1]  # 32 bytes: the last 2 bits are spare
    for changed in (token + "!", token + ".", token + "=", token[:-1] + spare):
        altered = dataclasses.replace(stamped, metadata={**stamped.metadata,
                                                          "signature": changed})
        with pytest.raises(BadSignature):
            verify(altered, KEY, now=50.0)
    verify(stamped, KEY, now=50.0)  # as written: good


def test_a_signing_time_is_read_only_as_its_signer_wrote_it() -> None:
    # Found by an attacker: the time was read by int(), so '01800...' or the same digits
    # in another script (Arabic-Indic, full-width) verified as the same signature but
    # were new tokens to the replay guard: a captured spore replayed at will.
    stamped = signed(SPORE, KEY, now=50.0)
    version, kid, stamp, mac = stamped.metadata["signature"].split(":")
    guard = ReplayGuard(window=300, max_seen=1000)
    guard.check("vault", verify(stamped, KEY, now=50.0), now=50.0)
    for written in ("0" + stamp, "00" + stamp, "+" + stamp, " " + stamp,
                    "".join(chr(0x660 + int(c)) for c in stamp),
                    "".join(chr(0xFF10 + int(c)) for c in stamp)):
        altered = dataclasses.replace(stamped, metadata={
            **stamped.metadata, "signature": f"{version}:{kid}:{written}:{mac}"})
        with pytest.raises(BadSignature, match="not of the form"):
            verify(altered, KEY, now=51.0)
    zero = signed(SPORE, KEY, now=0.0)  # time 0 is written "0", and read back
    verify(zero, KEY, now=1.0)


def test_a_signature_dated_ahead_and_forgotten_early_is_still_refused_when_replayed() -> None:
    # Found in review of the fix above: bounding at now let a copy of the signature
    # dated ahead, once forgotten, through; the guard forgets by signature time now.
    guard = ReplayGuard(window=300, max_seen=2)
    t0 = 1_000_000.0
    ahead = verified("ahead", signed_at=t0 + 200, now=t0)
    guard.check("vault", ahead, now=t0)
    for i in range(2):  # honest traffic fills the guard
        honest = verified(f"h{i}", signed_at=t0, now=t0)
        guard.check("vault", honest, now=t0)
    with pytest.raises(Replayed):
        guard.check("vault", ahead, now=t0 + 1)
