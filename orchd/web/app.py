"""The ASGI application: routes, and the layers every request passes through.

Outermost first: the access log and request metrics; security headers on every response; the
signed session cookie; the guard (authentication, roles, CSRF, Host); then the route.  Pages and
API are two faces of the same objects and call the same data-layer functions as the CLI.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchd import __version__
from orchd.cli.output import duration, exact, iso, relative
from orchd.config import Config
from orchd.db.store import Store
from orchd.durations import format_duration
from orchd.logging import get_logger
from orchd.web import api, charts, pages
from orchd.web.auth import Auth
from orchd.web.context import Web
from orchd.web.guard import Guard
from orchd.web.live import Feed

log = get_logger("orchd.web")
HERE = Path(__file__).parent

REQUESTS = Counter("orchd_web_requests", "HTTP requests served by orchd-web.", ["method", "route", "status"])
LATENCY = Histogram(
    "orchd_web_request_seconds",
    "Time to the end of the response (server-sent event streams excluded).",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

#: script-src 'self' only: no inline script, no eval; styles from the stylesheet alone.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


class Observe:
    """Access log (one line per request: method, path, status, ms, user) and request metrics."""

    def __init__(self, app: ASGIApp, base: str) -> None:
        self.app = app
        self.base = base

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        streaming = False

        async def observe(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = dict(message.get("headers", []))
                streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            took = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None)
            label = route[len(self.base) - 1 :] if route else "unmatched"
            REQUESTS.labels(scope["method"], label, str(status)).inc()
            if not streaming:
                LATENCY.labels(label).observe(took)
            principal = scope.get("orchd.principal")
            client = scope.get("client")
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round(took * 1000, 1),
                user=principal.name if principal else "-",
                client=client[0] if client else None,
            )


def template_environment(base: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html", "svg"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(base=base, version=__version__, squares=lambda strip: charts.squares(strip, base))
    env.filters.update(
        iso=iso,
        exact=exact,
        when=relative,
        took=lambda start, end: duration(start, end) or "",
        seconds=format_duration,
    )
    return env


def create_app(config: Config, store: Store, watch_store: Any = None, auth: Auth | None = None) -> Starlette:
    """The application for ``config`` on ``store``; ``watch_store`` makes the SQLite change
    check's own connection (default: a new Store on the same URL)."""
    base = config.web.base_path
    auth = auth or Auth(config)

    def make_watch_store() -> Store:
        if watch_store is not None:
            return watch_store()  # type: ignore[no-any-return]
        from orchd.db.engine import make_engine

        return Store(make_engine(config.database), store.actor)

    web = Web(
        config=config,
        store=store,
        auth=auth,
        feed=Feed(store, make_watch_store, config.database),
        base=base,
        templates=template_environment(base),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        web.feed.start()
        try:
            yield
        finally:
            await web.feed.close()

    routes = [
        *pages.routes(base),
        *api.routes(base),
        Mount(base + "static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    https = config.web.public_url.startswith("https://")
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(Observe, base=base),
            Middleware(
                SessionMiddleware,
                secret_key=auth.secret,
                session_cookie="orchd_session",
                max_age=int(config.web.session_lifetime),
                path=base,
                same_site="lax",
                https_only=https,
            ),
            Middleware(Guard, auth=auth, base=base, public_url=config.web.public_url),
        ],
        exception_handlers={404: pages.not_found, 405: pages.not_allowed, 500: pages.server_error},
    )
    app.state.web = web
    return app
