"""How sporeflow's aiohttp servers (the HTTP ingress, the control endpoint) are run: one
place for both, so a client's malformed request is logged alike on every port.

aiohttp logs a request it cannot parse with ``logger.exception`` ("Error handling
request from ..." and a traceback). That is the client's fault, and anyone can send
it before any token is checked: here it is one WARNING line naming the peer and the
error, through the ``logger=`` aiohttp's ``AppRunner`` hands its request handlers.
A failure of the server itself keeps its traceback.

Clients cannot hold a server's resources: a connection that has not finished a request's
head (a client trickling its headers, "slowloris") or idles between requests is closed
after :data:`IDLE_TIMEOUT` seconds (aiohttp's own default is an hour), a body must arrive
within :data:`BODY_TIMEOUT` seconds (:func:`read_body`), and a port holds at most
:data:`MAX_CONNECTIONS` connections at once (:class:`BoundedSite`), so that held
connections never take every file descriptor of the process (its journal, its broker
connection) or its memory. Past them the oldest idle connection (no request in a handler:
a head still arriving, a keep-alive) is closed for the new one, so that one client
holding many never locks the others out; only when every one is in a request is the new
one answered 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from sporeflow.config.reasons import Reason

__all__ = ["BEARER_CHALLENGE", "BODY_TIMEOUT", "IDLE_TIMEOUT", "MAX_CONNECTIONS", "BoundedSite",
           "ClientErrorLog", "app_runner", "application", "bearer_token", "error_response",
           "json_body", "query_whole", "read_body", "refusal_status", "token_matches"]

IDLE_TIMEOUT = 15.0  # seconds a connection may go without a whole request head
BODY_TIMEOUT = 30.0  # seconds a request's body may take to arrive (408 past them)
LINGER = 2.0  # seconds a body left unread is drained after the answer, then the connection closed
MAX_CONNECTIONS = 512  # connections one port holds at once
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
         b"Connection: close\r\n\r\n")

# The HTTP status of a spore refused for a reason (a dead letter's), on every port: no
# such agent or channel, not allowed; any other refusal is the body's fault.
_STATUS_OF_REASON: dict[str, int] = {Reason.UNKNOWN_AGENT: 404, Reason.UNKNOWN_CHANNEL: 404,
                     Reason.NOT_A_PEER: 403}


# The header of a 401 on every port that takes a bearer token.
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="sporeflow"'}


def error_response(status: int, code: str, message: str, *, reason: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """The JSON body of a refusal on every port: ``{"error", "reason"?, "message"}``."""
    body: dict[str, Any] = {"error": code, "message": message}
    if reason is not None:
        body["reason"] = reason
    return web.json_response(body, status=status, headers=headers)


def bearer_token(request: web.Request) -> str | None:
    """The token of the request's ``Authorization: Bearer TOKEN`` header, or None."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return (given.strip() or None) if scheme.lower() == "bearer" else None


def token_matches(given: str | None, expected: bytes) -> bool:
    """Whether ``given`` is the token, compared in constant time. A header's bytes that
    are no UTF-8 come as surrogates (aiohttp's reading): kept as they came, no match."""
    return given is not None and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected)


def json_body(raw: bytes) -> Any:
    """A client's JSON body; ValueError naming what is wrong, whatever the client sent
    (NaN and Infinity are no JSON; nesting past the parser's depth is refused too)."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("it nests deeper than the parser goes") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"it is not UTF-8 ({exc.reason})") from None


async def read_body(request: web.Request) -> bytes:
    """``request``'s body, whole within :data:`BODY_TIMEOUT` seconds: a client trickling
    it holds the port no longer (past it: 408, and the connection closed). A client that
    leaves before it arrived is a 400 (nobody hears it), not a failure of the server."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            return await request.read()
    except ConnectionResetError:  # the client's doing, no failure of ours: no traceback
        raise web.HTTPBadRequest(reason="the client closed the connection before its body "
                                        "arrived") from None
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            reason=f"the body did not arrive within {BODY_TIMEOUT:g} s") from None
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        # A Content-Encoding the body does not decode as, a chunk cut short: the client's.
        # The body is at its end for us: else aiohttp reads on after the answer (to keep
        # the connection), meets the same error and logs it as a failure of ours. The
        # connection closes after the answer (_close_after_unreadable_body).
        request.content.feed_eof()
        cause = exc.__cause__ or exc
        raise web.HTTPBadRequest(reason=f"the body could not be read as sent "
                                        f"({_reason_text(cause)}); check its "
                                        f"Content-Encoding and length") from None


def application(*, client_max_size: int, middlewares: Sequence[Any]) -> web.Application:
    """An aiohttp application of sporeflow's (the HTTP ingress, the control endpoint):
    a connection whose body could not be read closes after its answer."""
    app = web.Application(client_max_size=client_max_size,
                          middlewares=[_in_handler, *middlewares])
    app[_IN_HANDLER] = set()
    app.on_response_prepare.append(_close_after_unreadable_body)
    return app


# The connections whose request a handler holds now, or whose answer is still being written:
# BoundedSite never closes those.
_IN_HANDLER = web.AppKey("in_handler", set[asyncio.BaseTransport])


@web.middleware
async def _in_handler(request: web.Request, handler: Any) -> web.StreamResponse:
    transport = request.transport
    if transport is None:
        return await handler(request)  # type: ignore[no-any-return]
    held = request.app[_IN_HANDLER]
    held.add(transport)
    try:
        response: web.StreamResponse = await handler(request)
        if not response.prepared:  # written here: a slow reader's answer is no idle time
            with contextlib.suppress(ConnectionError):  # gone: aiohttp's to see, as ever
                await response.prepare(request)
                await response.write_eof()
        return response
    finally:
        held.discard(transport)


async def _close_after_unreadable_body(request: web.Request,
                                       response: web.StreamResponse) -> None:
    """A body that could not be read (``read_body``'s 400) leaves the connection in no
    state for another request: it closes once the answer is out."""
    if request.content.exception() is not None:
        response.force_close()
        response.headers["Connection"] = "close"  # its headers are made: say it too


def _reason_text(error: BaseException) -> str:
    """``error`` as one short line fit for an HTTP reason phrase."""
    text = " ".join(f"{type(error).__name__}: {getattr(error, 'message', None) or error}"
                    .split())
    return text[:_SHORT]


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def query_whole(query: Any, name: str, default: int, least: int, most: int | None) -> int:
    """The query's whole number ``name`` (``default`` without it), within its bounds; 400
    naming them for anything else (a sign, digits grouped by ``_``, spaces, past 19 digits,
    which ``int`` would take or clamp), on every route that takes one."""
    text = query.get(name)
    if text is None:
        return default
    value = int(text) if text.isdecimal() and len(text) <= 19 else None
    if value is None or value < least or (most is not None and value > most):
        bounds = f"from {least:,} to {most:,}" if most is not None else f"{least} or more"
        raise web.HTTPBadRequest(
            text=f"{name} must be a whole number {bounds}, got {text[:40]!r}")
    return value


def refusal_status(reason: str) -> int:
    """The status that answers a spore refused for ``reason``."""
    return _STATUS_OF_REASON.get(reason, 422)


_SHORT = 120  # characters of the parser's message kept: it may quote what the client sent


class ClientErrorLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger: a client's malformed request (a 4xx the parser raised)
    is one WARNING line without a traceback; anything else passes as it was logged."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, None)

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(error, HttpProcessingError) and 400 <= error.code < 500:
            # aiohttp's message is "Error handling request from %s", the peer first.
            peer = args[0] if args else "an unknown peer"
            self.logger.warning("malformed HTTP request from %s, answered %d: %s", peer,
                                error.code, _short(error))
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


def _short(error: HttpProcessingError) -> str:
    """The parser's message, first line only (the next ones quote the bytes at fault)."""
    lines = (error.message or type(error).__name__).strip().splitlines()
    first = lines[0].rstrip(":. ") if lines else type(error).__name__
    return first if len(first) <= _SHORT else f"{first[:_SHORT]}..."


def app_runner(app: web.Application, logger: logging.Logger, *,
               shutdown_timeout: float) -> web.AppRunner:
    """The runner of one of sporeflow's servers: no access log, and what aiohttp logs
    goes to ``logger``, a client's malformed request as one line."""
    return web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout,
                         logger=ClientErrorLog(logger), keepalive_timeout=IDLE_TIMEOUT,
                         lingering_time=LINGER)


class BoundedSite(web.BaseSite):
    """A TCP port of ``runner``'s server (an app made by :func:`application`) that holds at
    most :data:`MAX_CONNECTIONS` connections: one more closes the oldest idle one, or,
    every one being in a request, is answered 503 and closed; ``logger`` is told once per
    time the port is full."""

    __slots__ = ("_host", "_port", "_logger", "_full", "_listening", "_in_handler")

    def __init__(self, runner: web.AppRunner, host: str, port: int,
                 logger: logging.Logger) -> None:
        super().__init__(runner)
        self._host, self._port, self._logger = host, port, logger
        self._in_handler = runner.app[_IN_HANDLER]
        self._full = False
        self._listening: asyncio.Server | None = None

    @property
    def name(self) -> str:
        sockets = self._listening.sockets if self._listening is not None else ()
        host, port = sockets[0].getsockname()[:2] if sockets else (self._host, self._port)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        self._server = self._listening = await asyncio.get_running_loop().create_server(
            self._accept, self._host, self._port, backlog=self._backlog)

    def _accept(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None  # a site exists only once its runner is set up
        held = len(server.connections)
        if held < MAX_CONNECTIONS:
            self._full = False
            return server()
        if not self._full:
            self._full = True
            self._logger.warning(
                "%s holds %d connections, its most: the oldest idle one is closed for each "
                "new one, which is answered 503 while every one is in a request (a client "
                "holding many open, or more clients than one process serves)",
                self.name, MAX_CONNECTIONS)  # held may pass it in a burst of accepts
        for connection in server.connections:  # oldest first
            transport = connection.transport
            if (transport is not None and not transport.is_closing()
                    and transport not in self._in_handler):
                transport.abort()
                return server()
        return _Busy()


class _Busy(asyncio.Protocol):
    """A connection past a port's bound: told 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()
