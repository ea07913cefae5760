"""The web dashboard (``sporeflow run --dashboard``): a page and the JSON it polls,
mounted on the control endpoint's aiohttp app, behind the same token.

    GET  /  and  /dashboard               to /dashboard/ (the query, with its token, kept)
    GET  /dashboard/                      the page (static/index.html)
    GET  /dashboard/static/{name}         its script and style, shipped in the wheel
    GET  /dashboard/api/graph             the wiring: nodes (placed) and edges
    GET  /dashboard/api/state             counts per agent, edge and channel, p50/p99,
                                          totals, dead letters by reason, reloads
    GET  /dashboard/api/dead-letters      the table's rows: the newest letters kept, their
                                          errors cut short (?agent= &reason= &limit=)

A letter in full and its replay are the control API's (``GET /v1/dead-letters/{number}``,
``POST /v1/dead-letters/replay``, through ``service.operations``): the page calls them.
Its list gives every letter kept in full, up to ``limits.max_dead_letters``: too much
for a table a page redraws. The token is the control endpoint's (its guard lets the
page's ``?token=`` in and sets a cookie for what the page fetches next).

Everything is read on the event loop: a poll of the state in O(agents + edges), the
list of dead letters in O(letters kept), fetched only when their count changed. Nothing
runs per spore but the edge tally (a ledger hook: a few dictionary updates).
"""

from __future__ import annotations

import json
import mimetypes
from importlib.resources import files
from typing import Any, Protocol

from aiohttp import web

from sporeflow.config.reasons import UnknownReason
from sporeflow.pipeline.core.deadletters import LetterChoice, StoredDeadLetter
from sporeflow.pipeline.core.http_serving import query_whole
from sporeflow.pipeline.service.dashboard_graph import graph_json
from sporeflow.pipeline.service.dashboard_state import (
    EdgeTally,
    LatencyWindow,
    ReloadHistory,
    StatePort,
    state_json,
)
from sporeflow.pipeline.service.operations import Controlled, dead_letters

__all__ = ["PREFIX", "Watched", "mount_dashboard"]


class Watched(StatePort, Controlled, Protocol):
    """What the dashboard uses of an organism (an ``Organism`` is one)."""


PREFIX = "/dashboard"
_LIST_LIMIT, _LIST_MAX = 100, 1000
_ERROR_CHARS = 400  # of a letter's error in the list; `show` has all of it
# Named here, not guessed from the system's MIME table, which differs between hosts.
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml"}
_SECURITY_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the page's URL holds the token
}
_PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                "frame-ancestors 'none'; form-action 'none'")


def mount_dashboard(app: web.Application, organism: Watched) -> None:
    """Serve the dashboard of ``organism`` under ``/dashboard/`` on ``app``.

    From now on the organism's reloads are kept for the page (the last 50), and its
    ledger counts spores per edge of the wiring graph.
    """
    board = _Dashboard(organism)
    app.on_cleanup.append(board.close)
    router = app.router
    router.add_get("/", board.redirect)
    router.add_get(PREFIX, board.redirect)
    router.add_get(f"{PREFIX}/", board.index)
    router.add_get(PREFIX + "/static/{name}", board.asset)
    router.add_get(f"{PREFIX}/api/graph", board.graph)
    router.add_get(f"{PREFIX}/api/state", board.state)
    router.add_get(f"{PREFIX}/api/dead-letters", board.letters)


def _assets() -> dict[str, tuple[bytes, str]]:
    """The static files, read once: body and content type by file name."""
    found: dict[str, tuple[bytes, str]] = {}
    for item in (files(__package__) / "static").iterdir():
        if item.is_file():
            suffix = item.name[item.name.rfind("."):]
            kind = _TYPES.get(suffix) or mimetypes.guess_type(item.name)[0] or "text/plain"
            found[item.name] = (item.read_bytes(), kind)
    return found


class _Dashboard:
    """The dashboard's handlers and what they keep between requests."""

    def __init__(self, organism: Watched) -> None:
        self.organism = organism
        self.assets = _assets()
        self.tally = EdgeTally(organism.wiring)
        organism.add_hook(self.tally)
        self.window = LatencyWindow()
        self.reloads = ReloadHistory(organism.events, organism.masker)
        self._spec, self._version = organism.spec, 1

    async def close(self, _app: web.Application) -> None:
        self.reloads.close()

    # -- the page --------------------------------------------------------------------

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        # Returned, not raised: the token guard then sets its cookie on this answer too.
        # As it came, still percent-encoded: decoded, %0d%0a would be a line break in a
        # header (aiohttp refuses it, with a traceback) and %23 a '#'.
        raw = request.rel_url.raw_query_string
        query = f"?{raw}" if raw else ""
        return web.Response(status=302, headers={"Location": f"{PREFIX}/{query}",
                                                 **_SECURITY_HEADERS})

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.assets["index.html"][0], content_type="text/html",
                            charset="utf-8", headers={**_SECURITY_HEADERS,
                                                      "Content-Security-Policy": _PAGE_POLICY})

    async def asset(self, request: web.Request) -> web.StreamResponse:
        found = self.assets.get(request.match_info["name"])
        if found is None or request.match_info["name"] == "index.html":
            raise web.HTTPNotFound(text="no such file")
        body, kind = found
        return web.Response(body=body, content_type=kind,
                            charset="utf-8" if kind.startswith("text/") else None,
                            headers=_SECURITY_HEADERS)

    # -- what it polls ---------------------------------------------------------------

    def _graph_version(self) -> int:
        """Bumped when the wiring changed (a reload, an added agent, a subscription)."""
        if self.organism.spec is not self._spec:
            self._spec, self._version = self.organism.spec, self._version + 1
        return self._version

    async def graph(self, request: web.Request) -> web.StreamResponse:
        version = self._graph_version()
        return _json({**graph_json(self._spec), "version": version})

    async def state(self, request: web.Request) -> web.StreamResponse:
        return _json(state_json(self.organism, tally=self.tally, window=self.window,
                                reloads=self.reloads, graph_version=self._graph_version()))

    # -- dead letters ------------------------------------------------------------------

    async def letters(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        try:
            choice = LetterChoice(agents=tuple(query.getall("agent", ())),
                                  reasons=tuple(query.getall("reason", ())))
        except UnknownReason as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        limit = query_whole(query, "limit", _LIST_LIMIT, 1, _LIST_MAX)
        kept = dead_letters(self.organism)
        chosen = dead_letters(self.organism, choice) if choice else kept
        store = self.organism.dead_letters
        return _json({
            "total": store.total, "kept": len(kept), "matching": len(chosen),
            "agents": sorted({s.letter.agent for s in kept if s.letter.agent is not None}),
            "reasons": sorted({str(s.letter.reason) for s in kept}),
            "letters": [_row(stored) for stored in reversed(chosen[-limit:])],
        })


def _row(stored: StoredDeadLetter) -> dict[str, Any]:
    """A dead letter as a row of the page's table: what it was and why it failed."""
    letter, spore = stored.letter, stored.letter.spore
    error = letter.error if len(letter.error) <= _ERROR_CHARS else (
        letter.error[:_ERROR_CHARS] + "…")
    return {"number": stored.number, "at": letter.at.isoformat(), "agent": letter.agent,
            "reason": str(letter.reason), "error": error, "attempts": letter.attempts,
            "spore": {"id": spore.id, "type": str(spore.spore_type),
                      "from": spore.from_agent, "to": spore.to_agent,
                      "channel": spore.channel}}


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), content_type="application/json",
                        headers=_SECURITY_HEADERS)
