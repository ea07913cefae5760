"""An ``http`` source: HTTP ingress into the organism, served by aiohttp.

    POST /spores        a spore to an agent or a channel   -> 202 {"id": ...}
    POST /requests      a request to an agent              -> 200 its response; 504 none
    GET  /openapi.json  the OpenAPI 3.1 document (``openapi``)
    GET  /healthz       200 while the organism runs, else 503

A POST carries ``Authorization: Bearer <token>`` (the token in ``token_env``; none on an
``insecure`` loopback source) and a JSON body of at most ``limits.max_spore_bytes``. The
spore goes through the organism's public API, as any outside sender's: every stage,
the same permissions, the same admission. A full organism answers 429 with
``Retry-After`` once ``admission_wait`` passed without room (nothing is admitted then),
and past ``_MAX_PENDING`` open POSTs at once; a stopped one 503. A spore the organism
refuses is a 4xx with the reason as JSON, never a 5xx: what no agent would get (an
unknown recipient, a channel nobody hears, the recipient's schema refusing it) is refused
before admission by the chain's own rules (``submit(whole=True)``), so that the caller
hears of it now rather than find a dead letter. Errors are JSON
``{"error", "reason"?, "message"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import jsonschema
from aiohttp import web

from sporeflow.config import (
    DeliveryError,
    HandlerError,
    OrganismFull,
    OrganismStateError,
    Reason,
    RequestTimeout,
    SchemaViolation,
    SporeError,
    parse_duration,
    reason_of,
)
from sporeflow.config.sources import HttpSource
from sporeflow.pipeline.core.cross_site import cross_site_guard
from sporeflow.pipeline.core.http_serving import (
    BEARER_CHALLENGE,
    BoundedSite,
    app_runner,
    application,
    bearer_token,
    error_response,
    json_body,
    read_body,
    refusal_status,
    token_matches,
)
from sporeflow.pipeline.sources.openapi import (
    openapi_document,
    request_body_schema,
    spore_body_schema,
)
from sporeflow.pipeline.sources.port import Feed, Source
from sporeflow.steps import (
    DEFAULT_CHANNEL,
    Spore,
    SporeType,
    expiry_after,
    new_spore,
)

__all__ = ["HttpIngress"]

_GRACE = 2.0  # seconds open POSTs get to finish when the source stops
_MAX_PENDING = 1024  # POSTs open at once (waiting for room or a response); more: 429
_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found",
          405: "method_not_allowed", 408: "request_timeout", 413: "too_large"}


def _as_documented(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as the OpenAPI document reads it, where JSON Schema says more than the
    schema can: 5.0 is the integer 5 (a priority), and an ``expires_in`` written as a
    duration is above 0 and at most a year, as one written as a number must be."""
    priority = body.get("priority")
    if type(priority) is float:  # the schema took it: a whole number
        body = {**body, "priority": int(priority)}
    expires_in = body.get("expires_in")
    if isinstance(expires_in, str):
        try:  # at most a year, as a number must be
            seconds = parse_duration(expires_in)
        except ValueError as exc:
            raise _Answer(error_response(400, "bad_request",
                                         f"body['expires_in']: {exc}")) from None
        if seconds <= 0:
            raise _Answer(error_response(400, "bad_request", f"body['expires_in']: "
                                         f"{expires_in[:40]!r} is no time at all: a spore "
                                         f"expiring at once is never handled; give a "
                                         f"duration above 0"))
    return body


class _Answer(Exception):  # noqa: N818  (an early answer, not an error)
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class HttpIngress(Source):
    def __init__(self, feed: Feed, spec: HttpSource, *, organism: str, max_bytes: int,
                 logger: logging.Logger) -> None:
        super().__init__(feed)
        self.spec = spec
        self.max_bytes = max_bytes
        self.logger = logger
        self.document = openapi_document(spec, organism=organism, max_bytes=max_bytes)
        self._spore_body = jsonschema.Draft202012Validator(spore_body_schema(spec))
        self._request_body = jsonschema.Draft202012Validator(request_body_schema(spec))
        self._retry_after = {"Retry-After": str(max(1, math.ceil(spec.admission_wait)))}
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._pending = 0

    # -- the source's life -------------------------------------------------------------

    async def open(self) -> None:
        app = application(client_max_size=self.max_bytes,
                          middlewares=[self._answers, cross_site_guard(
                              self.spec.host, tokenless=self.spec.token is None)])
        app.router.add_post("/spores", self._spores)
        app.router.add_post("/requests", self._requests)
        app.router.add_get("/openapi.json", self._openapi)
        app.router.add_get("/healthz", self._health)
        runner = app_runner(app, self.logger, shutdown_timeout=_GRACE)
        await runner.setup()
        try:
            site = BoundedSite(runner, self.spec.host, self.spec.port, self.logger)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.stats.address = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        self.logger.info("source %r serves HTTP ingress on %s", self.spec.name,
                         self.stats.address)

    async def run(self) -> None:
        try:
            await self._closing.wait()
        finally:
            if self._runner is not None:  # open POSTs get _GRACE seconds, then are cut
                await self._runner.cleanup()

    def halt(self, task: asyncio.Task[None]) -> None:
        self.feed.stopping = True
        self._closing.set()  # run() closes the server: no new POST; open ones get _GRACE

    # -- routes --------------------------------------------------------------------------

    async def _spores(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await self._body(request, self._spore_body)
        with self._open_post():
            try:  # whole: what no agent would get is refused now, for the caller to hear
                spore = self._spore(body)  # an expires_in over a year is refused here
                await self.feed.port.submit(spore, admit_within=self.spec.admission_wait,
                                            whole=True)
            except (SporeError, DeliveryError) as exc:
                raise self._refused(exc) from None
        self.stats.sent += 1
        return web.json_response({"id": spore.id, "status": "accepted", "to": spore.to_agent,
                                  "channel": spore.channel}, status=202)

    async def _requests(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await self._body(request, self._request_body)
        to = body.get("to", self.spec.to)
        assert isinstance(to, str), "the body's schema asks for 'to' when there is no default"
        with self._open_post():
            try:
                response = await self.feed.port.request(
                    to, body["knowledge"], sender=self.spec.name,
                    timeout=float(body.get("timeout", self.spec.request_timeout)),
                    priority=body.get("priority", 5), admit_within=self.spec.admission_wait)
            except RequestTimeout as exc:
                raise _Answer(error_response(504, "timeout", self._mask(exc))) from None
            except HandlerError as exc:
                raise _Answer(error_response(502, "handler_failed", self._mask(exc),
                                             reason=str(Reason.HANDLER_FAILED))) from None
            except (SporeError, DeliveryError) as exc:
                raise self._refused(exc) from None
        self.stats.sent += 1
        self.stats.counts["answered"] += 1
        return web.json_response({"id": response.id, "reply_to": response.reply_to,
                                  "from": response.from_agent,
                                  "type": str(response.spore_type),
                                  "knowledge": response.knowledge})

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.document)

    async def _health(self, request: web.Request) -> web.Response:
        state = self.feed.port.state
        if state == "running":
            return web.json_response({"status": "ok", "organism": state})
        return web.json_response({"status": "unavailable", "organism": state}, status=503,
                                 headers=self._retry_after)

    # -- the parts of a POST -------------------------------------------------------------

    def _authorize(self, request: web.Request) -> None:
        token = self.spec.token
        if token is None:
            return
        given = bearer_token(request)
        if given is None:
            message = "send the token as: Authorization: Bearer <token>"
        elif not token_matches(given, token.reveal()):
            message = f"wrong token; send the one in ${self.spec.token_env}"
        else:
            return
        raise _Answer(error_response(401, "unauthorized", message, headers=BEARER_CHALLENGE))

    async def _body(self, request: web.Request,
                    validator: jsonschema.Draft202012Validator) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > self.max_bytes:
            raise _Answer(self._too_large())
        try:
            raw = await read_body(request)
        except web.HTTPRequestEntityTooLarge:
            raise _Answer(self._too_large()) from None
        try:
            data = json_body(raw)
        except ValueError as exc:
            raise _Answer(error_response(400, "bad_request", f"the body is not JSON: "
                                         f"{str(exc)[:200]}")) from None
        if isinstance(data, dict) and "to" in data and "channel" in data:
            # The schema's "not", said plainly.
            raise _Answer(error_response(400, "bad_request", "give 'to' or 'channel', not both"))
        error = jsonschema.exceptions.best_match(validator.iter_errors(data))
        if error is not None:
            where = "body" + "".join(f"[{p!r}]" for p in error.absolute_path)
            raise _Answer(error_response(400, "bad_request", f"{where}: {error.message[:300]}; "
                                         f"see GET /openapi.json"))
        assert isinstance(data, dict)
        return _as_documented(data)

    def _too_large(self) -> web.Response:
        return error_response(413, "too_large", f"the body is larger than limits.max_spore_bytes "
                              f"({self.max_bytes} bytes)")

    def _spore(self, body: dict[str, Any]) -> Spore:
        to = body.get("to", None if "channel" in body else self.spec.to)
        channel = body.get("channel", None if "to" in body else self.spec.channel)
        kind = body.get("type", SporeType.KNOWLEDGE if to is not None else SporeType.BROADCAST)
        now = self.feed.port.now()
        return new_spore(
            knowledge=body["knowledge"], spore_type=SporeType(kind), from_agent=self.spec.name,
            to_agent=to, channel=channel or DEFAULT_CHANNEL, priority=body.get("priority", 5),
            expires_at=expiry_after(now, body.get("expires_in")), created_at=now)

    def _refused(self, error: Exception) -> _Answer:
        reason = reason_of(error)
        self.stats.refused += 1
        if isinstance(error, SchemaViolation):  # the field and the agent, not our file's path
            whose = f" (of agent {error.agent!r})" if error.agent is not None else ""
            message = self.feed.port.masker.mask(
                f"SchemaViolation: {error.field}: {error.detail}{whose}")
        else:
            message = self._mask(error, named=True)
        return _Answer(error_response(refusal_status(reason), "refused", message,
                                      reason=str(reason)))

    def _mask(self, error: BaseException, *, named: bool = False) -> str:
        """The text of ``error`` for a caller: the organism's secrets hidden."""
        text = f"{type(error).__name__}: {error}" if named else str(error)
        return self.feed.port.masker.mask(text)

    @contextlib.contextmanager
    def _open_post(self) -> Iterator[None]:
        """Count a POST open while it waits for room or a response; refuse past the cap."""
        if self._pending >= _MAX_PENDING:
            raise _Answer(error_response(429, "full", f"{_MAX_PENDING} requests are open already; "
                                         f"send it again later", headers=self._retry_after))
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1

    # -- every answer is JSON -------------------------------------------------------------

    @web.middleware
    async def _answers(self, request: web.Request,
                       handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except _Answer as answer:
            response = answer.response
        except OrganismFull as exc:
            response = error_response(429, "full", self._mask(exc), headers=self._retry_after)
        except OrganismStateError as exc:
            response = error_response(503, "not_running", self._mask(exc),
                                      headers=self._retry_after)
        except web.HTTPException as exc:  # aiohttp's own: no route, wrong method, too large
            if exc.status == 413:
                response = self._too_large()
            else:
                allow = {k: v for k, v in exc.headers.items() if k == "Allow"}
                response = error_response(exc.status, _CODES.get(exc.status, "bad_request"),
                                          exc.reason, headers=allow)
        except Exception:  # a bug of ours: logged, answered as one, the source goes on
            self.logger.exception("source %r failed on %s %s", self.spec.name,
                                  request.method, request.path)
            response = error_response(500, "internal", "the source failed; see the organism's log")
        self.stats.counts[f"http_{response.status}"] += 1
        return response
