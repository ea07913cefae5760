"""Serving the control endpoint around a run: ``async with ControlServer(...):``.

It claims the organism file's address first (``service.address``: a second run of
the file is refused there, before anything starts), serves the API on the Unix
socket, and with ``http_port`` also on 127.0.0.1 behind a token, with the dashboard
mounted there on request. Leaving the block closes both and gives the address up.
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from sporeflow.pipeline.core.cross_site import cross_site_guard
from sporeflow.pipeline.core.http_serving import BoundedSite, app_runner
from sporeflow.pipeline.core.privatefiles import open_private
from sporeflow.pipeline.observe.lineage import TraceWindow
from sporeflow.pipeline.reload.diff import ReloadReport
from sporeflow.pipeline.service.address import Claim, ControlAddress, ControlError, claim
from sporeflow.pipeline.service.control import ControlOrganism, control_app, token_guard

_log = logging.getLogger("sporeflow.control")

__all__ = ["DASHBOARD_PORT", "TOKEN_VARIABLE", "ControlServer"]

TOKEN_VARIABLE = "SPOREFLOW_CONTROL_TOKEN"
DASHBOARD_PORT = 8787
_DASHBOARD = "sporeflow.pipeline.service.dashboard"
_GRACE = 2.0  # seconds open requests get once the endpoint closes (streams end at once)


class ControlServer:
    """The control endpoint of ``organism``, run from ``organism_file``; ``replicas``: it
    runs over a broker, where several processes may host the same agents."""

    def __init__(self, organism: ControlOrganism, organism_file: Path, *,
                 hosted: Iterable[str] | None = None, http_port: int | None = None,
                 http_host: str = "127.0.0.1", dashboard: bool = False,
                 echo: Callable[[str], None], quiet: bool = False,
                 on_reload: Callable[[ReloadReport], None] | None = None,
                 address: ControlAddress | None = None, replicas: bool = False) -> None:
        self.organism = organism
        self.organism_file = organism_file
        self.address = address or ControlAddress.of(organism_file, organism.spec.name, hosted)
        self.http_port = DASHBOARD_PORT if dashboard and http_port is None else http_port
        self.http_host = http_host
        self.dashboard = dashboard
        self.echo = echo
        self.quiet = quiet
        self.on_reload = on_reload
        self.replicas = replicas  # over a broker: a second process of the file may run
        self.url: str | None = None  # the HTTP listener's, once serving
        self._claim: Claim | None = None
        self._runners: list[web.AppRunner] = []
        self._token_file: Path | None = None
        self.trace = TraceWindow()  # one for both listeners, attached once it serves

    async def __aenter__(self) -> ControlServer:
        self._claim = claim(self.address, self.organism_file, replica=self.replicas)
        self.address = self._claim.address
        self.organism.add_hook(self.trace)
        try:
            await self._serve_socket()
            if self.http_port is not None:
                await self._serve_http(self.http_port)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop serving and give the address up (the socket and a made token go)."""
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
        if self._token_file is not None:
            self._token_file.unlink(missing_ok=True)
            self._token_file = None
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    async def _start(self, app: web.Application, site: Callable[[web.AppRunner],
                     web.BaseSite]) -> web.AppRunner:
        runner = app_runner(app, _log, shutdown_timeout=_GRACE)
        await runner.setup()
        self._runners.append(runner)
        await site(runner).start()
        return runner

    async def _serve_socket(self) -> None:
        path = self.address.socket
        app = control_app(self.organism, on_reload=self.on_reload, trace=self.trace)
        await self._start(app, lambda runner: web.UnixSite(runner, str(path)))
        os.chmod(path, 0o600)  # its folder is private already: this is belt and braces
        line = (f"control: {path} (`sporeflow send/tail/stats/reload/dlq "
                f"{self.organism_file}` reach this run)")
        if self.quiet:  # off a terminal, or --quiet: stderr is the final summary's
            _log.info("%s", line)
        else:
            self.echo(line)

    async def _serve_http(self, port: int) -> None:
        token, told = self._token()
        # A page of another site is refused first: the token cookie must not speak for it.
        guards = (cross_site_guard(self.http_host), token_guard(token))
        app = control_app(self.organism, on_reload=self.on_reload, middlewares=guards,
                          trace=self.trace)
        mounted = self._mount_dashboard(app) if self.dashboard else False
        try:
            runner = await self._start(app, lambda runner: BoundedSite(
                runner, self.http_host, port, _log))
        except OSError as exc:
            raise ControlError(
                f"{self.http_host}:{port}: the control endpoint cannot listen there "
                f"({exc.strerror or exc}); pass --control-http PORT with a free port (0 picks "
                f"one)") from None
        bound = runner.addresses[0][1] if runner.addresses else port
        base = f"http://{self.http_host}:{bound}"
        query = f"?token={token}" if told else ""
        self.url = f"{base}/" if mounted else f"{base}/v1/"
        where = (f" (the token is in {self._token_file})" if self._token_file else
                 f" (the token is ${TOKEN_VARIABLE})")
        self.echo(f"{'dashboard' if mounted else 'control'}: {self.url}{query}{where}")

    def _token(self) -> tuple[str, bool]:
        """The token: ``$SPOREFLOW_CONTROL_TOKEN``, else a new one written 0600 beside the
        socket; and whether it may be printed (not the user's own)."""
        given = os.environ.get(TOKEN_VARIABLE, "").strip()
        if given:
            return given, False
        token = secrets.token_urlsafe(32)
        path = self.address.token
        path.unlink(missing_ok=True)  # a dead run's: this file is made private anew
        fd = open_private(path, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w") as file:
            file.write(token + "\n")
        self._token_file = path
        return token, True

    def _mount_dashboard(self, app: web.Application) -> bool:
        """Mount the web dashboard on ``app``, when this sporeflow has one."""
        try:
            module: Any = importlib.import_module(_DASHBOARD)
        except ModuleNotFoundError as exc:
            if exc.name != _DASHBOARD:
                raise
            self.echo("no dashboard: this installation of sporeflow has none; serving the "
                      "control API only")
            return False
        module.mount_dashboard(app, self.organism)
        return True
