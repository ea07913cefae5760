"""The web dashboard in a real browser: Debian's chromium, driven by Playwright.

An organism runs in this process; its control API behind the token guard, with the
dashboard mounted (what ``sporeflow run --dashboard`` serves), listens on 127.0.0.1,
port 0; chromium opens it with ``?token=`` as a user would. Playwright's own browsers
are never downloaded: it drives the chromium found on PATH.

In CI (``CI=true``) this test never skips: without chromium or Playwright it fails,
saying what is missing (``.ci/run`` installs both). Elsewhere it skips.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.service.control import control_app, token_guard
from sporeflow.pipeline.service.dashboard import mount_dashboard

IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
EXPECT_TIMEOUT = 15_000  # ms: a backstop for conditions the page meets within a poll or two


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {what}: the dashboard must be tested in a real browser "
                    f"(.ci/run installs chromium with apt-get, Playwright with the test extra)")
    pytest.skip(what)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        _missing("chromium is not installed (apt-get install chromium)")
    assert found is not None
    return found


class Flaky:
    """An agent that fails while ``broken``, and notes each job it handled."""

    def __init__(self) -> None:
        self.broken = True
        self.handled: dict[str, asyncio.Event] = {}

    def done(self, job: str) -> asyncio.Event:
        return self.handled.setdefault(job, asyncio.Event())

    async def __call__(self, spore: Spore, ctx: Any) -> None:
        if self.broken:
            raise RuntimeError(f"job {spore.knowledge['job']!r}: the service is down")
        self.done(spore.knowledge["job"]).set()


async def passthrough(spore: Spore, ctx: Any) -> dict[str, Any]:
    return dict(spore.knowledge)


async def keep(spore: Spore, ctx: Any) -> None:
    return None


@pytest.fixture
async def served() -> AsyncIterator[tuple[Organism, Flaky, str]]:
    """A running organism, its dashboard's URL (with the token) and its flaky agent."""
    flaky = Flaky()
    organism = Organism.from_dict({
        "organism": {"name": "browsed"},
        "channels": {"work": {}},
        "agents": {
            "intake": {"handler": passthrough, "emit": {"channel": "work"}},
            "worker": {"handler": passthrough, "subscribe": ["work"], "emit": {"to": "store"},
                       "concurrency": 2},
            "auditor": {"handler": keep, "subscribe": ["work"]},
            "store": {"handler": keep},
            "flaky": {"handler": flaky, "retry": {"attempts": 1}},
        },
    })
    token = secrets.token_urlsafe(16)
    async with organism.running(drain_timeout=5):
        app = control_app(organism, middlewares=(token_guard(token, "sporeflow_token"),))
        mount_dashboard(app, organism)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            # Polled four times a second: the conditions below are met sooner.
            yield organism, flaky, f"http://127.0.0.1:{port}/?token={token}&interval=250"
        finally:
            await runner.cleanup()


async def test_dashboard_shows_agents_moving_counters_and_replays_a_dead_letter(
        served: tuple[Organism, Flaky, str]) -> None:
    chromium = _chromium()
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        _missing("Playwright is not installed (pip install 'sporeflow[test]')")
    organism, flaky, url = served
    assert "token=" in url
    expect.set_options(timeout=EXPECT_TIMEOUT)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = await browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            # A refused fetch or a breach of the page's Content-Security-Policy is logged.
            page.on("console", lambda message: problems.append(message.text)
                    if message.type == "error" else None)
            await page.goto(url)

            # The page loads, and the graph draws every agent of the organism.
            await expect(page.locator("#organism")).to_have_text("browsed")
            await expect(page.locator("#state")).to_have_text("running")
            nodes = page.locator("#graph g.node.agent")
            await expect(nodes).to_have_count(len(organism.spec.agents))
            names = {await node.get_attribute("data-name") for node in await nodes.all()}
            assert names == set(organism.spec.agents)
            await expect(page.locator('#graph g.node.channel[data-name="work"]')).to_be_visible()

            # Counters move while spores flow: one batch between each two polls.
            handled = page.locator('#agents tr[data-agent="worker"] td.handled')
            await expect(handled).to_have_text("0")
            flowing = asyncio.create_task(_pump(organism, page, expect))
            try:
                await expect(handled).not_to_have_text("0")
                first = await handled.text_content()
                await expect(handled).not_to_have_text(first or "")
                await expect(page.locator('#agents tr[data-agent="worker"] td.rate')).to_have_text(
                    re.compile(r"^(?!0\.0$)[0-9.,]+$"))  # a rate above zero
                await expect(page.locator(
                    '#graph g.edge.flowing[data-source="channel:work"]'
                    '[data-target="agent:worker"]')).to_have_count(1)
            finally:
                flowing.cancel()

            # A dead letter appears in the table, is shown, and is replayed from the page.
            await organism.send("flaky", {"job": "J-1"})
            row = page.locator("#dead-letters tbody tr", has_text="flaky")
            await expect(row).to_have_count(1)
            await expect(row.locator("td.reason")).to_have_text("handler failed")
            await expect(row.locator("td.error")).to_contain_text("the service is down")
            await row.get_by_role("button", name="Show").click()
            await expect(page.locator("#letter-body")).to_contain_text("RuntimeError")
            flaky.broken = False
            await row.get_by_role("button", name="Replay").click()
            await asyncio.wait_for(flaky.done("J-1").wait(), EXPECT_TIMEOUT / 1000)
            await expect(page.locator("#replay-result")).to_have_text("replayed 1")
            await expect(page.locator("#dead-letters tbody tr")).to_have_count(0)
            assert organism.stats()["agents"]["flaky"]["handled"] == 1
            assert problems == []  # no script error, refused request or policy breach
        finally:
            await browser.close()


async def _pump(organism: Organism, page: Any, expect: Any) -> None:
    """Send a batch each time the page has polled: every interval sees spores flow.

    (Waited on with ``expect``: the page's policy forbids the eval that
    ``wait_for_function`` would need.)"""
    n = 0
    body = page.locator("body")
    while True:
        polls = await body.get_attribute("data-polls")
        for _ in range(20):
            n += 1
            await organism.send("intake", {"n": n})
        await expect(body).not_to_have_attribute("data-polls", polls or "")
