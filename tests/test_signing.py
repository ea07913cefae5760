"""HMAC signing of spores: sign, verify, the validate hook, and the key from the environment."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sporeflow.config import ConfigError, Limits, Secret, organism_from_dict
from sporeflow.pipeline.broker.amqp_codec import spore_from_amqp, spore_to_amqp
from sporeflow.steps import (
    SIGNATURE_FIELD,
    BadSignature,
    Spore,
    SporeType,
    sign,
    signature_check,
    signed,
    signing_bytes,
    validate,
    verify,
)

from .conftest import aiter_of, collect

KEY = b"0123456789abcdef-signing-key"
SPORE = Spore(knowledge={"n": 7, "text": "héllo", "nested": {"a": [1, 2.5, None]}},
              spore_type=SporeType.REQUEST, from_agent="asker", to_agent="squarer",
              expires_at=datetime(2030, 1, 1, tzinfo=UTC), metadata={"kind": "q"},
              knowledge_references=("doc-1",), created_at=datetime(2026, 1, 1, tzinfo=UTC))


def test_signature_is_hmac_sha256_hex_kept_in_metadata() -> None:
    signature = sign(SPORE, KEY)
    assert re.fullmatch(r"hmac-sha256:[0-9a-f]{64}", signature)
    stamped = signed(SPORE, KEY)
    assert stamped.metadata == {"kind": "q", SIGNATURE_FIELD: signature}
    assert SPORE.metadata == {"kind": "q"}  # the original is untouched
    assert sign(SPORE, KEY.decode()) == signature == sign(SPORE, Secret(KEY))
    assert sign(SPORE, b"another key") != signature


def test_the_signature_does_not_cover_itself() -> None:
    assert signing_bytes(signed(SPORE, KEY)) == signing_bytes(SPORE)
    verify(signed(signed(SPORE, KEY), KEY), KEY)  # re-signing gives the same signature


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
    with pytest.raises(BadSignature, match="bad signature"):
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
