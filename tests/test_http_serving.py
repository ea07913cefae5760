"""A client's malformed HTTP (``pipeline.core.http_serving``): on the HTTP ingress and on
the control endpoint's HTTP port alike, one WARNING line naming the peer and the error,
no traceback; a failure of the server itself keeps its traceback.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.core.http_serving import ClientErrorLog
from sporeflow.pipeline.service.address import ControlAddress
from sporeflow.pipeline.service.server import ControlServer

BACKSTOP = 10.0
# A NUL in a header value: aiohttp's parser refuses it before any route or token check.
MALFORMED = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n"
SAID = "malformed HTTP request from 127.0.0.1, answered 400: Invalid header value char"


async def echo(spore: Spore, ctx: Any) -> dict[str, Any]:
    return {"echo": spore.knowledge}


async def answer_to(url: str, raw: bytes) -> bytes:
    """Send ``raw`` to the server at ``url`` and read its answer to the end."""
    host, port = url.removeprefix("http://").rstrip("/").split("/")[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), BACKSTOP)  # the server closes it
    finally:
        writer.close()


def said_about_the_client(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "malformed" in r.getMessage()
            or "Error handling request" in r.getMessage()]


async def test_a_malformed_request_to_the_ingress_is_one_warning_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    organism = Organism.from_dict({
        "agents": {"echo": {"handler": echo}},
        "sources": {"api": {"kind": "http", "port": 0, "insecure": True, "to": "echo"}},
    }, base_dir=tmp_path)
    async with organism.running(drain_timeout=BACKSTOP):
        answer = await answer_to(organism.sources.addresses()["api"], MALFORMED)
    assert answer.startswith(b"HTTP/1.0 400")
    (record,) = said_about_the_client(caplog)
    assert (record.levelno, record.getMessage(), record.exc_info) == (
        logging.WARNING, SAID, None)


async def test_a_malformed_request_to_the_control_http_port_is_one_warning_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    organism = Organism.from_dict({"organism": {"name": "ctl"},
                                   "agents": {"echo": {"handler": echo}}})
    file = tmp_path / "organism.yaml"
    address = ControlAddress.of(file, "ctl", folder=tmp_path / "run")
    (tmp_path / "run").mkdir(mode=0o700)
    async with organism.running(drain_timeout=BACKSTOP), ControlServer(
            organism, file, http_port=0, echo=lambda line: None, quiet=True,
            address=address) as server:
        assert server.url is not None
        answer = await answer_to(server.url, MALFORMED)
    assert answer.startswith(b"HTTP/1.0 400")
    (record,) = said_about_the_client(caplog)
    assert (record.levelno, record.getMessage(), record.exc_info) == (
        logging.WARNING, SAID, None)


def test_a_failure_of_the_server_itself_keeps_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    log = ClientErrorLog(logging.getLogger("sporeflow.test_http_serving"))
    error = RuntimeError("a bug of ours")
    log.exception("Error handling request from %s", "127.0.0.1", exc_info=error)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.exc_info[1] is error
