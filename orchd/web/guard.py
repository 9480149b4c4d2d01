"""Every request passes here before any route: who is asking, may they, and is it really them.

* Authentication: a Bearer token, else the session cookie, else -- only while no user and no
  token exist, which the daemon allows on a loopback address alone -- anyone, as an operator.
* Open without authentication: ``api/health``, ``login`` and ``static/``; everything else is
  refused (API: 401 JSON; pages: a redirect to the login page).
* Roles: a request that changes something (any method but GET/HEAD) needs an operator.
* CSRF: a state-changing request authenticated by the session cookie must carry the session's
  token (form field ``csrf`` or header ``X-CSRF-Token``); so must an unauthenticated one unless
  it is JSON (which a foreign page cannot send without a CORS preflight nobody answers).  A
  foreign ``Origin`` is refused outright.  Bearer requests carry no cookie and need no token.
* DNS rebinding: without auth, the Host header must name this machine (or ``public_url``).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchd.web.auth import OPERATOR, Auth, Principal

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
OPEN = ("api/health", "login", "static/")
#: Form bodies are small (a login, a run's parameters); anything bigger is refused.
MAX_BODY = 256 * 1024
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def csrf_token(session: MutableMapping[str, Any]) -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(24)
    return token


def _loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1 : host.find("]")]
    if name.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Guard:
    def __init__(self, app: ASGIApp, auth: Auth, base: str, public_url: str) -> None:
        self.app = app
        self.auth = auth
        self.base = base
        self.public_host = urlsplit(public_url).netloc.lower() if public_url else ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if not path.startswith(self.base):  # not ours: the router answers 404
            await self.app(scope, receive, send)
            return
        local = path[len(self.base) :]
        api = local.startswith("api/")
        headers = Headers(scope=scope)
        method: str = scope["method"]

        def refuse(status: int, message: str, extra: dict[str, str] | None = None) -> Response:
            if api:
                return JSONResponse({"error": message}, status, headers=extra)
            return PlainTextResponse(message, status, headers=extra)

        enabled = self.auth.enabled
        host = headers.get("host", "").lower()
        if not enabled and not (_loopback_host(host) or (self.public_host and host == self.public_host)):
            await refuse(400, f"host {host!r} is not served without auth")(scope, receive, send)
            return
        origin = headers.get("origin")
        if (
            method not in SAFE_METHODS
            and origin
            and urlsplit(origin).netloc.lower()
            not in {
                host,
                self.public_host,
            }
        ):
            await refuse(403, "cross-origin request refused")(scope, receive, send)
            return

        principal: Principal | None = None
        authorization = headers.get("authorization", "")
        if authorization:
            scheme, _, presented = authorization.partition(" ")
            principal = self.auth.bearer(presented.strip()) if scheme.lower() == "bearer" else None
            if principal is None:
                await refuse(401, "invalid API token", {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        else:
            principal = self.auth.from_session(scope["session"])
            if principal is None and not enabled:
                principal = Principal("anonymous", OPERATOR, "anonymous")
        scope["orchd.principal"] = principal

        if principal is None and not local.startswith(OPEN):
            if api or method not in SAFE_METHODS:
                await refuse(401, "authentication required", {"WWW-Authenticate": "Bearer"})(
                    scope, receive, send
                )
                return
            target = (
                self.base
                + "login?next="
                + quote(
                    path + (f"?{scope['query_string'].decode()}" if scope["query_string"] else ""), safe="/"
                )
            )
            await RedirectResponse(target, 303)(scope, receive, send)
            return

        if method in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        if principal is not None and not principal.may_act and local not in ("login", "logout"):
            await refuse(403, f"{principal.name} is a viewer: this needs the operator role")(
                scope, receive, send
            )
            return
        needs_token = (
            principal is None
            or principal.via == "session"
            or (
                principal.via == "anonymous"
                and headers.get("content-type", "").split(";")[0].strip() != "application/json"
            )
        )
        if not needs_token:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            await refuse(413, "request body too large")(scope, receive, send)
            return
        token: str | None = headers.get("x-csrf-token") or _form_field(headers, body, "csrf")
        expected = scope["session"].get("csrf")
        if not (isinstance(expected, str) and token and hmac.compare_digest(token, expected)):
            await refuse(403, "missing or wrong CSRF token: reload the page and try again")(
                scope, receive, send
            )
            return
        await self.app(scope, _replay(body), send)


async def _read_body(receive: Receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Callable[[], Awaitable[Message]]:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def _form_field(headers: Headers, body: bytes, name: str) -> str | None:
    kind = headers.get("content-type", "").split(";")[0].strip()
    if kind == "application/x-www-form-urlencoded":
        return dict(parse_qsl(body.decode("utf-8", "replace"))).get(name)
    if kind == "application/json":
        try:
            value = json.loads(body).get(name) if body else None
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None
    return None
