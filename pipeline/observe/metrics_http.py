"""The HTTP side of the metrics: one thread, its own event loop, every connection bounded.

A thread per connection (``ThreadingWSGIServer``) lets anyone who can reach the port
hold a thread per idle connection for as long as they like. Here the connections are
coroutines on one event loop, in a thread of its own (so a scrape never waits on the
organism's loop, nor the organism on a scrape):

- a connection has ``timeout`` seconds to send its whole request head, and its answer
  as long again to leave; past either it is closed;
- at most ``max_connections`` wait for their request at once: one more closes the
  oldest of them, so a scrape always gets in;
- one request per connection (``Connection: close``), answered by a WSGI application
  (prometheus-client's ``make_wsgi_app``), heads of at most 16 KiB.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

__all__ = ["MetricsHttp"]

Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_HEAD_LIMIT = 16 * 1024
_STATUS_LINE = "HTTP/1.1 {}\r\n"


class MetricsHttp:
    """Serve ``app`` on ``host:port`` (0: a free port) until :meth:`close`."""

    def __init__(self, app: Wsgi, *, host: str, port: int, timeout: float = 5.0,
                 max_connections: int = 64) -> None:
        self.app = app
        self.host = host
        self.timeout = timeout
        self.max_connections = max_connections
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        # Connections still waiting for their request head, oldest first.
        self._waiting: OrderedDict[asyncio.StreamWriter, None] = OrderedDict()
        self._open: set[asyncio.StreamWriter] = set()
        self._closing = False

    def start(self) -> None:
        """Listen; raise the ``OSError`` of a port that cannot be had."""
        bound: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(bound,), daemon=True,
                                        name="sporeflow:metrics-http")
        self._thread.start()
        try:
            # Waited for here, blocking: binding takes no time, and a caller's loop may run
            # on a virtual clock that would time out anything it awaits from a thread.
            self.port = bound.result(timeout=30)
        except BaseException:
            self._thread.join()
            self._thread = None
            raise

    def close(self) -> None:
        """Stop listening, close every connection and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop ended already
                loop.call_soon_threadsafe(self._stop)
            thread.join(timeout=10)
        self._thread = None

    # -- on the server's thread --------------------------------------------------------

    def _run(self, bound: concurrent.futures.Future[int]) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            try:
                self._server = loop.run_until_complete(asyncio.start_server(
                    self._serve, self.host, self.port, limit=_HEAD_LIMIT, backlog=128))
            except BaseException as exc:
                bound.set_exception(exc)
                return
            bound.set_result(self._server.sockets[0].getsockname()[1])
            loop.run_forever()
            loop.run_until_complete(self._wind_down())
        finally:
            loop.close()

    def _stop(self) -> None:
        assert self._loop is not None
        self._closing = True  # a connection accepted but not yet served is cut as it starts
        if self._server is not None:
            self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        self._loop.stop()

    async def _wind_down(self) -> None:
        """Let the connections cut by :meth:`_stop` end, and their sockets close (a cut
        transport closes its socket on the loop's next turn)."""
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout)
        for _ in range(2):
            await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.transport.abort()
            return
        self._open.add(writer)
        waiting = self._waiting
        waiting[writer] = None
        if len(waiting) > self.max_connections:  # the oldest idle one makes room
            oldest, _ = waiting.popitem(last=False)
            oldest.transport.abort()
        try:
            async with asyncio.timeout(self.timeout):
                head = await reader.readuntil(b"\r\n\r\n")
            waiting.pop(writer, None)
            writer.write(self._answer(head))
            async with asyncio.timeout(self.timeout):
                await writer.drain()
            writer.close()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            writer.transport.abort()  # idle, too slow, too long, or gone
        finally:
            waiting.pop(writer, None)
            self._open.discard(writer)

    def _answer(self, head: bytes) -> bytes:
        """The whole response to request ``head``."""
        environ = self._environ(head)
        if environ is None:
            return _response("400 Bad Request", [("Content-Type", "text/plain")],
                             b"bad request\n", head=False)
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> None:
            started[:] = [status, headers]

        try:
            result = self.app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception as exc:  # a collector's bug: the scraper hears of it, the server stays
            return _response("500 Internal Server Error", [("Content-Type", "text/plain")],
                             f"{type(exc).__name__}: {exc}\n".encode(), head=False)
        status, headers = started
        return _response(status, headers, body, head=environ["REQUEST_METHOD"] == "HEAD")

    def _environ(self, head: bytes) -> dict[str, Any] | None:
        """The WSGI environ of request ``head`` (None when it is no HTTP request)."""
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, protocol = lines[0].split(" ")
        except ValueError:
            return None
        if not protocol.startswith("HTTP/"):
            return None
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": unquote(path),
            "QUERY_STRING": query, "SERVER_NAME": self.host, "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": protocol, "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "wsgi.multithread": False,
            "wsgi.multiprocess": False, "wsgi.run_once": False,
        }
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                key = name.strip().upper().replace("-", "_")
                if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                    key = f"HTTP_{key}"
                environ[key] = value.strip()
        return environ


def _response(status: str, headers: list[tuple[str, str]], body: bytes, *,
              head: bool) -> bytes:
    fields = [(name, value) for name, value in headers
              if name.lower() not in ("content-length", "connection")]
    fields += [("Content-Length", str(len(body))), ("Connection", "close")]
    text = _STATUS_LINE.format(status) + "".join(f"{n}: {v}\r\n" for n, v in fields)
    return (text + "\r\n").encode("latin-1") + (b"" if head else body)
