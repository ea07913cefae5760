"""The web dashboard's JSON (pipeline/service/dashboard*.py), through aiohttp's test client.

The dashboard is mounted on the control endpoint's app, as ``sporeflow run --dashboard``
does, so that the page's calls to the control API (a letter in full, replays) and the
token guard are the real ones.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.core.latency import BOUNDS, LatencyHistogram
from sporeflow.pipeline.service.control import control_app, token_guard
from sporeflow.pipeline.service.dashboard import mount_dashboard
from sporeflow.pipeline.service.dashboard_graph import layers
from sporeflow.pipeline.service.dashboard_state import LatencyWindow


async def relay(spore: Spore, ctx: Any) -> dict[str, Any]:
    return {"n": spore.knowledge["n"]}


async def sink(spore: Spore, ctx: Any) -> None:
    return None


async def echo(spore: Spore, ctx: Any) -> dict[str, Any]:
    return {"echo": spore.knowledge["n"]}  # no emit: back to the sender


async def fussy(spore: Spore, ctx: Any) -> None:
    if spore.knowledge.get("bad"):
        raise ValueError(f"cannot take {spore.knowledge['bad']!r} " + "x" * 600)


async def stray(spore: Spore, ctx: Any) -> list[Spore]:
    n = spore.knowledge["n"]  # to names nobody declared: dead letters
    return [Spore(knowledge={"n": n}, to_agent=f"nobody-{n}"),
            Spore(knowledge={"n": n}, channel=f"nowhere-{n}")]


def pipeline_organism() -> Organism:
    """outside -> front -> #news -> {left, right}; left -> back; front asks echo, whose
    replies go back to front without any declared edge; fussy fails on bad spores, and
    stray sends to names nobody declared."""

    async def front(spore: Spore, ctx: Any) -> dict[str, Any]:
        if spore.knowledge.get("ask"):
            await ctx.send("echo", {"n": spore.knowledge["n"]})
            return {"n": spore.knowledge["n"]}
        return {"n": spore.knowledge["n"]}

    return Organism.from_dict({
        "organism": {"name": "board"},
        "channels": {"news": {"description": "what front announces"}, "quiet": {}},
        "agents": {
            "front": {"handler": front, "emit": {"channel": "news"}, "peers": ["echo"],
                      "description": "takes the outside's spores", "boot": {"n": 0}},
            "left": {"handler": relay, "subscribe": ["news"], "emit": {"to": "back"},
                     "concurrency": 2},
            "right": {"handler": sink, "subscribe": ["news"]},
            "back": {"handler": sink},
            "echo": {"handler": echo},
            "fussy": {"handler": fussy, "retry": {"attempts": 1}},
            "stray": {"handler": stray},
        },
    })


@pytest.fixture
async def running() -> AsyncIterator[Organism]:
    organism = pipeline_organism()
    async with organism.running(drain_timeout=5):
        await organism.idle()
        yield organism


async def client_for(organism: Organism, *, token: str | None = None) -> TestClient[Any, Any]:
    middlewares = (token_guard(token, cookie="sporeflow_token_test"),) if token else ()
    app = control_app(organism, middlewares=middlewares)
    mount_dashboard(app, organism)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(running: Organism) -> AsyncIterator[TestClient[Any, Any]]:
    client = await client_for(running)
    yield client
    await client.close()


async def get_json(client: TestClient[Any, Any], path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


# -- the graph ---------------------------------------------------------------------------


def test_layers_put_every_edge_rightwards_but_those_closing_a_cycle() -> None:
    keys = ["a", "b", "c", "d", "e"]
    edges = [("a", "b"), ("b", "c"), ("c", "a"), ("a", "d"), ("d", "c"), ("e", "e")]
    rows = layers(keys, edges)
    column = {key: index for index, row in enumerate(rows) for key in row}
    assert sorted(column) == keys
    for source, target in [("a", "b"), ("b", "c"), ("a", "d"), ("d", "c")]:
        assert column[source] < column[target], (source, target, rows)
    assert column["c"] == 2  # the longest path a -> b -> c, not the back edge c -> a


def test_layers_order_a_layer_by_its_neighbours_to_uncross_edges() -> None:
    # Declared order would cross: x1 -> y2 and x2 -> y1.
    rows = layers(["x1", "x2", "y1", "y2"], [("x1", "y2"), ("x2", "y1")])
    assert rows == [["x1", "x2"], ["y2", "y1"]]


async def test_graph_draws_every_agent_and_channel_with_places_and_declared_edges(
        client: TestClient[Any, Any], running: Organism) -> None:
    graph = await get_json(client, "/dashboard/api/graph")
    nodes = {node["key"]: node for node in graph["nodes"]}
    assert {key for key in nodes if key.startswith("agent:")} == {
        f"agent:{name}" for name in running.spec.agents}
    assert {"channel:news", "channel:quiet", "outside"} <= set(nodes)
    assert nodes["agent:left"]["label"] == "left ×2"
    assert nodes["agent:front"]["description"] == "takes the outside's spores"
    edges = {(edge["source"], edge["target"], edge["kind"]) for edge in graph["edges"]}
    assert {("outside", "agent:front", "boot"), ("agent:front", "channel:news", "emit"),
            ("channel:news", "agent:left", "subscribe"), ("agent:left", "agent:back", "emit"),
            ("agent:front", "agent:echo", "peer")} <= edges
    for source, target, _ in edges:  # no cycle here: every edge goes right
        assert nodes[source]["x"] < nodes[target]["x"], (source, target)
    for node in nodes.values():
        assert 0 <= node["x"] <= graph["width"] - graph["node_width"]
        assert 0 <= node["y"] <= graph["height"] - graph["node_height"]
    places = {(node["x"], node["y"]) for node in nodes.values()}
    assert len(places) == len(nodes)  # no two nodes on one spot


async def test_graph_draws_each_source_feeding_its_agent_and_counts_its_spores(
        tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("a\nb\nc\n")
    organism = Organism.from_dict({
        "agents": {"reader": {"handler": sink}},
        "sources": {"file": {"kind": "lines", "path": "in.txt", "to": "reader"}}},
        base_dir=tmp_path)
    async with organism.running(drain_timeout=5):
        client = await client_for(organism)
        try:
            await asyncio.wait_for(organism.sources.ended(), 10)
            await organism.idle()
            graph = await get_json(client, "/dashboard/api/graph")
            state = await get_json(client, "/dashboard/api/state")
        finally:
            await client.close()
    nodes = {node["key"]: node for node in graph["nodes"]}
    assert nodes["source:file"]["kind"] == "source"
    assert (nodes["source:file"]["label"], nodes["source:file"]["source_kind"]) == (
        "file (lines)", "lines")
    assert {"source": "source:file", "target": "agent:reader", "kind": "feed",
            "label": ""} in graph["edges"]
    assert nodes["source:file"]["x"] < nodes["agent:reader"]["x"]
    counts = {(e["source"], e["target"]): e["count"] for e in state["edges"]}
    assert counts == {("source:file", "agent:reader"): 3}  # not from 'outside'


# -- counts ------------------------------------------------------------------------------


async def test_state_counts_spores_along_each_edge_including_undeclared_replies(
        client: TestClient[Any, Any], running: Organism) -> None:
    before = await get_json(client, "/dashboard/api/state")
    for n in range(5):
        await running.send("front", {"n": n})
    await running.send("front", {"n": 9, "ask": True})
    await running.idle()
    after = await get_json(client, "/dashboard/api/state")

    def moved(state_before: dict[str, Any], state_after: dict[str, Any]) -> dict[Any, int]:
        counts = {(e["source"], e["target"]): e["count"] for e in state_before["edges"]}
        return {(e["source"], e["target"]): e["count"] - counts.get((e["source"], e["target"]), 0)
                for e in state_after["edges"]}

    edges = moved(before, after)
    assert edges[("outside", "agent:front")] == 6
    assert edges[("agent:front", "channel:news")] == 6
    assert edges[("channel:news", "agent:left")] == 6
    assert edges[("channel:news", "agent:right")] == 6
    assert edges[("agent:left", "agent:back")] == 6
    assert edges[("agent:front", "agent:echo")] == 1
    assert edges[("agent:echo", "agent:front")] == 1  # the reply: drawn as undeclared
    assert after["agents"]["left"]["handled"] - before["agents"]["left"]["handled"] == 6
    assert after["agents"]["left"]["recent"]["count"] >= 6
    assert after["agents"]["left"]["recent"]["p99_ms"] is not None
    assert after["at"] > before["at"]  # the clock the page's rates divide by
    assert after["channels"]["news"]["deliveries"] >= 12
    assert after["graph_version"] == before["graph_version"]


async def test_edge_tally_keys_only_names_of_the_wiring(
        client: TestClient[Any, Any], running: Organism) -> None:
    for n in range(3):  # made-up senders and recipients never become keys
        await running.send("front", {"n": n}, sender=f"stranger-{n}")
        await running.send("stray", {"n": n})
    await running.idle()
    state = await get_json(client, "/dashboard/api/state")
    names = {key for edge in state["edges"] for key in (edge["source"], edge["target"])}
    assert names <= {"outside", *(f"agent:{name}" for name in running.spec.agents),
                     *(f"channel:{name}" for name in running.spec.channels)}


def observe(histogram: LatencyHistogram, seconds: float, times: int = 1) -> None:
    """Record as the agents' builder does."""
    histogram.counts[bisect_left(BOUNDS, seconds)] += times
    histogram.total += seconds * times


def test_latency_window_reports_only_the_last_seconds() -> None:
    now = [0.0]
    window = LatencyWindow(span=10.0, clock=lambda: now[0])
    histogram = LatencyHistogram()
    observe(histogram, 0.001, 100)
    assert window.sample({"a": histogram})["a"]["count"] == 100  # nothing older: all
    now[0] = 5.0
    observe(histogram, 2.0, 10)
    recent = window.sample({"a": histogram})["a"]
    assert recent["count"] == 10
    assert recent["p50_ms"] is not None
    assert recent["p50_ms"] >= 1000
    now[0] = 20.0  # nothing handled in the last ten seconds
    assert window.sample({"a": histogram})["a"] == {"count": 0, "p50_ms": None,
                                                    "p99_ms": None}
    assert histogram.summary()["count"] == 110  # since start, as stats() has it


def test_latency_window_starts_over_for_a_replaced_histogram() -> None:
    now = [0.0]
    window = LatencyWindow(span=10.0, clock=lambda: now[0])
    old = LatencyHistogram()
    observe(old, 0.01, 50)
    window.sample({"a": old})
    now[0] = 2.0
    new = LatencyHistogram()
    observe(new, 0.5)
    assert window.sample({"a": new})["a"]["count"] == 1


# -- dead letters ------------------------------------------------------------------------


async def test_dead_letters_list_newest_first_filtered_and_cut_short(
        client: TestClient[Any, Any], running: Organism) -> None:
    for n in range(3):
        await running.send("fussy", {"bad": f"v{n}"})
    await running.send("stray", {"n": 1})  # an unknown agent and an unknown channel
    await running.idle()
    listed = await get_json(client, "/dashboard/api/dead-letters")
    assert listed["kept"] == listed["total"] == 5
    assert [row["reason"] for row in listed["letters"]] == [
        "unknown channel", "unknown agent", "handler failed", "handler failed",
        "handler failed"]
    numbers = [row["number"] for row in listed["letters"]]
    assert numbers == sorted(numbers, reverse=True)
    # stray's refused output names it, as its refused sends would (test_refused_output)
    assert listed["agents"] == ["fussy", "stray"]
    assert listed["reasons"] == ["handler failed", "unknown agent", "unknown channel"]
    failed = listed["letters"][2]
    assert failed["agent"] == "fussy"
    assert failed["spore"]["to"] == "fussy"
    assert failed["error"].startswith("ValueError: cannot take 'v2'")
    assert failed["error"].endswith("…")
    assert len(failed["error"]) == 401

    only = await get_json(client, "/dashboard/api/dead-letters?reason=unknown+agent")
    assert [row["spore"]["to"] for row in only["letters"]] == ["nobody-1"]
    assert only["matching"] == 1
    assert only["kept"] == 5
    two = await get_json(client, "/dashboard/api/dead-letters?agent=fussy&limit=2")
    assert [row["number"] for row in two["letters"]] == numbers[2:4]
    bad = await client.get("/dashboard/api/dead-letters?limit=many")
    assert bad.status == 400
    assert (await bad.json())["message"] == (
        "limit must be a whole number from 1 to 1,000, got 'many'")  # was lost
    misspelt = await client.get("/dashboard/api/dead-letters?reason=unknown+agnet")
    assert misspelt.status == 400  # was: nothing matching, as if there were none
    assert "(did you mean 'unknown agent'?)" in await misspelt.text()


@pytest.mark.parametrize("limit", ["-5", "0", "1001", "99999999999999999999", "1_0", " 5",
                                   "9" * 5000])
async def test_a_list_limit_out_of_bounds_is_refused_as_the_control_api_refuses_it(
        client: TestClient[Any, Any], limit: str) -> None:
    # Found by attacker3: the page's list took -5 and 10**20 as 1 and 1,000 without a word,
    # and 1_0 and " 5" as numbers, where GET /v1/dead-letters refuses them: one rule now.
    bad = await client.get("/dashboard/api/dead-letters", params={"limit": limit})
    assert bad.status == 400
    assert (await bad.json())["message"] == (
        f"limit must be a whole number from 1 to 1,000, got {limit[:40]!r}")


async def test_a_listed_letter_is_shown_and_replayed_through_the_control_api(
        client: TestClient[Any, Any], running: Organism) -> None:
    await running.send("fussy", {"bad": "once", "n": 7})
    await running.idle()
    (row,) = (await get_json(client, "/dashboard/api/dead-letters"))["letters"]
    shown = await get_json(client, f"/v1/dead-letters/{row['number']}")
    assert "ValueError" in shown["traceback"]  # the part the list leaves out
    handled = running.stats()["agents"]["fussy"]["handled"]
    replayed = await client.post("/v1/dead-letters/replay", json={"ids": [row["number"]]})
    assert (await replayed.json())["replayed"] == 1
    await running.idle()
    # Replayed through every stage: fussy fails it again, as a new dead letter.
    listed = await get_json(client, "/dashboard/api/dead-letters")
    assert [r["number"] for r in listed["letters"]] == [row["number"] + 1]
    assert running.stats()["agents"]["fussy"]["failed"] == 2
    assert running.stats()["agents"]["fussy"]["handled"] == handled


# -- reloads -----------------------------------------------------------------------------

ORGANISM = """\
organism: {{name: reloading}}
agents:
  first: {{handler: "{module}:work"}}
{more}"""


async def test_reloads_applied_and_refused_are_kept_newest_first_and_bump_the_graph(
        tmp_path: Path, handler_modules: Callable[[str], str]) -> None:
    module = handler_modules(textwrap.dedent("""
        async def work(spore, ctx):
            return None
    """))
    path = tmp_path / "organism.yaml"
    path.write_text(ORGANISM.format(module=module, more=""))
    organism = Organism.from_file(path)
    async with organism.running(drain_timeout=5):
        client = await client_for(organism)
        try:
            first = await get_json(client, "/dashboard/api/state")
            assert first["reload"] == {"count": 0, "last": None, "history": []}
            path.write_text(ORGANISM.format(
                module=module, more=f'  second: {{handler: "{module}:work"}}\n'))
            assert (await organism.reload()).ok
            path.write_text(ORGANISM.format(module=module, more="  third: {handler: 12}\n"))
            assert not (await organism.reload()).ok
            state = await get_json(client, "/dashboard/api/state")
            refused, applied = state["reload"]["history"]
            assert state["reload"]["count"] == 2
            assert applied["ok"]
            assert applied["added"] == ["second"]
            assert not refused["ok"]
            assert "agents.third.handler" in refused["errors"][0]
            assert state["reload"]["last"]["ok"] is False
            assert state["graph_version"] == first["graph_version"] + 1
            graph = await get_json(client, "/dashboard/api/graph")
            assert "agent:second" in {node["key"] for node in graph["nodes"]}
            assert graph["version"] == state["graph_version"]
        finally:
            await client.close()
        # Once the dashboard is gone, nobody listens: the organism builds no events.
        assert not organism.events.active


# -- the page and the token --------------------------------------------------------------


async def test_page_and_assets_are_served_from_the_package(
        client: TestClient[Any, Any]) -> None:
    page = await client.get("/dashboard/")
    assert page.status == 200
    assert page.content_type == "text/html"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    html = await page.text()
    assert 'src="static/dashboard.js"' in html
    assert "http" not in html.split("<body>")[0]
    for name, kind in [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")]:
        asset = await client.get(f"/dashboard/static/{name}")
        assert asset.status == 200, name
        assert asset.content_type == kind, name
        assert len(await asset.read()) > 1000
    icon = await client.get("/dashboard/static/favicon.svg")
    assert icon.content_type == "image/svg+xml"
    assert (await client.get("/dashboard/static/nope.js")).status == 404
    assert (await client.get("/dashboard/static/..%2Fdashboard.py")).status == 404


async def test_the_token_opens_the_page_once_and_a_cookie_carries_it_on(
        running: Organism) -> None:
    client = await client_for(running, token="s3cret-token")
    try:
        assert (await client.get("/dashboard/", allow_redirects=False)).status == 401
        assert (await client.get("/dashboard/api/state")).status == 401
        first = await client.get("/?token=s3cret-token", allow_redirects=False)
        assert first.status == 302
        assert first.headers["Location"] == "/dashboard/?token=s3cret-token"
        assert "sporeflow_token_test" in first.cookies
        # What the page fetches next carries the cookie only.
        assert (await client.get("/dashboard/static/dashboard.js")).status == 200
        assert (await client.get("/dashboard/api/state")).status == 200
    finally:
        await client.close()


async def test_the_redirect_keeps_the_query_as_it_came(running: Organism,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    # Found by an attacker: the redirect wrote the decoded query into Location, so
    # ?a=%0D%0ASet-Cookie:... was a line break in a header (aiohttp refused it: an empty
    # answer and an ERROR with a traceback) and %2523 came back as %23.
    client = await client_for(running, token="s3cret-token")
    try:
        answer = await client.get("/?token=s3cret-token&a=%0D%0ASet-Cookie:x=1&b=%2523",
                                  allow_redirects=False)
        assert answer.status == 302
        assert answer.headers["Location"] == (
            "/dashboard/?token=s3cret-token&a=%0D%0ASet-Cookie:x=1&b=%2523")
        assert "x" not in answer.cookies
    finally:
        await client.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_it_mounts_on_a_bare_app_and_answers_while_spores_flow(
        running: Organism) -> None:
    app = web.Application()
    mount_dashboard(app, running)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        sending = asyncio.gather(*(running.send("front", {"n": n}) for n in range(50)))
        state = await get_json(client, "/dashboard/api/state")
        await sending
        await running.idle()
        assert state["organism"] == "board"
        assert state["state"] == "running"
        assert set(state["agents"]) == set(running.spec.agents)
