"""The metrics server under idle connections (issue 17): no thread per connection, idle
ones closed, a scrape always gets in."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import urllib.error
import urllib.request

from sporeflow.pipeline import MetricsServer, Organism

from .conformance.harness import wait_for
from .newsroom import news_agents


def news() -> Organism:
    return Organism.from_dict({"organism": {"name": "news"}, "channels": {"news": {}},
                               "agents": news_agents()})


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def closed_by_server(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the server has closed (they read end of file or a reset)."""
    count = 0
    for sock in sockets:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            try:
                closed = sock.recv(1024) == b""
            except ConnectionError:
                closed = True
            count += closed
    return count


async def open_idle(port: int, count: int) -> list[socket.socket]:
    return await asyncio.to_thread(
        lambda: [socket.create_connection(("127.0.0.1", port)) for _ in range(count)])


async def test_300_idle_connections_hold_no_thread_and_are_closed_after_the_timeout() -> None:
    organism = news()
    async with organism.running(), MetricsServer(organism, port=0, timeout=0.5,
                                                 max_connections=1000) as server:
        await asyncio.to_thread(scrape, server.port)  # the test's own worker thread, now
        threads = threading.active_count()
        idle = await open_idle(server.port, 300)
        try:
            # Answered after the server accepted every idle connection before it.
            text = await asyncio.to_thread(scrape, server.port)
            assert 'sporeflow_agent_received_total{agent="source",organism="news"}' in text
            assert threading.active_count() <= threads + 2
            gone: set[int] = set()

            def all_closed() -> bool:
                for index, sock in enumerate(idle):
                    if index not in gone and closed_by_server([sock]):
                        gone.add(index)
                return len(gone) == len(idle)

            await wait_for(all_closed)
        finally:
            for sock in idle:
                sock.close()


async def test_a_request_head_that_never_ends_is_closed() -> None:
    organism = news()
    async with organism.running(), MetricsServer(organism, port=0, timeout=0.5) as server:
        slow = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", server.port))
        try:
            slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and no blank line, ever
            await wait_for(lambda: closed_by_server([slow]) == 1)
        finally:
            slow.close()


async def test_past_max_connections_the_oldest_idle_one_makes_room_for_a_scrape() -> None:
    organism = news()
    async with organism.running(), MetricsServer(organism, port=0, timeout=60,
                                                 max_connections=8) as server:
        idle = await open_idle(server.port, 20)
        try:
            text = await asyncio.to_thread(scrape, server.port)
            assert "sporeflow_uptime_seconds" in text
            gone: set[int] = set()

            def evicted() -> bool:
                for index, sock in enumerate(idle):
                    if index not in gone and closed_by_server([sock]):
                        gone.add(index)
                return len(gone) >= 12

            await wait_for(evicted)
            assert min(gone) == 0  # the oldest went first
            assert max(gone) < 14
        finally:
            for sock in idle:
                sock.close()


async def test_an_accept_header_the_exposition_cannot_read_is_400_not_a_server_error() -> None:
    # Found by attacker3: `Accept: application/openmetrics-text; version=banana` made
    # prometheus-client's negotiation raise, answered "500 Internal Server Error" as if a
    # collector had failed. The client's header is at fault: 400, saying which.
    organism = news()
    async with organism.running(), MetricsServer(organism, port=0) as server:
        def ask(accept: str) -> tuple[int, str]:
            request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics",
                                             headers={"Accept": accept})
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    return reply.status, reply.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        status, text = await asyncio.to_thread(
            ask, "application/openmetrics-text; version=banana")
        assert (status, text) == (400, "the Accept header cannot be read: "
                                       "'application/openmetrics-text; version=banana'\n")
        status, text = await asyncio.to_thread(ask, "application/openmetrics-text")
        assert status == 200
        assert text.endswith("# EOF\n")
