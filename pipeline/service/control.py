"""The control endpoint of a running organism: a small JSON API, served by ``sporeflow
run`` on a Unix socket (``service.address``) and, on request, over HTTP on 127.0.0.1
with a bearer token.

    GET  /v1/health                  alive: 200 while the process serves
    GET  /v1/ready                   200 once started (over a broker: connected), else 503
    GET  /v1/process                 this process: its pid and the agents it hosts (over a
                                     broker, an organism may run in several processes)
    GET  /v1/stats                   organism.stats()
    POST /v1/send                    {to | channel, knowledge, sender?, request?, timeout?,
                                      metadata?, priority?, expires_in?} -> the spore's
                                      fate, or the response
    GET  /v1/events                  NDJSON of spore events; ?agent= &channel= &type=
                                     &event= (repeatable) &knowledge=false &until_idle=true
    POST /v1/reload                  the reload's report (422 when refused)
    GET  /v1/dead-letters            ?agent= &reason= &id= (repeatable) &limit= &after=
    GET  /v1/dead-letters/{number}
    GET  /v1/trace?id=SPORE_ID       the steps of the tree of spores it produced, from the
                                     recent window (``observe.lineage``); 404 when not in it
    GET  /v1/trace?conversation=ID   the steps of that conversation this process holds
    POST /v1/dead-letters/replay     {agents?, reasons?, ids?, all?}
    POST /v1/dead-letters/purge      {agents?, reasons?, ids?, all?}: deleted for good

Every route goes through ``service.operations``, which uses the organism's public API
only: a spore sent here passes every stage, like any other. What is answered is masked
with the organism's masker. Over HTTP every route but health and ready (for probes)
needs the token: ``Authorization: Bearer TOKEN``, or ``?token=TOKEN`` once in a browser,
which sets a cookie for the pages that follow.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from aiohttp import web

from sporeflow.config import OrganismSpec, SporeflowError, did_you_mean
from sporeflow.config.json_shape import writable_json
from sporeflow.config.reasons import UnknownReason
from sporeflow.pipeline.core.deadletters import (
    LetterChoice,
    NoSuchDeadLetter,
    StoredDeadLetter,
    UnknownAgent,
    letter_number,
)
from sporeflow.pipeline.core.http_serving import (
    BEARER_CHALLENGE,
    application,
    bearer_token,
    error_response,
    json_body,
    query_whole,
    read_body,
    token_matches,
)
from sporeflow.pipeline.core.ledger import LedgerHook
from sporeflow.pipeline.core.lineage import trace_tree, tree_steps
from sporeflow.pipeline.observe.events import Event, EventStream
from sporeflow.pipeline.observe.lineage import TraceWindow
from sporeflow.pipeline.reload.diff import ReloadReport
from sporeflow.pipeline.service import operations
from sporeflow.pipeline.service.following import SPORE_EVENT_KINDS, TailFilter, event_line
from sporeflow.steps import SporeType

__all__ = ["ControlOrganism", "OPEN_ROUTES", "control_app", "token_guard"]

OPEN_ROUTES = frozenset({"/v1/health", "/v1/ready"})  # probes carry no token
_MAX_BODY = 1 << 20  # at least; a send's body is bounded by the organism's spore limit:
# JSON's escapes (what the command line's client writes) make of a character of 2 to 4
# bytes in UTF-8, as limits.max_spore_bytes measures it, at most 3 times as many bytes.
_ESCAPED, _FIELDS = 3, 64 << 10  # and the body's other fields
_SPORE_LIMIT = web.AppKey("spore_limit", int)
_MAX_TIMEOUT = 24 * 3600.0
_SEND_KEYS = frozenset({"to", "channel", "knowledge", "sender", "request", "timeout",
                        *operations.SEND_OPTIONS})
_REPLAY_KEYS = frozenset({"agents", "reasons", "ids", "all"})


class ControlOrganism(operations.Controlled, Protocol):
    """What the endpoint uses of an organism, beyond the operations: its spec, ``idle``."""

    @property
    def spec(self) -> OrganismSpec: ...

    async def idle(self) -> None: ...

    def add_hook(self, hook: LedgerHook) -> None: ...

    @property
    def journal(self) -> Any: ...  # its ``path``, or None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def control_app(organism: ControlOrganism, *,
                on_reload: Callable[[ReloadReport], None] | None = None,
                middlewares: tuple[Any, ...] = (),
                trace: TraceWindow | None = None) -> web.Application:
    """The API's routes over ``organism``; ``on_reload`` hears of each reload done here;
    ``trace``: the window the trace route reads (None: one is made and attached)."""
    # What organism.send takes, this takes; the chain judges the spore's size itself.
    bound = max(_MAX_BODY, _ESCAPED * organism.spec.limits.max_spore_bytes + _FIELDS)
    app = application(middlewares=[*middlewares, _errors], client_max_size=bound)
    app[_SPORE_LIMIT] = organism.spec.limits.max_spore_bytes
    if trace is None:
        trace = TraceWindow()
        organism.add_hook(trace)
    routes = _Routes(organism, on_reload, trace)
    app.add_routes([
        web.get("/v1/", routes.index),
        web.get("/v1/health", routes.health),
        web.get("/v1/ready", routes.ready),
        web.get("/v1/process", routes.process),
        web.get("/v1/stats", routes.stats),
        web.post("/v1/send", routes.send),
        web.get("/v1/events", routes.events),
        web.post("/v1/reload", routes.reload),
        web.get("/v1/dead-letters", routes.dead_letters),
        web.get("/v1/dead-letters/{number}", routes.dead_letter),
        web.post("/v1/dead-letters/replay", routes.replay),
        web.post("/v1/dead-letters/purge", routes.purge),
        web.get("/v1/trace", routes.trace),
    ])
    app.on_shutdown.append(routes.end_streams)
    return app


def token_guard(token: str, cookie: str | None = None) -> Any:
    """A middleware that lets through requests carrying ``token`` (header, query or the
    cookie ``cookie``, which a right ``?token=`` sets), and the open routes. The cookie is
    named by the port unless ``cookie`` is given: browsers share cookies between the
    ports of a host, and two organisms may serve on one."""
    expected = token.encode()

    def right(given: str | None) -> bool:
        return token_matches(given, expected)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_ROUTES:
            return await handler(request)
        name = cookie or f"sporeflow_token_{request.url.port or 0}"
        bearer = bearer_token(request)
        query = request.query.get("token")
        if right(bearer) or right(request.cookies.get(name)) or right(query):
            response = await handler(request)
            if right(query) and not response.prepared:  # a browser: keep it for the pages
                response.set_cookie(name, token, httponly=True, samesite="Strict",
                                    path="/")
            return response
        return error_response(
            401, "Unauthorized",
            "this endpoint needs its token: send `Authorization: Bearer TOKEN` (or "
            "?token=TOKEN in a browser); `sporeflow run` printed it, and wrote it next to "
            "the control socket", headers=BEARER_CHALLENGE)

    return guard


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A bad request is answered in JSON, naming what was wrong."""
    try:
        return await handler(request)
    except _BadRequest as exc:
        return error_response(400, "BadRequest", str(exc))
    except web.HTTPRequestEntityTooLarge as exc:  # a body past what a spore may weigh
        limit = request.app[_SPORE_LIMIT]
        return error_response(exc.status, "RequestEntityTooLarge", (
            f"the request body is over {request.client_max_size:,} bytes, more than a spore "
            f"within limits.max_spore_bytes={limit:,} can be as JSON: send less, or raise "
            f"limits.max_spore_bytes in the organism file (at the next start)"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        said = exc.text if exc.text != f"{exc.status}: {exc.reason}" else None  # a handler's
        return error_response(exc.status, exc.reason.replace(" ", ""), said or (
            f"{request.method} {request.path}: {exc.reason.lower()}; the routes are listed "
            f"at GET /v1/"))


_MAX_BUFFER = 100_000  # events a slow follower may have waiting (?buffer=)
_PAGE, _MAX_PAGE = 500, 5_000  # dead letters an answer lists (?limit=), then ?after=next


class _BadRequest(Exception):
    pass


def _letter_choice(agents: Iterable[str], reasons: Iterable[str],
                   ids: Iterable[str]) -> LetterChoice:
    try:
        return LetterChoice(tuple(agents), tuple(reasons), tuple(ids))
    except UnknownReason as exc:
        raise _BadRequest(str(exc)) from None


class _Routes:
    def __init__(self, organism: ControlOrganism,
                 on_reload: Callable[[ReloadReport], None] | None,
                 window: TraceWindow) -> None:
        self.organism = organism
        self.on_reload = on_reload
        self.window = window
        self.streams: set[EventStream] = set()  # the followers' (GET /v1/events)

    async def end_streams(self, app: web.Application) -> None:
        """The endpoint closes: end every follower's stream (what is buffered is sent)."""
        for stream in list(self.streams):
            stream.close()

    def json(self, data: Any, status: int = 200,
             headers: dict[str, str] | None = None) -> web.Response:
        """``data`` as JSON, masked: a spore or an error may quote the organism's secrets."""
        text = self.organism.masker.mask(writable_json(data, default=str))
        return web.Response(status=status, text=text, content_type="application/json",
                            headers=headers)

    def not_ready(self) -> web.Response | None:
        """503 with Retry-After while the organism does not take spores."""
        ready, why = operations.readiness(self.organism)
        if ready:
            return None
        return error_response(503, "NotReady", f"organism {self.organism.spec.name!r}: {why}; "
                              f"GET /v1/ready answers 200 once it takes spores",
                              headers={"Retry-After": "1"})

    async def index(self, request: web.Request) -> web.Response:
        routes = sorted({f"{r.method} {r.resource.canonical}" for r in request.app.router.routes()
                         if r.resource is not None and r.method != "HEAD"})
        return self.json({"organism": self.organism.spec.name, "routes": routes})

    async def health(self, request: web.Request) -> web.Response:
        return self.json({"alive": True, "organism": self.organism.spec.name,
                          "state": self.organism.state, "pid": os.getpid()})

    async def ready(self, request: web.Request) -> web.Response:
        ready, why = operations.readiness(self.organism)
        return self.json({"ready": ready, "organism": self.organism.spec.name, "why": why},
                         status=200 if ready else 503)

    async def process(self, request: web.Request) -> web.Response:
        # Not an open route: which agents run where is the organism's business.
        spec, hosted = self.organism.spec, self.organism.hosted
        return self.json({"organism": spec.name, "pid": os.getpid(),
                          "hosted": sorted(spec.agents if hosted is None else hosted),
                          "every_agent": hosted is None, "brokered": self.organism.brokered})

    async def stats(self, request: web.Request) -> web.Response:
        return self.json(self.organism.stats())

    async def send(self, request: web.Request) -> web.Response:
        body = await _body(request, _SEND_KEYS)
        to, channel = _text(body, "to"), _text(body, "channel")
        sender = _text(body, "sender") or "cli"
        if to is None and channel is None:
            raise _BadRequest("say where the spore goes: \"to\" (an agent) or \"channel\"")
        if "knowledge" not in body:
            raise _BadRequest("\"knowledge\" is missing: the spore's knowledge, a JSON object")
        request_it = body.get("request", False)
        if not isinstance(request_it, bool):
            raise _BadRequest(f"\"request\" must be true or false, got {request_it!r}")
        timeout = body.get("timeout", 30.0)
        if (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                or not 0 < timeout <= _MAX_TIMEOUT or math.isnan(timeout)):
            raise _BadRequest(f"\"timeout\" must be seconds, above 0 and at most "
                              f"{_MAX_TIMEOUT:.0f}, got {timeout!r}")
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise _BadRequest(f"\"metadata\" must be a JSON object, got {metadata!r:.60}")
        if (refusal := self.not_ready()) is not None:
            return refusal
        outcome = await operations.send_spore(
            self.organism, body["knowledge"], to=to, channel=channel, sender=sender,
            request=request_it, timeout=float(timeout), extra=operations.send_options(body))
        return self.json(outcome.to_dict(), status=operations.refusal_status(outcome))

    async def events(self, request: web.Request) -> web.StreamResponse:
        accept = self._event_filter(request)
        knowledge = _flag(request, "knowledge", True)
        until_idle = _flag(request, "until_idle", False)
        # Each event waiting holds its spore: a bound for memory.
        buffer = query_whole(request.query, "buffer", 10_000, 1, _MAX_BUFFER)
        stream = self.organism.events.stream(buffer, accept=accept).open()
        self.streams.add(stream)
        idle = asyncio.ensure_future(self._idle_then_close(stream)) if until_idle else None
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        try:
            await response.prepare(request)  # the follower knows it is attached
            reported = 0
            async for event in stream:
                await response.write(self._line(event, knowledge))
                if stream.dropped > reported:  # a slow reader: say how many it lost
                    reported = stream.dropped
                    await response.write(json.dumps(
                        {"event": "dropped", "count": reported}).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the follower went away, or the endpoint is closing
        finally:
            stream.close()
            self.streams.discard(stream)
            if idle is not None:
                idle.cancel()
        return response

    def _line(self, event: Event, knowledge: bool) -> bytes:
        return (self.organism.masker.mask(event_line(event, knowledge=knowledge))
                + "\n").encode()

    async def _idle_then_close(self, stream: EventStream) -> None:
        try:
            await self.organism.idle()
        except SporeflowError:
            pass  # not running (yet, or any more): no spore will come either
        finally:
            stream.close()

    def _event_filter(self, request: web.Request) -> TailFilter:
        spec = self.organism.spec
        query = request.query
        agents, channels = query.getall("agent", []), query.getall("channel", [])
        types, kinds = query.getall("type", []), query.getall("event", [])
        _known("agent", agents, spec.agents, spec.name)
        _known("channel", channels, spec.channels, spec.name)
        _known("type", types, [t.value for t in SporeType], spec.name)
        _known("event", kinds, SPORE_EVENT_KINDS, spec.name)
        return TailFilter.of(agents=agents, channels=channels, types=types, kinds=kinds)

    async def reload(self, request: web.Request) -> web.Response:
        report = await operations.reload(self.organism)
        if self.on_reload is not None:
            self.on_reload(report)
        return self.json({**report.to_dict(), "summary": report.summary()},
                         status=200 if report.ok else 422)

    async def dead_letters(self, request: web.Request) -> web.Response:
        query = request.query
        choice = _letter_choice(query.getall("agent", []), query.getall("reason", []),
                                query.getall("id", []))
        limit = query_whole(query, "limit", _PAGE, 1, _MAX_PAGE)
        after = query_whole(query, "after", 0, 0, None)
        store = self.organism.dead_letters
        letters = operations.dead_letters(self.organism, choice)
        self._require(choice, letters, named=False)
        # A page at a time: 10,000 letters of up to a spore's size each, made into one
        # answer on the loop, stalled every agent (2 s for 67 MB, found by an attacker).
        page = [stored for stored in letters if stored.number > after][:limit + 1]
        more = len(page) > limit
        page = page[:limit]
        return self.json({"letters": [operations.letter_dict(s) for s in page],
                          "next": page[-1].number if more else None,
                          "kept": len(store), "total": store.total, "evicted": store.evicted,
                          "brokered": self.organism.brokered,
                          # a journal keeps them too: what is done for good is done there
                          "journal": None if self.organism.journal is None
                          else str(self.organism.journal.path)})

    async def dead_letter(self, request: web.Request) -> web.Response:
        text = request.match_info["number"]
        number = letter_number(text)
        stored = operations.dead_letter(self.organism, number) if number is not None else None
        if stored is None:
            return error_response(404, "NotFound", f"no dead letter {text!r} kept in organism "
                                  f"{self.organism.spec.name!r}; GET /v1/dead-letters lists them")
        return self.json(operations.letter_dict(stored))

    async def replay(self, request: web.Request) -> web.Response:
        choice = await self._chosen_letters(request)
        if isinstance(choice, web.Response):
            return choice
        done = await operations.replay(self.organism, choice)
        return self.json({"replayed": done.count, "numbers": list(done.numbers),
                          "problems": list(done.problems)})

    async def purge(self, request: web.Request) -> web.Response:
        choice = await self._chosen_letters(request)
        if isinstance(choice, web.Response):
            return choice
        numbers = operations.purge(self.organism, choice)
        return self.json({"purged": len(numbers), "numbers": numbers})

    def _require(self, choice: LetterChoice, letters: list[StoredDeadLetter], *,
                 named: bool) -> None:
        spec = self.organism.spec
        try:
            choice.require(letters, spec.agents, f"organism {spec.name!r}",
                           "GET /v1/dead-letters (`sporeflow dlq list`)", named=named)
        except UnknownAgent as exc:
            raise _BadRequest(str(exc)) from None

    async def _chosen_letters(self, request: web.Request) -> LetterChoice | web.Response:
        """The letters a replay or a purge acts on, or the answer refusing it."""
        body = await _body(request, _REPLAY_KEYS)
        lists = {key: body.get(key, []) for key in ("agents", "reasons", "ids")}
        for key, value in lists.items():
            if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
                raise _BadRequest(f"\"{key}\" must be a list of names, got {value!r:.60}")
        choice = _letter_choice(*(map(str, lists[key]) for key in ("agents", "reasons", "ids")))
        if not choice and body.get("all") is not True:
            raise _BadRequest("choose dead letters with \"agents\", \"reasons\" or \"ids\", or "
                              "pass \"all\": true for every one")
        if (refusal := self.not_ready()) is not None:
            return refusal
        try:  # named, and not there: said, rather than "0 replayed"
            self._require(choice, operations.dead_letters(self.organism, choice), named=True)
        except NoSuchDeadLetter as error:
            return error_response(404, type(error).__name__, str(error))
        return choice


    async def trace(self, request: web.Request) -> web.Response:
        conversation = request.query.get("conversation")
        if conversation:  # over a broker: the steps this process holds of it, for a join
            held = [step.to_json() for step in self.window.steps
                    if (step.correlation_id or step.id) == conversation]
            return self.json({"conversation": conversation, "steps": held})
        spore_id = request.query.get("id")
        if not spore_id:
            raise _BadRequest("say which spore: ?id=SPORE_ID (the root of the tree)")
        tree = trace_tree(self.window.steps, spore_id)
        if tree is None:
            return error_response(404, "NotFound", f"spore {spore_id!r:.200} is not among the last "
                                  f"{self.window.steps.maxlen} settlements organism "
                                  f"{self.organism.spec.name!r} keeps; a journal keeps more: "
                                  f"`sporeflow trace --journal FILE`")
        return self.json({"root": spore_id,
                          "steps": [step.to_json() for step in tree_steps(tree)]})


async def _body(request: web.Request, keys: frozenset[str]) -> dict[str, Any]:
    """The request's JSON object, with only ``keys``."""
    try:
        body = json_body(await read_body(request))
    except ValueError as exc:
        raise _BadRequest(f"the body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise _BadRequest(f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - keys)
    if unknown:
        raise _BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}"
                          f"{did_you_mean(unknown[0], keys)}; the fields are "
                          f"{', '.join(sorted(keys))}")
    return body


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise _BadRequest(f"\"{key}\" must be a name, got {value!r:.60}")
    return value


def _flag(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise _BadRequest(f"{name} must be true or false, got {value!r}")


def _known(what: str, given: list[str], known: Any, organism: str) -> None:
    names = sorted(known)
    for name in given:
        if name not in names:
            hint = did_you_mean(name, names) or f"; there are: {', '.join(names)}"
            raise _BadRequest(f"no {what} {name!r} in organism {organism!r}{hint}")
