"""HTTP ingress: an ``http`` source serving POST /spores, POST /requests, its OpenAPI
document and /healthz, through the organism's public API, behind a bearer token.

The last tests fuzz it with schemathesis from its own OpenAPI document, against a real
server on 127.0.0.1 (port 0): no input gets a 5xx, and every answer is as documented.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sporeflow.pipeline import Organism, Spore

TOKEN = "test-token-of-the-ingress"
TOKEN_ENV = "SPOREFLOW_TEST_INGRESS_TOKEN"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BACKSTOP = 10.0


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def organism_with_api(tmp_path: Path, agents: dict[str, Any], **api: Any) -> Organism:
    (tmp_path / "needs_n.json").write_text(json.dumps({
        "type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}))
    limits = api.pop("limits", {})
    return Organism.from_dict({
        "channels": {"news": {}, "quiet": {}, "locked": {"publish": ["echo"]}},
        "agents": {"echo": {"handler": echo, "subscribe": ["news"]},
                   "strict": {"handler": echo, "schema": "needs_n.json"}, **agents},
        "limits": limits,
        "sources": {"api": {"kind": "http", "port": 0, "token_env": TOKEN_ENV, **api}},
    }, base_dir=tmp_path)


async def echo(spore: Spore, ctx: Any) -> dict[str, Any]:
    return {"echo": spore.knowledge}


@asynccontextmanager
async def serving(organism: Organism) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    async with organism.running(drain_timeout=BACKSTOP), aiohttp.ClientSession() as session:
        yield session, organism.sources.addresses()["api"]


async def post(session: aiohttp.ClientSession, url: str, body: Any, *,
               headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(url, data=data, headers=AUTH if headers is None else headers,
                            timeout=aiohttp.ClientTimeout(total=BACKSTOP)) as answer:
        return answer.status, await answer.json(), answer.headers


def keeping(tmp_path: Path) -> tuple[Organism, list[Spore]]:
    """An organism whose http source feeds agent ``keeper``, which keeps what it gets."""
    got: list[Spore] = []

    async def keep(spore: Spore, ctx: Any) -> None:
        got.append(spore)

    return organism_with_api(tmp_path, {"keeper": {"handler": keep}}), got


async def test_a_posted_spore_reaches_its_agent_from_the_source(tmp_path: Path) -> None:
    organism, got = keeping(tmp_path)
    async with serving(organism) as (session, url):
        status, body, _ = await post(session, f"{url}/spores", {
            "to": "keeper", "knowledge": {"doc": 7}, "priority": 9, "expires_in": 60})
        assert (status, body["status"]) == (202, "accepted")
        await organism.idle()
    (spore,) = got
    assert (spore.id, spore.knowledge, spore.from_agent, spore.priority) == (
        body["id"], {"doc": 7}, "api", 9)
    assert spore.expires_at is not None
    assert organism.stats()["sources"]["api"]["sent"] == 1


async def test_a_posted_spore_may_give_its_expiry_as_a_duration(tmp_path: Path) -> None:
    # Found by a new user: "expires_in": "5s" was a 400 (not a number), though durations
    # are written so everywhere else.
    organism, got = keeping(tmp_path)
    async with serving(organism) as (session, url):
        status, _, _ = await post(session, f"{url}/spores", {
            "to": "keeper", "knowledge": {}, "expires_in": "5m"})
        assert status == 202
        status, body, _ = await post(session, f"{url}/spores", {
            "to": "keeper", "knowledge": {}, "expires_in": "soon"})
        assert status == 400, body
        await organism.idle()
    (spore,) = got
    assert spore.expires_at is not None
    assert 299 <= (spore.expires_at - spore.created_at).total_seconds() <= 301


async def test_a_posted_request_is_answered_with_the_response(tmp_path: Path) -> None:
    async def fail(spore: Spore, ctx: Any) -> None:
        raise ValueError("no such document")

    answered = asyncio.Event()

    async def mute(spore: Spore, ctx: Any) -> None:
        await answered.wait()  # past the request's timeout

    organism = organism_with_api(tmp_path, {"failing": {"handler": fail},
                                            "mute": {"handler": mute}},
                                 to="echo")
    async with serving(organism) as (session, url):
        status, body, _ = await post(session, f"{url}/requests", {"knowledge": {"q": 1}})
        assert (status, body["from"], body["knowledge"]) == (200, "echo", {"echo": {"q": 1}})
        status, body, _ = await post(session, f"{url}/requests",
                                     {"to": "failing", "knowledge": {}})
        assert (status, body["error"], body["reason"]) == (502, "handler_failed",
                                                           "handler failed")
        assert "no such document" in body["message"]
        status, body, _ = await post(session, f"{url}/requests",
                                     {"to": "mute", "knowledge": {}, "timeout": 1})
        assert (status, body["error"]) == (504, "timeout")
        answered.set()


@pytest.mark.parametrize(("headers", "message"), [
    ({}, "send the token as: Authorization: Bearer <token>"),
    ({"Authorization": "Bearer wrong"}, f"wrong token; send the one in ${TOKEN_ENV}"),
    ({"Authorization": f"Basic {TOKEN}"}, "send the token as: Authorization: Bearer <token>"),
])
async def test_a_post_without_the_right_token_is_401(tmp_path: Path, headers: dict[str, str],
                                                     message: str) -> None:
    organism = organism_with_api(tmp_path, {})
    async with serving(organism) as (session, url):
        for route in ("spores", "requests"):
            status, body, answer = await post(session, f"{url}/{route}",
                                              {"to": "echo", "knowledge": {}}, headers=headers)
            assert (status, body) == (401, {"error": "unauthorized", "message": message})
            assert answer["WWW-Authenticate"].startswith("Bearer")
        async with session.get(f"{url}/healthz") as health:  # open: probes carry no token
            assert (health.status, await health.json()) == (200, {"status": "ok",
                                                                  "organism": "running"})
    assert organism.stats()["sources"]["api"]["sent"] == 0


async def test_a_body_over_max_spore_bytes_is_413(tmp_path: Path) -> None:
    organism = organism_with_api(tmp_path, {}, limits={"max_spore_bytes": 1024})
    async with serving(organism) as (session, url):
        big = json.dumps({"to": "echo", "knowledge": {"blob": "x" * 2000}}).encode()
        status, body, _ = await post(session, f"{url}/spores", big)
        assert (status, body["error"]) == (413, "too_large")
        assert "larger than limits.max_spore_bytes (1024 bytes)" in body["message"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: cut while read
            yield big

        async with session.post(f"{url}/spores", data=chunks(), headers=AUTH) as answer:
            assert answer.status == 413


@pytest.mark.parametrize(("body", "status", "reason", "says"), [
    ({"to": "ehco", "knowledge": {}}, 404, "unknown agent", "(did you mean 'echo'?)"),
    ({"channel": "nwes", "knowledge": {}}, 404, "unknown channel", "(did you mean 'news'?)"),
    ({"channel": "quiet", "knowledge": {}}, 422, "no subscribers", "reaches no agent"),
    ({"channel": "locked", "knowledge": {}}, 403, "not a peer", "may not broadcast"),
    ({"to": "strict", "knowledge": {"n": "one"}}, 422, "schema", "'one' is not of type"),
    ({"to": "echo", "knowledge": {"deep": json.loads("[" * 40 + "]" * 40)}}, 422,
     "limit exceeded", "depth"),
])
async def test_a_refused_spore_is_4xx_with_its_reason(tmp_path: Path, body: dict[str, Any],
                                                      status: int, reason: str,
                                                      says: str) -> None:
    organism = organism_with_api(tmp_path, {})
    async with serving(organism) as (session, url):
        answer = await post(session, f"{url}/spores", body)
        assert answer[:2][0] == status, answer
        assert (answer[1]["error"], answer[1]["reason"]) == ("refused", reason)
        assert says in answer[1]["message"]
    assert list(organism.dead_letters) == []  # the caller was told: no dead letter
    assert organism.stats()["sources"]["api"]["refused"] == 1


async def test_a_schema_refusal_names_the_field_not_the_servers_schema_file(
        tmp_path: Path) -> None:
    """A remote caller hears which field is wrong, never where the organism keeps its
    schema files (the dead letters and the CLI, on the organism's side, keep the path)."""
    organism = organism_with_api(tmp_path, {})
    async with serving(organism) as (session, url):
        _, body, _ = await post(session, f"{url}/spores",
                                {"to": "strict", "knowledge": {"n": "one"}})
    assert body["message"].startswith("SchemaViolation: knowledge.n: 'one' is not of type")
    assert "of agent 'strict'" in body["message"]
    assert str(tmp_path) not in body["message"]
    assert "needs_n.json" not in body["message"]


@pytest.mark.parametrize(("body", "says"), [
    (b"{not json", "the body is not JSON"),
    (b'{"to": "echo", "knowledge": {"x": NaN}}', "NaN is not JSON"),
    (b"[" * 100_000, "the body is not JSON"),
    ({"to": "echo", "channel": "news", "knowledge": {}}, "give 'to' or 'channel', not both"),
    ({"to": "echo", "knowledge": []}, "body['knowledge']: [] is not of type 'object'"),
    ({"to": "echo", "knowledge": {}, "priority": 11}, "11 is greater than the maximum of 10"),
    ({"knowledge": {}}, "is not valid under any of the given schemas"),
])
async def test_a_malformed_body_is_400(tmp_path: Path, body: Any, says: str) -> None:
    organism = organism_with_api(tmp_path, {}, limits={"max_spore_bytes": 200_000})
    async with serving(organism) as (session, url):
        status, answer, _ = await post(session, f"{url}/spores", body)
        assert (status, answer["error"]) == (400, "bad_request")
        assert says in answer["message"]


async def test_a_full_organism_answers_429_with_retry_after(tmp_path: Path) -> None:
    release = asyncio.Event()
    handled: list[int] = []

    async def slow(spore: Spore, ctx: Any) -> dict[str, Any]:
        await release.wait()
        handled.append(spore.knowledge["n"])
        return {"done": True}

    organism = organism_with_api(tmp_path, {"slow": {"handler": slow}},
                                 admission_wait="50ms", limits={"max_in_flight": 1})
    async with serving(organism) as (session, url):
        status, _, _ = await post(session, f"{url}/spores", {"to": "slow", "knowledge": {"n": 1}})
        assert status == 202
        for route in ("spores", "requests"):  # the organism holds one: it is full
            status, body, answer = await post(session, f"{url}/{route}",
                                              {"to": "slow", "knowledge": {"n": 2}})
            assert (status, body["error"], answer["Retry-After"]) == (429, "full", "1")
            assert "had no room for a spore to 'slow' within 0.05s" in body["message"]
        release.set()
        await organism.idle()
        status, _, _ = await post(session, f"{url}/spores", {"to": "slow", "knowledge": {"n": 3}})
        assert status == 202
        await organism.idle()
    assert handled == [1, 3]  # nothing refused was admitted
    assert organism.stats()["sources"]["api"]["http_429"] == 2


async def test_an_insecure_loopback_source_takes_posts_without_a_token(tmp_path: Path) -> None:
    organism = Organism.from_dict({
        "agents": {"echo": {"handler": echo}},
        "sources": {"api": {"kind": "http", "port": 0, "insecure": True, "to": "echo"}}})
    async with serving(organism) as (session, url):
        status, body, _ = await post(session, f"{url}/requests", {"knowledge": {"a": 1}},
                                     headers={})
        assert (status, body["knowledge"]) == (200, {"echo": {"a": 1}})
        async with session.get(f"{url}/openapi.json") as answer:
            document = await answer.json()
    assert "securitySchemes" not in document["components"]
    assert set(document["paths"]) == {"/spores", "/requests", "/openapi.json", "/healthz"}


async def test_the_server_is_closed_when_the_organism_stops(tmp_path: Path) -> None:
    organism = organism_with_api(tmp_path, {})
    async with serving(organism) as (session, url):
        pass
    assert organism.stats()["sources"]["api"]["state"] == "stopped"
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("sporeflow source")]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{url}/healthz")


async def test_a_port_in_use_fails_the_source_not_the_organism(tmp_path: Path) -> None:
    first = organism_with_api(tmp_path, {})
    async with serving(first) as (_, url):
        port = int(url.rsplit(":", 1)[1])
        second = organism_with_api(tmp_path, {}, port=port)
        async with second.running():
            assert second.state == "running"
            stats = second.stats()["sources"]["api"]
            assert stats["state"] == "failed"
            assert "OSError" in stats["error"]


# -- schemathesis, against a live server --------------------------------------------------


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An organism with an http source, on its own thread and loop (schemathesis sends
    blocking requests from the test's thread)."""
    ready, box = threading.Event(), {}

    def serve() -> None:
        async def main() -> None:
            organism = organism_with_api(tmp_path_factory.mktemp("live"), {}, to="echo",
                                         limits={"max_spore_bytes": 16384},
                                         admission_wait="100ms")
            async with organism.running(drain_timeout=BACKSTOP):
                box["url"] = organism.sources.addresses()["api"]
                box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
                ready.set()
                await box["stop"].wait()

        asyncio.run(main())

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKEN_ENV, TOKEN)
        thread = threading.Thread(target=serve, name="live ingress", daemon=True)
        thread.start()
        assert ready.wait(BACKSTOP), "the organism did not start"
    yield box["url"]
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(BACKSTOP)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def api_schema(live_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{live_url}/openapi.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_gets_a_server_error_and_answers_are_as_documented(
        api_schema: Any, mode: GenerationMode) -> None:
    """Valid bodies (positive) and broken ones (negative) to every route."""
    seen: set[tuple[str, int]] = set()

    @hypothesis.given(case=api_schema.as_strategy(generation_mode=mode))
    @hypothesis.settings(max_examples=100, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def call(case: Any) -> None:
        response = case.call_and_validate(headers=AUTH, timeout=BACKSTOP, checks=[
            not_a_server_error, status_code_conformance, content_type_conformance,
            response_schema_conformance])
        seen.add((case.operation.path, response.status_code))

    call()
    # The fuzzing reached past the door: spores admitted, requests answered, or refused.
    if mode is GenerationMode.POSITIVE:
        assert {("/spores", 202), ("/requests", 200), ("/healthz", 200)} <= seen, seen
    else:
        assert {("/spores", 400), ("/requests", 400)} <= seen, seen


def test_the_document_is_openapi_3_with_every_route() -> None:
    from sporeflow.config.sources import HttpSource
    from sporeflow.pipeline.sources.openapi import openapi_document

    document = openapi_document(HttpSource(name="api", token=None), organism="o",
                                max_bytes=1024)
    assert document["openapi"].startswith("3.")

    def statuses(path: str) -> set[str]:
        return set(document["paths"][path]["post"]["responses"])

    assert statuses("/spores") == {"202", "400", "403", "404", "413", "422", "429", "503"}
    assert statuses("/requests") == {"200", "400", "403", "404", "413", "422", "429", "502",
                                     "503", "504"}
