// The sporeflow dashboard: polls /dashboard/api/state once a second, draws the wiring
// graph that /dashboard/api/graph places, and acts on dead letters. Plain DOM, no build
// step; every text from the organism goes in through textContent, never as HTML.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const query = new URLSearchParams(location.search);
  // How often to poll: ?interval=MS (250 ms to a minute; a second by default).
  const POLL_MS = Math.min(60000, Math.max(250, Number(query.get("interval")) || 1000));
  // The page's URL carries the token (?token=...); the API wants it as a bearer token.
  const token = query.get("token");
  const auth = token ? { Authorization: "Bearer " + token } : {};
  const $ = (id) => document.getElementById(id);

  let graph = null; // the last /api/graph
  let previous = null; // the last /api/state: rates are differences from it
  let lettersSeen = null; // dead-letter counts the table was last drawn for
  let reloadsSeen = null;
  const nodeViews = new Map(); // node key -> its SVG texts
  const edgeViews = new Map(); // "source→target" -> its path and label

  // The dashboard's own JSON is under api/; a letter in full and replays are the
  // control API's, ../v1/ from this page.
  async function api(path, options = {}) {
    const response = await fetch(path, {
      ...options,
      cache: "no-store",
      headers: { ...auth, ...(options.headers || {}) },
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error(body.message || body.error || `${response.status} ${response.statusText}`);
    }
    return body;
  }

  // -- formatting -------------------------------------------------------------------

  const count = (n) => (n === undefined || n === null ? "–" : n.toLocaleString("en-US"));
  function perSecond(r) {
    if (r === null || r === undefined) return "–";
    return r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString("en-US");
  }
  function ms(x) {
    if (x === null || x === undefined) return "–";
    return x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : Math.round(x).toString();
  }
  function duration(seconds) {
    const s = Math.floor(seconds);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
  }
  const pair = (source, target) => source + "→" + target;

  function element(name, attributes = {}, parent = null, namespace = null) {
    const node = namespace ? document.createElementNS(namespace, name)
      : document.createElement(name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    if (parent) parent.appendChild(node);
    return node;
  }
  const svgElement = (name, attributes, parent) => element(name, attributes, parent, SVG);
  function svgText(parent, x, y, cls, text = "") {
    const node = svgElement("text", { x, y, class: cls, "text-anchor": "middle" }, parent);
    node.textContent = text;
    return node;
  }

  // -- the graph ----------------------------------------------------------------------

  function geometry(a, b) {
    // Forward edges leave a node's right side for the next's left; one that skips
    // layers runs above every node. An edge within a layer bends out to the right; one
    // going back leaves by the source's left side, runs under every node and comes up
    // into the target's right side: through the gaps between layers, never across a node.
    const w = graph.node_width, h = graph.node_height;
    const ya = a.y + h / 2, yb = b.y + h / 2;
    if (b.x - a.x > 2 * w) {
      const left = a.x + w + 12, right = b.x - 12, top = 16;
      return {
        d: `M${a.x + w},${ya} L${left},${ya} L${left},${top} L${right},${top} L${right},${yb} L${b.x},${yb}`,
        x: (left + right) / 2, y: top - 4,
      };
    }
    if (b.x > a.x) {
      const x1 = a.x + w, x2 = b.x, dx = (x2 - x1) / 2;
      return {
        d: `M${x1},${ya} C${x1 + dx},${ya} ${x2 - dx},${yb} ${x2},${yb}`,
        x: (x1 + x2) / 2, y: (ya + yb) / 2 - 5,
      };
    }
    if (b.x === a.x) {
      const x = a.x + w, out = x + 36;
      return { d: `M${x},${ya} C${out},${ya} ${out},${yb} ${x},${yb}`, x: out, y: (ya + yb) / 2 };
    }
    const left = a.x - 24, right = b.x + w + 24, low = graph.height + 16;
    return {
      d: `M${a.x},${ya} L${left},${ya} L${left},${low} L${right},${low} L${right},${yb} L${b.x + w},${yb}`,
      x: (left + right) / 2, y: low - 5,
    };
  }

  function addEdge(source, target, kinds, labels, declared) {
    const a = graph.byKey.get(source), b = graph.byKey.get(target);
    if (!a || !b || edgeViews.has(pair(source, target))) return;
    const layer = $("graph").querySelector(".edges");
    const { d, x, y } = geometry(a, b);
    const dashed = kinds.every((kind) => kind === "peer" || kind === "publish");
    const cls = declared ? `edge ${kinds.join(" ")}${dashed ? " dashed" : ""}` : "edge observed";
    const group = svgElement("g", { class: cls, "data-source": source, "data-target": target },
      layer);
    const path = svgElement("path", { d, "marker-end": "url(#arrow)" }, group);
    svgElement("title", {}, path).textContent =
      `${a.label} → ${b.label}: ${declared ? kinds.join(", ") : "not declared"}`;
    const text = [...new Set(labels.filter(Boolean))].join(", ");
    const label = svgText(group, x, y, "edge-label", text);
    edgeViews.set(pair(source, target), { group, label, text });
  }

  function addNode(layer, node) {
    const w = graph.node_width, h = graph.node_height;
    const group = svgElement("g", {
      class: `node ${node.kind}`, transform: `translate(${node.x},${node.y})`,
      "data-key": node.key, "data-name": node.name,
    }, layer);
    const rounded = node.kind === "agent" ? 8 : h / 2;
    svgElement("rect", { width: w, height: h, rx: rounded, ry: rounded }, group);
    svgElement("title", {}, group).textContent =
      node.description ? `${node.label}: ${node.description}` : node.label;
    // An agent has two lines of numbers under its name, a channel one, the outside none.
    svgText(group, w / 2, { agent: 19, channel: 24 }[node.kind] || 32, "name", node.label);
    const view = { group };
    if (node.kind === "agent") {
      view.flow = svgText(group, w / 2, 35, "metrics", "– /s · queued –");
      view.latency = svgText(group, w / 2, 48, "metrics", "p50 – · p99 – ms");
      const badge = svgElement("g", { class: "failures", transform: `translate(${w - 4},4)` },
        group);
      svgElement("circle", { r: 11 }, badge);
      view.failed = svgText(badge, 0, 4, "failures-text", "");
      view.badge = badge;
    } else if (node.kind === "channel") {
      view.flow = svgText(group, w / 2, 41, "metrics", "–/s to subscribers");
    }
    nodeViews.set(node.key, view);
  }

  function drawGraph(data) {
    graph = { ...data, byKey: new Map(data.nodes.map((node) => [node.key, node])) };
    const svg = $("graph");
    svg.replaceChildren();
    nodeViews.clear();
    edgeViews.clear();
    // Room under the nodes for edges that go back; drawn to the frame's width at most.
    const height = data.height + 24;
    svg.setAttribute("viewBox", `0 0 ${data.width} ${height}`);
    svg.style.maxWidth = `${data.width}px`;
    const defs = svgElement("defs", {}, svg);
    const marker = svgElement("marker", {
      id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7,
      markerHeight: 7, orient: "auto-start-reverse",
    }, defs);
    svgElement("path", { d: "M0,0 L10,5 L0,10 z" }, marker);
    svgElement("g", { class: "edges" }, svg);
    const byPair = new Map();
    for (const edge of data.edges) {
      const key = pair(edge.source, edge.target);
      if (!byPair.has(key)) byPair.set(key, { ...edge, kinds: [], labels: [] });
      byPair.get(key).kinds.push(edge.kind);
      byPair.get(key).labels.push(edge.label);
    }
    for (const edge of byPair.values()) {
      addEdge(edge.source, edge.target, edge.kinds, edge.labels, true);
    }
    const nodes = svgElement("g", { class: "nodes" }, svg);
    for (const node of data.nodes) addNode(nodes, node);
  }

  async function loadGraph() {
    drawGraph(await api("api/graph"));
    $("organism").textContent = graph.organism;
    document.title = `${graph.organism} · sporeflow`;
    previous = null; // new edges and nodes: start the rates afresh
  }

  // -- tables ---------------------------------------------------------------------------

  function syncRows(tbody, names, attribute, columns) {
    // One row per name, in order; rows of names gone are removed.
    const rows = new Map([...tbody.rows].map((row) => [row.getAttribute(attribute), row]));
    for (const name of names) {
      let row = rows.get(name);
      if (!row) {
        row = element("tr", { [attribute]: name });
        element("th", { scope: "row" }, row).textContent = name;
        for (const column of columns) element("td", { class: column }, row);
      }
      tbody.appendChild(row); // moves it into order
      rows.delete(name);
    }
    for (const row of rows.values()) row.remove();
    return (name, column) => tbody.querySelector(`tr[${attribute}="${CSS.escape(name)}"] td.${column}`);
  }

  // -- one poll -------------------------------------------------------------------------

  function update(state) {
    const dt = previous ? state.at - previous.at : 0;
    const rateOf = (now, before) => (dt > 0 && before !== undefined
      ? Math.max(0, now - before) / dt : null);

    $("state").textContent = state.state;
    $("state").className = `badge ${state.state}`;
    $("uptime").textContent = duration(state.uptime_s);
    $("total-admitted").textContent = count(state.totals.admitted);
    $("total-handled").textContent = count(state.totals.handled);
    $("total-rate").textContent = perSecond(
      rateOf(state.totals.handled, previous && previous.totals.handled));
    $("total-held").textContent = count(state.totals.held);
    $("total-dead").textContent = count(state.dead_letters.total);
    $("total-dead").classList.toggle("alarm", state.dead_letters.total > 0);
    $("total-reloads").textContent = count(state.reload.count);

    const agentNames = Object.keys(state.agents);
    const cell = syncRows($("agents").tBodies[0], agentNames, "data-agent", [
      "received", "handled", "rate", "failed", "retried", "in_flight", "queued", "p50", "p99"]);
    for (const name of agentNames) {
      const agent = state.agents[name];
      const before = previous && previous.agents[name];
      const rate = rateOf(agent.handled, before && before.handled);
      const p50 = agent.recent.count ? agent.recent.p50_ms : agent.latency.p50_ms;
      const p99 = agent.recent.count ? agent.recent.p99_ms : agent.latency.p99_ms;
      for (const key of ["received", "handled", "failed", "retried", "in_flight", "queued"]) {
        cell(name, key).textContent = count(agent[key]);
      }
      cell(name, "failed").classList.toggle("alarm", agent.failed > 0);
      cell(name, "rate").textContent = perSecond(rate);
      cell(name, "p50").textContent = ms(p50);
      cell(name, "p99").textContent = ms(p99);
      const view = nodeViews.get("agent:" + name);
      if (view) {
        view.flow.textContent = `${perSecond(rate)}/s · queued ${count(agent.queued)}`;
        view.latency.textContent = `p50 ${ms(p50)} · p99 ${ms(p99)} ms`;
        view.failed.textContent = agent.failed > 99 ? "99+" : String(agent.failed);
        view.badge.classList.toggle("shown", agent.failed > 0);
        view.group.classList.toggle("busy", agent.in_flight > 0 || agent.queued > 0);
      }
    }

    const channelNames = Object.keys(state.channels);
    const channelCell = syncRows($("channels").tBodies[0], channelNames, "data-channel",
      ["broadcasts", "deliveries", "refused"]);
    for (const name of channelNames) {
      const channel = state.channels[name];
      for (const key of ["broadcasts", "deliveries", "refused"]) {
        channelCell(name, key).textContent = count(channel[key]);
      }
    }

    const counts = new Map(previous ? previous.edges.map((e) => [pair(e.source, e.target), e.count])
      : []);
    const handedOn = new Map(); // channel key -> spores its subscribers took, per second
    for (const edge of state.edges) {
      const key = pair(edge.source, edge.target);
      if (!edgeViews.has(key)) addEdge(edge.source, edge.target, [], [], false);
      const view = edgeViews.get(key);
      if (!view) continue; // a node the drawn graph does not have (yet)
      const rate = rateOf(edge.count, counts.has(key) ? counts.get(key) : (previous ? 0 : undefined));
      const flowing = rate !== null && rate > 0;
      if (edge.source.startsWith("channel:") && rate !== null) {
        handedOn.set(edge.source, (handedOn.get(edge.source) || 0) + rate);
      }
      // A rate only while spores flow: idle edges keep their quiet label.
      view.label.textContent = [view.text, flowing ? `${perSecond(rate)}/s` : ""]
        .filter(Boolean).join(" · ");
      view.group.classList.toggle("flowing", flowing);
      view.group.setAttribute("data-count", edge.count);
    }

    for (const [key, view] of nodeViews) {
      if (key.startsWith("channel:")) {
        const rate = previous ? handedOn.get(key) || 0 : null;
        view.flow.textContent = `${perSecond(rate)}/s to subscribers`;
      }
    }

    const seen = `${state.dead_letters.total}/${state.dead_letters.kept}`;
    if (seen !== lettersSeen) {
      lettersSeen = seen;
      refreshLetters().catch(showProblem);
    }
    const reloads = `${state.reload.count}/${state.reload.history.length}`;
    if (reloads !== reloadsSeen) {
      reloadsSeen = reloads;
      drawReloads(state.reload);
    }
    previous = state;
  }

  // -- dead letters ---------------------------------------------------------------------

  function setOptions(select, values) {
    const chosen = select.value;
    const wanted = ["", ...values];
    if (chosen && !wanted.includes(chosen)) wanted.push(chosen);
    select.replaceChildren(...wanted.map((value) => {
      const option = element("option", { value });
      option.textContent = value || "all";
      return option;
    }));
    select.value = chosen;
  }

  async function refreshLetters() {
    const query = new URLSearchParams();
    if ($("filter-agent").value) query.append("agent", $("filter-agent").value);
    if ($("filter-reason").value) query.append("reason", $("filter-reason").value);
    const data = await api("api/dead-letters?" + query);
    setOptions($("filter-agent"), data.agents);
    setOptions($("filter-reason"), data.reasons);
    $("dead-summary").textContent = `${count(data.kept)} kept, ${count(data.total)} in all`
      + (data.matching !== data.kept ? ` · ${count(data.matching)} match` : "");
    const tbody = $("dead-letters").tBodies[0];
    tbody.replaceChildren(...data.letters.map((letter) => {
      const row = element("tr", { "data-number": letter.number });
      const cells = [
        String(letter.number), new Date(letter.at).toLocaleTimeString(), letter.agent || "–",
        letter.reason, letter.error,
        `${letter.spore.id} ${letter.spore.from} → ${letter.spore.to || "#" + letter.spore.channel}`,
      ];
      const classes = ["number", "at", "agent", "reason", "error", "spore"];
      cells.forEach((text, index) => {
        element("td", { class: classes[index] }, row).textContent = text;
      });
      const actions = element("td", { class: "actions" }, row);
      const show = element("button", { type: "button", class: "show" }, actions);
      show.textContent = "Show";
      show.addEventListener("click", () => showLetter(letter.number).catch(showProblem));
      const replay = element("button", { type: "button", class: "replay" }, actions);
      replay.textContent = "Replay";
      replay.addEventListener("click", () => replayLetters([letter.number]).catch(showProblem));
      return row;
    }));
    $("no-dead-letters").hidden = data.letters.length > 0;
    $("replay-shown").disabled = data.letters.length === 0;
  }

  async function showLetter(number) {
    const letter = await api("../v1/dead-letters/" + number);
    const { traceback, ...rest } = letter;
    $("letter-number").textContent = String(number);
    $("letter-body").textContent = JSON.stringify(rest, null, 2)
      + (traceback ? "\n\n" + traceback : "");
    $("letter-detail").hidden = false;
  }

  async function replayLetters(numbers) {
    const result = await api("../v1/dead-letters/replay", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ids: numbers }),
    });
    const problems = result.problems.length ? ` · refused: ${result.problems.join("; ")}` : "";
    $("replay-result").textContent = `replayed ${result.replayed}` + problems;
    lettersSeen = null;
    await refreshLetters();
  }

  // -- reloads --------------------------------------------------------------------------

  function summary(report) {
    const parts = [];
    if (report.added.length) parts.push(`added ${report.added.join(", ")}`);
    if (report.removed.length) parts.push(`removed ${report.removed.join(", ")}`);
    const changed = Object.keys(report.changed || {});
    if (changed.length) parts.push(`changed ${changed.join(", ")}`);
    if (report.errors.length) parts.push(report.errors.join("; "));
    return parts.join(" · ") || "nothing changed";
  }

  function drawReloads(reload) {
    const last = reload.history[0] || reload.last;
    if (last) {
      const when = last.at ? ` at ${new Date(last.at).toLocaleTimeString()}` : "";
      $("reload-status").textContent =
        `${count(reload.count)} reload(s); the last was ${last.ok ? "applied" : "refused"}${when}: ${summary(last)}`;
      $("reload-status").className = last.ok ? "" : "problem";
    }
    $("reload-history").replaceChildren(...reload.history.map((entry) => {
      const item = element("li", { class: entry.ok ? "applied" : "refused" });
      const when = element("time", { datetime: entry.at }, item);
      when.textContent = new Date(entry.at).toLocaleTimeString();
      element("span", { class: "outcome" }, item).textContent = entry.ok ? "applied" : "refused";
      element("span", { class: "what" }, item).textContent = summary(entry);
      return item;
    }));
  }

  // -- running ------------------------------------------------------------------------

  function showProblem(error) {
    $("connection").textContent = `Cannot reach the organism: ${error.message}`;
    $("connection").hidden = false;
  }

  let polls = 0;

  async function poll() {
    try {
      const state = await api("api/state");
      if (!graph || state.graph_version !== graph.version) await loadGraph();
      update(state);
      $("connection").hidden = true;
      // How many polls the page has drawn: what a test (or a curious reader) waits on.
      document.body.dataset.polls = String(++polls);
    } catch (error) {
      showProblem(error);
      $("state").textContent = "unreachable";
      $("state").className = "badge failed";
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  function start() {
    for (const id of ["filter-agent", "filter-reason"]) {
      $(id).addEventListener("change", () => refreshLetters().catch(showProblem));
    }
    $("replay-shown").addEventListener("click", () => {
      const numbers = [...$("dead-letters").tBodies[0].rows].map(
        (row) => Number(row.getAttribute("data-number")));
      replayLetters(numbers).catch(showProblem);
    });
    $("letter-close").addEventListener("click", () => { $("letter-detail").hidden = true; });
    poll();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
