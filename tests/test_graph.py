"""The wiring graph: Mermaid and DOT that real parsers accept, naming every agent and route.

DOT is checked by Graphviz itself (``dot -Tjson``). Mermaid is checked by a strict
parse of the flowchart subset the renderer emits, and, when ``SPOREFLOW_MERMAID_DIR``
names a folder whose node_modules hold ``mermaid`` and ``jsdom`` (``npm install
mermaid@11 jsdom``), by mermaid's own parser under Node.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sporeflow.config import OrganismSpec, load_organism, organism_from_dict
from sporeflow.pipeline import render_dot, render_mermaid, wiring
from sporeflow.pipeline.cli.main import cli

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "organism.yaml"
Edge = tuple[str, str, str]  # source name, target name, label ("" for a subscription)

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
MERMAID_DIR = os.environ.get("SPOREFLOW_MERMAID_DIR")
needs_mermaid = pytest.mark.skipif(
    not (MERMAID_DIR and shutil.which("node")),
    reason="set SPOREFLOW_MERMAID_DIR to a folder with `npm install mermaid@11 jsdom`")

MERMAID_CHECK = """
import { JSDOM } from 'jsdom';
import fs from 'fs';
const dom = new JSDOM('');
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import('mermaid');
for (const chart of fs.readFileSync(0, 'utf8').split('\\0')) {
  try { await mermaid.parse(chart); console.log('ok'); }
  catch (error) { console.log('error: ' + error.message.split('\\n').join(' ')); }
}
"""


async def noop(spore: Any, ctx: Any) -> None:
    return None


def wired() -> OrganismSpec:
    """Every kind of edge: boot, subscription, emit to agent and to channel, peers,
    a publish list, and names Mermaid would trip over (a keyword, dots, dashes)."""
    return organism_from_dict({
        "organism": {"name": "wired", "backend": "amqp://admin:s3cr3t-pw@broker:5672/"},
        "channels": {"news": {"publish": ["end", "a.b"]}, "quiet": {}},
        "agents": {
            "end": {"handler": noop, "boot": {"token": "hunter2"}, "emit": {"channel": "news"}},
            "a.b": {"handler": noop, "subscribe": ["news"], "emit": {"to": "a-b"},
                    "concurrency": 3},
            "a-b": {"handler": noop, "subscribe": ["news"], "peers": ["a_b", "end"]},
            "a_b": {"handler": noop, "subscribe": ["dead-letter"]},
        },
    })


WIRED_EDGES = {
    ("outside", "end", "boot"),
    ("end", "news", "emit"),
    ("news", "a.b", ""),
    ("news", "a-b", ""),
    ("a.b", "a-b", "emit"),
    ("dead-letter", "a_b", ""),
    ("a-b", "a_b", "peer"),
    ("a-b", "end", "peer"),
    ("a.b", "news", "may publish"),
}


# -- parsing what was rendered ------------------------------------------------------------

NODE = re.compile(r'^    (?P<id>[A-Za-z][A-Za-z0-9_]*)'
                  r'(?:\["(?P<box>[^"]+)"\]|\[\("(?P<cyl>[^"]+)"\)\]|\(\("(?P<circle>[^"]+)"\)\)'
                  r'|\[/"(?P<input>[^"]+)"/\])$')
EDGE = re.compile(r'^    (?P<src>[A-Za-z][A-Za-z0-9_]*) (?P<arrow>-->|-\.->)'
                  r'(?:\|"(?P<label>[^"]+)"\|)? (?P<dst>[A-Za-z][A-Za-z0-9_]*)$')


def parse_mermaid(text: str) -> tuple[dict[str, str], set[Edge]]:
    """Strictly parse the flowchart subset we emit: node names by id, and edges.

    Any line outside the grammar, an edge to an undeclared node, a duplicate id,
    or an id that is a flowchart keyword fails the test.
    """
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    names: dict[str, str] = {}
    edges: set[Edge] = set()
    for line in lines[1:]:
        if line.startswith("    %% "):
            continue
        if node := NODE.match(line):
            ident = node["id"]
            assert ident not in names, line
            assert ident not in ("end", "graph", "subgraph"), line
            label = node["box"] or node["cyl"] or node["circle"] or node["input"]
            names[ident] = label.split(" ×")[0]
        elif edge := EDGE.match(line):
            assert edge["src"] in names, line
            assert edge["dst"] in names, line
            edges.add((names[edge["src"]], names[edge["dst"]], edge["label"] or ""))
        else:
            pytest.fail(f"not in the flowchart grammar we emit: {line!r}")
    return names, edges


def parse_dot(text: str) -> tuple[set[str], set[Edge]]:
    """Let Graphviz parse the DOT; return its node labels and labelled edges."""
    done = subprocess.run(["dot", "-Tjson"], input=text.encode(), capture_output=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    graph = json.loads(done.stdout)
    labels = {o["_gvid"]: o["label"].split(" ×")[0] for o in graph["objects"]}
    edges = {(labels[e["tail"]], labels[e["head"]], e.get("label", ""))
             for e in graph.get("edges", [])}
    return set(labels.values()), edges


def mermaid_verdicts(*charts: str) -> list[str]:
    """Mermaid's own parser on each chart (one Node process): 'ok' or 'error: ...'."""
    done = subprocess.run(["node", "--input-type=module", "-e", MERMAID_CHECK],
                          input="\0".join(charts).encode(), capture_output=True,
                          cwd=MERMAID_DIR, check=False, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().splitlines()


def declared_routes(spec: OrganismSpec) -> set[Edge]:
    """Every route the spec declares, read straight from it (boot, subscribe, emit)."""
    routes: set[Edge] = set()
    for agent in spec.agents.values():
        if agent.boot is not None:
            routes.add(("outside", agent.name, "boot"))
        routes |= {(channel, agent.name, "") for channel in agent.subscribe}
        if agent.emit is not None:
            routes.add((agent.name, agent.emit.to or agent.emit.channel or "", "emit"))
    return routes


# -- the demo -------------------------------------------------------------------------------


def test_demo_mermaid_follows_the_grammar_and_names_every_agent_and_route() -> None:
    spec = load_organism(DEMO)
    names, edges = parse_mermaid(render_mermaid(spec))
    assert set(spec.agents) <= set(names.values())
    assert declared_routes(spec) <= edges
    peers = {(a.name, p) for a in spec.agents.values() for p in a.peers or ()}
    assert peers <= {(src, dst) for src, dst, _ in edges}


@needs_dot
def test_demo_dot_parses_with_graphviz_and_names_every_agent_and_route() -> None:
    spec = load_organism(DEMO)
    names, edges = parse_dot(render_dot(spec))
    assert set(spec.agents) <= names
    assert declared_routes(spec) <= edges


@needs_mermaid
def test_mermaids_own_parser_accepts_the_demo_and_awkward_names() -> None:
    demo, awkward = render_mermaid(load_organism(DEMO)), render_mermaid(wired())
    # The third chart shows the check can fail: a node id `end` breaks a flowchart.
    verdicts = mermaid_verdicts(demo, awkward, "flowchart LR\n    end --> b\n")
    assert verdicts[:2] == ["ok", "ok"]
    assert verdicts[2].startswith("error: Parse error")


# -- what the graph holds ------------------------------------------------------------------


def test_every_kind_of_edge_is_drawn_once() -> None:
    graph = wiring(wired())
    keys = {node.key: node.label.split(" ×")[0] for node in graph.nodes}
    drawn = {(keys[e.source], keys[e.target], e.label) for e in graph.edges}
    assert drawn == WIRED_EDGES
    assert len(graph.edges) == len(WIRED_EDGES)


def test_both_renderings_agree_with_the_wiring() -> None:
    spec = wired()
    names, edges = parse_mermaid(render_mermaid(spec))
    assert edges == WIRED_EDGES
    assert sorted(names.values()) == sorted(
        ["outside", "end", "a.b", "a-b", "a_b", "news", "quiet", "dead-letter"])
    if shutil.which("dot"):
        assert parse_dot(render_dot(spec))[1] == WIRED_EDGES


def test_concurrency_is_shown_and_channels_are_their_own_shape() -> None:
    text = render_mermaid(wired())
    assert '["a.b ×3"]' in text
    assert '[("news")]' in text
    assert '["a-b"]' in text  # concurrency 1 is not shown


def test_builtin_channels_appear_only_when_used() -> None:
    without = organism_from_dict({"agents": {"x": {"handler": noop, "emit": {"channel": "c"}}},
                                  "channels": {"c": {}}})
    labels = {node.label for node in wiring(without).nodes}
    assert labels == {"x", "c"}
    assert "dead-letter" in {node.label for node in wiring(wired()).nodes}


def fed(monkeypatch: pytest.MonkeyPatch) -> OrganismSpec:
    """Sources of each kind, to an agent and to a channel; an http one with no target."""
    monkeypatch.delenv("GRAPH_TOKEN", raising=False)  # the graph is drawn without the secret
    return organism_from_dict({
        "channels": {"events": {}},
        "agents": {"reader": {"handler": noop}, "other": {"handler": noop,
                                                          "subscribe": ["events"]}},
        "sources": {"inbox": {"kind": "folder", "path": ".", "to": "reader"},
                    "tick": {"kind": "timer", "every": "1s", "channel": "events"},
                    "api": {"kind": "http", "port": 8080, "token_env": "GRAPH_TOKEN"}}})


FED_EDGES = {("inbox (folder)", "reader", ""), ("tick (timer)", "events", ""),
             ("events", "other", "")}


def test_each_source_is_a_node_with_an_edge_to_what_it_feeds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = fed(monkeypatch)
    graph = wiring(spec)
    kinds = {node.key: node.kind for node in graph.nodes}
    assert {key for key, kind in kinds.items() if kind == "source"} == {
        "source:inbox", "source:tick", "source:api"}
    assert {(e.source, e.target, e.kind) for e in graph.edges if e.kind == "feed"} == {
        ("source:inbox", "agent:reader", "feed"), ("source:tick", "channel:events", "feed")}
    names, edges = parse_mermaid(render_mermaid(spec))
    assert edges == FED_EDGES
    assert "api (http)" in names.values()  # its target is each request's: no edge
    text = render_dot(spec)
    assert '"source:inbox" [label="inbox (folder)", shape=parallelogram' in text
    assert '"source:inbox" -> "agent:reader";' in text
    if shutil.which("dot"):
        assert parse_dot(text)[1] == FED_EDGES


def test_secrets_never_appear_in_the_graph() -> None:
    spec = wired()
    for text in (render_mermaid(spec), render_dot(spec)):
        assert "s3cr3t" not in text
        assert "hunter2" not in text
        assert "admin" not in text
        assert "noop" not in text  # no handler paths either


# -- the command -----------------------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["graph", *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_prints_mermaid_by_default_and_dot_on_request() -> None:
    code, out, _ = invoke(str(DEMO))
    assert code == 0
    assert out == render_mermaid(load_organism(DEMO))
    code, out, _ = invoke(str(DEMO), "--format", "dot")
    assert code == 0
    assert out.startswith('digraph "stdlib-wordcount" {')


@needs_dot
def test_cli_draws_an_svg(tmp_path: Path) -> None:
    target = tmp_path / "wiring.svg"
    code, _, err = invoke(str(DEMO), "--output", str(target))
    assert code == 0, err
    svg = target.read_text()
    assert svg.lstrip().startswith("<?xml")
    assert "<svg" in svg
    for agent in load_organism(DEMO).agents:
        assert f">{agent}" in svg


def test_cli_without_graphviz_says_how_to_get_it(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, err = invoke(str(DEMO), "--output", str(tmp_path / "wiring.png"))
    assert code == 1
    assert err.startswith("SporeflowError: drawing ")
    assert "needs Graphviz's 'dot' command" in err
    assert f"--output {tmp_path / 'wiring.dot'}" in err
    assert not (tmp_path / "wiring.png").exists()


def test_cli_writes_text_forms_by_suffix(tmp_path: Path) -> None:
    spec = load_organism(DEMO)
    for name, expected in (("g.dot", render_dot(spec)), ("g.mmd", render_mermaid(spec)),
                           ("g.md", f"```mermaid\n{render_mermaid(spec)}```\n")):
        code, _, err = invoke(str(DEMO), "-o", str(tmp_path / name))
        assert code == 0, err
        assert (tmp_path / name).read_text() == expected


def test_cli_refuses_a_format_that_contradicts_the_suffix(tmp_path: Path) -> None:
    code, _, err = invoke(str(DEMO), "--format", "mermaid", "-o", str(tmp_path / "g.dot"))
    assert code == 1
    assert "is dot but --format is mermaid" in err
    code, _, err = invoke(str(DEMO), "-o", str(tmp_path / "g.txt"))
    assert code == 1
    assert "unknown suffix '.txt'" in err


def test_cli_bad_organism_is_one_clear_line() -> None:
    code, _, err = invoke("/no/such/organism.yaml")
    assert code == 1
    assert err.startswith("ConfigError: 1 problem in the organism")
