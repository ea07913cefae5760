"""What a web page of another site may not make a browser do here: the HTTP ingress and
the control endpoint serve programs (curl, the CLI, a service) and our own dashboard,
never another site's pages.

A browser sends a page's requests with the user's cookies (the dashboard's token
cookie: ``SameSite`` does not tell ports apart, so a page on another port of 127.0.0.1
is the same site) and to any address, loopback included (a ``text/plain`` POST needs
no CORS preflight). So a request is refused when it says it comes from a page of
another origin (``Sec-Fetch-Site``, ``Origin``), and, on a loopback port, when its
``Host`` is no loopback name: a page whose domain was made to resolve to 127.0.0.1
(DNS rebinding) sends its own name there. Programs send none of these headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from sporeflow.config.hosts import is_loopback
from sporeflow.pipeline.core.http_serving import error_response

__all__ = ["cross_site_guard", "why_cross_site"]

_FROM_ANOTHER_SITE = frozenset({"cross-site", "same-site"})  # same-site: another port
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_site_guard(bound_host: str, *, tokenless: bool = False) -> Any:
    """A middleware answering 403 to what :func:`why_cross_site` refuses, for a server
    listening on ``bound_host``; ``tokenless``: it asks no token (an ``insecure: true``
    ingress), so a page whose name was made to point at it must be told apart by Host."""
    check_host = tokenless and is_loopback(bound_host)

    @web.middleware
    async def guard(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                    ) -> web.StreamResponse:
        why = why_cross_site(request, check_host=check_host, bound_host=bound_host)
        if why is not None:
            return error_response(403, "cross_site", why)
        return await handler(request)

    return guard


def why_cross_site(request: web.Request, *, check_host: bool, bound_host: str) -> str | None:
    """Why ``request`` looks made by a page of another site, or None.

    Only what a page could make a browser send counts. A read (GET, HEAD) is no harm: the
    page cannot read the answer without CORS, which these servers never grant, and a
    link to the dashboard from another page is a navigation that must open it. A
    request carrying ``Authorization`` is a program's: a page cannot add that header
    without a preflight that is never answered. The ``Host`` test (DNS rebinding) is for
    a server without a token alone: on one with a token, a rebound page has none to send
    (its cookie belongs to 127.0.0.1), while a reverse proxy may keep its public Host."""
    if check_host:
        name = _host_name(request.host)
        if not is_loopback(name) and name != bound_host:
            return (f"Host {request.host!r} is not a name of this loopback server (a page of "
                    f"another site, its name made to point here?); reach it as 127.0.0.1 "
                    f"or localhost")
    if request.method in _READS or "Authorization" in request.headers:
        return None
    fetched_from = request.headers.get("Sec-Fetch-Site")
    if fetched_from is not None:  # what every current browser says: the test that counts
        if fetched_from in _FROM_ANOTHER_SITE:
            return (f"a web page of another origin made this request (Sec-Fetch-Site: "
                    f"{fetched_from}); this server answers programs and its own pages only")
        return None
    origin = request.headers.get("Origin")
    # Its host and port against Host's, not its scheme: behind a proxy ending TLS, the
    # dashboard's own page is https:// while the request reaching here is http://.
    if origin is not None and urlsplit(origin).netloc != request.host:
        return (f"a web page of another origin ({origin[:100]!r}) made this request; this "
                f"server answers programs and its own pages only")
    return None


def _host_name(host: str) -> str:
    """``host`` (a Host header) without its port: ``[::1]:8080`` -> ``[::1]``."""
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
