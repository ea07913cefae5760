"""What an attacker found on the HTTP ingress and the control endpoint, each fixed where
the rule lives (the ingress's refusals, the outbox's bound, the body reader, the
endpoint's guard), with the request that found it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.core.outbox import Outbox
from sporeflow.pipeline.service.address import ControlAddress
from sporeflow.pipeline.service.control import control_app
from sporeflow.pipeline.service.server import ControlServer

from .test_http_ingress import AUTH, TOKEN, TOKEN_ENV, organism_with_api, post, serving


async def echo(spore: Spore, ctx: Any) -> dict[str, Any]:
    return {"echo": spore.knowledge}


@asynccontextmanager
async def control_client(handler: Any = None, name: str = "echo",
                         ) -> AsyncIterator[tuple[Organism, TestClient[Any, Any]]]:
    """A running organism of one agent, and a client of its control endpoint (in process)."""
    organism = Organism.from_dict({"organism": {"name": "ctl"},
                                   "agents": {name: {"handler": handler or echo}}})
    async with organism.running(drain_timeout=5):
        client: TestClient[Any, Any] = TestClient(TestServer(control_app(organism)))
        await client.start_server()
        try:
            yield organism, client
        finally:
            await client.close()


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


async def test_a_spore_to_an_outside_sender_is_404_and_never_kept(tmp_path: Path) -> None:
    # Found: 202, each spore kept in organism.outbox (10,000 of up to max_spore_bytes: ~10 GB
    # from one client); POST /requests and organism.send already said 404 for the same.
    organism = organism_with_api(tmp_path, {})
    async with serving(organism) as (session, url):
        for target in ("api", "system", "cli"):
            status, answer, _ = await post(session, f"{url}/spores",
                                           {"to": target, "knowledge": {"pad": "x" * 1000}})
            assert status == 404, (target, answer)
            assert answer["reason"] == "unknown agent"
    assert len(organism.outbox) == 0


def test_the_outbox_is_bounded_in_bytes_as_well_as_in_count() -> None:
    organism = Organism.from_dict({"agents": {"a": {"handler": "builtins:print"}}})
    outbox = Outbox(organism.spec.limits, capacity=100, max_bytes=50_000)
    big = "x" * 10_000
    for n in range(20):
        outbox.append(Spore(knowledge={"n": n, "pad": big}, from_agent="a", to_agent="cli"))
    kept = [spore.knowledge["n"] for spore in outbox]
    assert kept == list(range(16, 20))  # each ~10.6 KB as JSON: four fit in 50,000 bytes
    assert outbox.forgotten == 16
    assert 40_000 < outbox.bytes <= 50_000
    by_count = Outbox(organism.spec.limits, capacity=100, max_bytes=1 << 30)
    for n in range(200):
        by_count.append(Spore(knowledge={"n": n}, from_agent="a", to_agent="cli"))
    assert [spore.knowledge["n"] for spore in by_count] == list(range(100, 200))


async def test_the_organisms_outbox_is_that_bounded_one() -> None:
    async def back(spore: Spore, ctx: Any) -> dict[str, Any]:
        return dict(spore.knowledge)

    organism = Organism.from_dict({"agents": {"back": {"handler": back}}})
    assert isinstance(organism.outbox, Outbox)
    async with organism.running():
        await organism.send("back", {"n": 1}, sender="tester")
        await organism.idle()
    assert [spore.knowledge for spore in organism.outbox] == [{"n": 1}]


async def test_a_body_that_does_not_decode_as_its_content_encoding_is_400(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Found: 500 {"error": "internal"} and an ERROR with the traceback of
    # ContentEncodingError; README promises a 400 and never a 5xx for a client's mistake.
    organism = organism_with_api(tmp_path, {})
    async with serving(organism) as (session, url):
        async with session.post(f"{url}/spores", data=b'{"knowledge": {}}',
                                headers={**AUTH, "Content-Encoding": "gzip"}) as answer:
            assert answer.status == 400
            said = await answer.text()
        async with session.post(f"{url}/spores", json={"to": "echo", "knowledge": {}},
                                headers=AUTH) as answer:
            assert answer.status == 202  # and the source goes on
    assert "Content-Encoding" in said
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_control_endpoint_answers_400_to_such_a_body_too() -> None:
    async with control_client() as (_, client):
        answer = await client.post("/v1/send", data=b'{"to": "echo", "knowledge": {}}',
                                   headers={"Content-Encoding": "gzip",
                                            "Content-Type": "application/json"})
        assert answer.status == 400  # found: 500 "Server got itself in trouble"
        assert answer.headers["Connection"] == "close"
        again = await client.post("/v1/send", json={"to": "echo", "knowledge": {}})
        assert again.status == 200


# -- a page of another site (CSRF, DNS rebinding) ----------------------------------------

_SEND = {"to": "echo", "knowledge": {"csrf": "from-another-origin"}}


@pytest.fixture
async def control_port(tmp_path: Path) -> AsyncIterator[tuple[Organism, str, str]]:
    """A running organism's --control-http endpoint: its base URL and its token."""
    organism = Organism.from_dict({"organism": {"name": "ctl"},
                                   "agents": {"echo": {"handler": echo}}})
    (tmp_path / "run").mkdir(mode=0o700)
    address = ControlAddress.of(tmp_path / "organism.yaml", "ctl", folder=tmp_path / "run")
    async with organism.running(drain_timeout=5), ControlServer(
            organism, tmp_path / "organism.yaml", http_port=0, echo=lambda line: None,
            quiet=True, address=address) as server:
        assert server.url is not None
        token = (tmp_path / "run").glob("*token*")
        yield organism, server.url.split("/v1/")[0], next(token).read_text().strip()


@pytest.mark.parametrize(("headers", "why"), [
    ({"Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site: same-site"),  # another port
    ({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site: cross-site"),
    ({"Origin": "http://127.0.0.1:18099"}, "'http://127.0.0.1:18099'"),
    ({"Origin": "null"}, "'null'"),
    ({"Origin": "http://127.0.0.1:18099", "Sec-Fetch-Site": "same-site"}, "same-site"),
])
async def test_the_control_endpoint_refuses_a_page_of_another_site_its_cookie_or_not(
        control_port: tuple[Organism, str, str], headers: dict[str, str], why: str) -> None:
    # Found: a page on another port of 127.0.0.1 posted text/plain to /v1/send with the
    # dashboard's cookie (SameSite=Strict does not tell ports apart) and it was delivered;
    # /v1/dead-letters/purge alike.
    organism, base, token = control_port
    # unsafe: keep cookies of an IP address, as a browser does
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(f"{base}/v1/?token={token}") as answer:  # the cookie is set
            assert answer.status == 200
        async with session.post(f"{base}/v1/send", data=json.dumps(_SEND),
                                headers={"Content-Type": "text/plain", **headers}) as answer:
            assert answer.status == 403
            said = (await answer.json())["message"]
        assert why in said
        async with session.post(f"{base}/v1/send", json=_SEND,  # its own page: still fine
                                headers={"Origin": base, "Sec-Fetch-Site": "same-origin"}
                                ) as answer:
            assert answer.status == 200
        async with session.post(f"{base}/v1/send", json=_SEND,  # a program, the header
                                headers={"Authorization": f"Bearer {token}"}) as answer:
            assert answer.status == 200
        # A page whose name was made to point here (DNS rebinding) has no token to send:
        # the cookie is 127.0.0.1's, and named by its port.
        async with session.post(f"{base}/v1/send", json=_SEND,
                                headers={"Host": "evil.test:8787"}) as answer:
            assert answer.status == 401
    assert organism.stats()["agents"]["echo"]["handled"] == 2


async def test_an_insecure_loopback_ingress_refuses_a_page_of_another_site(
        tmp_path: Path) -> None:
    # Found: a page on http://evil.test (resolving to 127.0.0.1) posted a text/plain spore
    # to an `insecure: true` ingress, which took it.
    organism = Organism.from_dict({
        "agents": {"echo": {"handler": echo}},
        "sources": {"api": {"kind": "http", "port": 0, "insecure": True, "to": "echo"}},
    }, base_dir=tmp_path)
    async with organism.running(drain_timeout=5), aiohttp.ClientSession() as session:
        url = organism.sources.addresses()["api"]
        for headers in ({"Host": "evil.test"}, {"Origin": "http://evil.test"},
                        {"Sec-Fetch-Site": "cross-site"}):
            async with session.post(f"{url}/spores", data=b'{"knowledge": {}}',
                                    headers={"Content-Type": "text/plain", **headers}
                                    ) as answer:
                assert answer.status == 403, headers
        async with session.post(f"{url}/spores", json={"knowledge": {}}) as answer:
            assert answer.status == 202  # curl, a service
    assert organism.stats()["agents"]["echo"]["received"] <= 1


@pytest.mark.parametrize("buffer", ["99999999999999999999", "1000000000000000", "0", "-1", "x"])
async def test_an_event_stream_buffer_past_its_bound_is_400(buffer: str) -> None:
    # Found: ?buffer=99999999999999999999 was a 500 (OverflowError in deque(maxlen=));
    # 10**15 was taken, so a follower reading slowly held every event and its spore.
    async with control_client() as (_, client):
        answer = await client.get("/v1/events", params={"buffer": buffer})
        assert answer.status == 400
        assert "from 1 to 100,000" in (await answer.json())["message"]


async def test_a_priority_written_5_point_0_is_5_as_the_openapi_document_says(
        tmp_path: Path) -> None:
    # Found: 422 "priority 5.0 is out of range; use 1..10": JSON Schema, which the ingress
    # publishes, calls 5.0 an integer (schemathesis: ST202).
    organism = organism_with_api(tmp_path, {})
    async with serving(organism) as (session, url):
        status, answer, _ = await post(session, f"{url}/spores",
                                       {"to": "echo", "knowledge": {}, "priority": 5.0})
        assert status == 202, answer
        await organism.idle()
    assert organism.stats()["agents"]["echo"]["handled"] == 1


@pytest.mark.parametrize("expires_in", ["0s", "0ms", "0m"])
async def test_an_expires_in_of_no_time_written_as_a_duration_is_400(
        tmp_path: Path, expires_in: str) -> None:
    # Found: "0s" was 202 "admitted: it will be handled", then dead-lettered as expired at
    # once; the number 0 was a 400 already (the document's exclusiveMinimum).
    organism = organism_with_api(tmp_path, {})
    async with serving(organism) as (session, url):
        status, answer, _ = await post(session, f"{url}/spores",
                                       {"to": "echo", "knowledge": {}, "expires_in": expires_in})
        assert status == 400, answer
        assert "is no time at all" in answer["message"]
        status, _, _ = await post(session, f"{url}/spores",
                                  {"to": "echo", "knowledge": {}, "expires_in": "30s"})
        assert status == 202


# -- dead letters a page at a time -------------------------------------------------------


async def fails(spore: Spore, ctx: Any) -> None:
    raise ValueError(f"no {spore.knowledge['n']}")


async def test_the_dead_letters_are_listed_a_page_at_a_time(tmp_path: Path) -> None:
    # Found: GET /v1/dead-letters answered every letter kept in one body, made on the loop
    # (67 MB for 2,200 letters of 30 kB: every agent stalled 2 s; 8 at once, 1.2 GB).
    async with control_client(fails, "fails") as (organism, client):
        for n in range(1, 1_101):
            await organism.send("fails", {"n": n})
        await organism.idle()
        first = await (await client.get("/v1/dead-letters")).json()
        assert (len(first["letters"]), first["next"], first["kept"]) == (500, 500, 1_100)
        numbers = [letter["number"] for letter in first["letters"]]
        after: int | None = first["next"]
        while after is not None:
            page = await (await client.get("/v1/dead-letters",
                                           params={"after": after, "limit": 300})).json()
            numbers += [letter["number"] for letter in page["letters"]]
            after = page["next"]
        assert numbers == list(range(1, 1_101))
        chosen = await (await client.get("/v1/dead-letters", params={
            "id": [str(n) for n in (3, 700, 1_100)], "limit": 2})).json()
        assert [letter["number"] for letter in chosen["letters"]] == [3, 700]
        assert chosen["next"] == 700
        for bad in ({"limit": "0"}, {"limit": "5001"}, {"after": "-1"}, {"limit": "x"}):
            answer = await client.get("/v1/dead-letters", params=bad)
            assert answer.status == 400, bad


async def test_dlq_list_reads_every_page_of_a_running_organism(tmp_path: Path) -> None:
    file = tmp_path / "organism.yaml"
    file.write_text("organism: {name: paged}\nagents:\n  fails: {handler: failing:fails}\n")
    (tmp_path / "failing.py").write_text(
        "async def fails(spore, ctx):\n    raise ValueError(spore.knowledge['n'])\n")
    organism = Organism.from_file(file)
    async with organism.running(), ControlServer(organism, file, echo=lambda _: None,
                                                 quiet=True):
        for n in range(1, 1_201):
            await organism.send("fails", {"n": n})
        await organism.idle()
        listed = await asyncio.to_thread(CliRunner().invoke, cli,
                                         ["dlq", "list", str(file), "--json"])
    assert listed.exit_code == 0, listed.output
    numbers = [json.loads(line)["number"] for line in listed.output.splitlines()]
    assert numbers == list(range(1, 1_201))  # every page, not the first 500 alone


async def test_a_token_bearing_program_behind_a_reverse_proxy_is_not_a_page_of_another_site(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Review: a loopback ingress with a token, behind nginx's `proxy_set_header Host
    # $host` (a common template), got 403 "Host 'api.example.com' is not a name of this
    # loopback server" for every request, curl's included. A page of another site, its
    # name rebound to 127.0.0.1 or not, has no bearer token to send (no cookie either):
    # the Host test protects only a server without one (insecure: true).
    monkeypatch.setenv("RVW_TOKEN", "s3cret-token-0123456789")
    organism = Organism.from_dict({
        "agents": {"echo": {"handler": echo}},
        "sources": {"api": {"kind": "http", "port": 0, "token_env": "RVW_TOKEN",
                            "to": "echo"}},
    }, base_dir=tmp_path)
    async with organism.running(drain_timeout=5), aiohttp.ClientSession() as session:
        url = organism.sources.addresses()["api"]
        async with session.post(f"{url}/spores", json={"knowledge": {}}, headers={
                "Authorization": "Bearer s3cret-token-0123456789",
                "Host": "api.example.com", "X-Forwarded-Proto": "https"}) as answer:
            assert answer.status == 202, await answer.text()


async def test_a_link_from_another_page_and_a_tls_proxy_still_reach_the_dashboard(
        control_port: tuple[Organism, str, str]) -> None:
    # Review: the first guard refused a top-level navigation from another page (a link to
    # the URL `sporeflow run` prints, in a notebook on localhost:8888), and the dashboard's
    # own POSTs behind a proxy ending TLS (Origin https://, the request here http://).
    _, base, token = control_port
    host = base.removeprefix("http://")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(f"{base}/v1/?token={token}", headers={
                "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate"}) as answer:
            assert answer.status == 200
        async with session.post(f"{base}/v1/send", json=_SEND,
                                headers={"Origin": f"https://{host}"}) as answer:
            assert answer.status == 200
