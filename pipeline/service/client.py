"""The command line's side of the control endpoint: find the running processes of an
organism file (``running_sockets``; over a broker it may run in several, a socket each)
and talk to one over its Unix socket (``ControlClient``). Which of several a command
reaches is ``service.processes``'s business."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from sporeflow.pipeline.service.address import ControlError, sockets_of

__all__ = ["ControlClient", "Reply", "running_socket", "running_sockets"]

_BASE = "http://sporeflow/v1"  # the host is not used: the connector is the socket
_CONNECT = 5.0

Reply = tuple[int, Any]  # the HTTP status and the JSON answered


def running_sockets(organism_file: Path, *, folder: Path | None = None) -> list[Path]:
    """The control sockets of the runs of ``organism_file`` that answer: one, or over a
    broker one per process (``--agents``), the run of every agent first.

    A socket nobody listens on (left by a killed run) is skipped; the next run of the
    file replaces it.
    """
    return [path for path in sockets_of(organism_file, folder=folder) if _answers(path)]


def running_socket(organism_file: Path, *, folder: Path | None = None) -> Path | None:
    """The first of :func:`running_sockets`, if one answers: a test's or a script's
    "is it up?". A command that acts on a running organism chooses among all of them
    (``service.processes``)."""
    return next(iter(running_sockets(organism_file, folder=folder)), None)


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_CONNECT)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


class ControlClient:
    """``async with ControlClient(socket) as client:`` then ``get``, ``post``, ``lines``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ControlClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.path)),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with ControlClient(...)`"
        return self._session

    async def get(self, route: str, params: Mapping[str, str | Sequence[str]] | None = None
                  ) -> Reply:
        return await self._call("GET", route, params=_pairs(params))

    async def post(self, route: str, body: Mapping[str, Any]) -> Reply:
        return await self._call("POST", route, json=dict(body))

    async def _call(self, method: str, route: str, **options: Any) -> Reply:
        try:
            async with self.session.request(method, f"{_BASE}/{route}", **options) as reply:
                text = await reply.text()
                return reply.status, _json_or_text(text)
        except aiohttp.ClientError as exc:
            raise self._lost(exc) from None

    async def lines(self, route: str, params: Mapping[str, str | Sequence[str]] | None = None,
                    *, attached: Any = None) -> AsyncIterator[str]:
        """The lines of a streamed answer (NDJSON), until the server ends it; a refusal
        raises :class:`ControlError` with its message. ``attached()`` is called once the
        server answers (the follower is attached)."""
        try:
            async with self.session.get(f"{_BASE}/{route}", params=_pairs(params)) as reply:
                if reply.status != 200:
                    raise ControlError(_message(_json_or_text(await reply.text())))
                if attached is not None:
                    attached()
                async for line in reply.content:
                    if line.strip():
                        yield line.decode().rstrip("\n")
        except aiohttp.ClientPayloadError:
            return  # the run ended mid-line: what came is shown
        except aiohttp.ClientError as exc:
            raise self._lost(exc) from None

    def _lost(self, exc: BaseException) -> ControlError:
        return ControlError(f"{self.path}: lost the running organism's control endpoint "
                            f"({type(exc).__name__}: {exc}); is it still running?")


def _pairs(params: Mapping[str, str | Sequence[str]] | None) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        pairs.extend((key, v) for v in ([value] if isinstance(value, str) else value))
    return pairs


def _json_or_text(text: str) -> Any:
    with contextlib.suppress(ValueError):
        return json.loads(text)
    return {"error": "ControlError", "message": text.strip()}


def _message(answer: Any) -> str:
    if isinstance(answer, dict) and "message" in answer:
        return str(answer["message"])
    return str(answer)
