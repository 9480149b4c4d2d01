"""The dashboard's pages: server-rendered HTML (Jinja2, every value escaped), a stable URL each,
htmx for partial updates and a small script for the live parts (static/orchd.js).

Forms post to the page routes here, which call the same ``actions`` as the API and answer with
a redirect (the browser's back and reload stay harmless) and a one-line message.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from orchd.cli.output import duration
from orchd.cli.runs import get_run
from orchd.cli.status import report
from orchd.db.engine import mask
from orchd.durations import format_duration
from orchd.errors import NotFound, OrchdError
from orchd.models import Deployment, RunFilter, StateChange
from orchd.states import FINISHED, RunState, cancel_target
from orchd.web import actions, charts, words
from orchd.web.api import LATE_AFTER, filters, next_fire_times, status_of
from orchd.web.context import one_snapshot, web_of
from orchd.web.guard import csrf_token

TIMELINE = timedelta(hours=6)
PAGE = 50
STATES = [s.value for s in RunState]


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    web = web_of(request)
    body = web.templates.get_template(name).render(
        request=request,
        principal=request.scope.get("orchd.principal"),
        auth_enabled=web.auth.enabled,
        csrf=csrf_token(request.session),
        flashes=request.session.pop("flash", []),
        now=datetime.now(UTC),
        last_event=web.store.last_change_id(),
        zone=time.strftime("%Z"),
        **context,
    )
    return HTMLResponse(body, status, headers={"Cache-Control": "no-store"})


def flash(request: Request, kind: str, message: str) -> None:
    request.session["flash"] = [*request.session.get("flash", []), [kind, message]]


def page_errors(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """orchd's errors as an error page with the API's status; an unreachable database as 503.
    A page (GET) is read as one snapshot of the database (``Store.snapshot``)."""

    def wrapper(request: Request) -> Response:
        try:
            with one_snapshot(request):
                return handler(request)
        except OrchdError as exc:
            return render(request, "error.html", status_of(exc), message=str(exc))

    wrapper.__name__ = handler.__name__
    return wrapper


# ---------------------------------------------------------------------------------- pages


@page_errors
def overview(request: Request) -> Response:
    web = web_of(request)
    now = actions.now()
    checks, extra, pools = report(web.config, web.store, LATE_AFTER)
    view = web.store.overview(now, timeline=TIMELINE) if pools is not None else None
    links = {b.id: f"{web.base}runs/{b.id}" for b in (view.bars if view else [])}
    window = charts.window_for(view.bars, now) if view else TIMELINE
    return render(
        request,
        "overview.html",
        checks=checks,
        pools=pools or [],
        view=view,
        database=mask(web.store.engine.url),
        hourly=charts.hourly(view.hours, view.outcomes, time.strftime("%Z")) if view else None,
        timeline=charts.timeline(view.bars, now, window, links) if view else None,
        window=format_duration(window.total_seconds()),
        healthy=all(c.ok for c in checks),
        extra=extra,
    )


@page_errors
def runs(request: Request) -> Response:
    web = web_of(request)
    where = filters(request)
    upcoming = request.query_params.get("tab") == "upcoming"
    after = actions.decode_cursor(request.query_params.get("cursor"))
    fetch = web.store.upcoming_page if upcoming else web.store.runs_page
    page = fetch(where, actions.now(), after=after, limit=PAGE)
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor" and v]
    more = None
    if page.next is not None:
        more = f"{web.base}runs?" + urlencode([*query, ("cursor", actions.encode_cursor(page.next) or "")])
    context: dict[str, Any] = {
        "runs": page.runs,
        "more": more,
        "upcoming": upcoming,
        "where": where,
        "query": dict(query),
        "tab_link": lambda tab: (
            f"{web.base}runs?"
            + urlencode([(k, v) for k, v in query if k != "tab"] + ([("tab", tab)] if tab else []))
        ),
    }
    if request.headers.get("hx-request") and after is not None:
        return render(request, "_run_rows.html", **context)
    return render(
        request,
        "runs.html",
        states=STATES,
        deployments=web.store.deployment_names(),
        pools=web.store.pool_names(),
        **context,
    )


def _attempts(history: list[StateChange]) -> list[tuple[int, list[StateChange]]]:
    """The history grouped by attempt, for the page's timeline of each."""
    grouped: dict[int, list[StateChange]] = {}
    for h in history:
        grouped.setdefault(h.attempt, []).append(h)
    return sorted(grouped.items())


@page_errors
def run(request: Request) -> Response:
    web = web_of(request)
    run_id = int(request.path_params["run_id"])
    row = get_run(web.store, run_id)
    history = web.store.run_history(run_id)
    lines = web.store.run_logs(run_id, limit=5000)
    partial = request.query_params.get("part") == "summary"
    state = RunState(row.state)
    return render(
        request,
        "_run_summary.html" if partial else "run.html",
        run=row,
        chain=web.store.run_chain(row),
        history=history,
        attempts=_attempts(history),
        lines=lines,
        truncated=len(lines) == 5000,
        finished=state in FINISHED,
        cancellable=cancel_target(state) is not None,
        retryable=state in FINISHED,
        took=duration(row.started_at, row.finished_at),
        parameters_json=_json(row.parameters),
        result_json=None if row.result is None else _json(row.result),
        deliveries=web.store.deliveries(run_id=run_id, limit=50),
    )


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


@page_errors
def run_logs_text(request: Request) -> Response:
    """The whole captured output as a text file (each attempt marked)."""
    web = web_of(request)
    run_id = int(request.path_params["run_id"])
    get_run(web.store, run_id)
    parts: list[str] = []
    after, attempt = 0, None
    while True:
        lines = web.store.run_logs(run_id, after_id=after)
        for line in lines:
            if attempt is not None and line.attempt != attempt:
                parts.append(f"--- attempt {line.attempt} ---")
            attempt = line.attempt
            parts.append(line.line)
            after = line.id
        if len(lines) < 10_000:
            break
    return PlainTextResponse(
        "\n".join(parts) + ("\n" if parts else ""),
        headers={"Content-Disposition": f'attachment; filename="orchd-run-{run_id}.log"'},
    )


@page_errors
def deployments(request: Request) -> Response:
    web = web_of(request)
    found = web.store.deployments(include_archived=request.query_params.get("all") == "1")
    strips = web.store.strips([d.deployment.id for d in found])
    schedules = web.store.active_schedules_by_deployment()
    cards = [
        {
            "d": d,
            "schedules": [words.describe(s.spec) for s in schedules.get(d.deployment.id, [])],
            "strip": strips[d.deployment.id],
            "spark": charts.sparkline(strips[d.deployment.id].durations),
        }
        for d in found
    ]
    return render(request, "deployments.html", cards=cards)


@page_errors
def deployment(request: Request) -> Response:
    web = web_of(request)
    return _deployment_page(request, web.store.deployment(request.path_params["name"]))


def _deployment_page(request: Request, row: Deployment, status: int = 200, **extra: Any) -> Response:
    web = web_of(request)
    fires = next_fire_times(web, row)
    strip = web.store.strips([row.id])[row.id]
    described = [
        {
            "row": s.spec,
            "words": words.describe(s.spec),
            "next": [datetime.fromisoformat(t) for t in fires.get(s.id, [])],
        }
        for s in web.store.schedules_of(row.id)
    ]
    recent = web.store.runs_page(RunFilter(deployment=row.name), actions.now(), after=None, limit=20)
    context: dict[str, Any] = {
        "row": row,
        "spec": row.spec,
        "schedules": described,
        "strip": strip,
        "spark": charts.sparkline(strip.durations),
        "recent": recent.runs,
        "parameters_text": _json(row.spec.parameters),
        "edges": web.store.triggers_of(row.id),
        "run_error": None,
    }
    context.update(extra)
    return render(request, "deployment.html", status, **context)


@page_errors
def pools(request: Request) -> Response:
    web = web_of(request)
    now = actions.now()
    timeout = web.config.scheduler.worker_timeout
    workers = web.store.workers()
    held = web.store.held_runs()
    return render(
        request,
        "pools.html",
        pools=web.store.pools(now, timeout),
        workers=[
            {"w": w, "status": w.status_at(now, timeout), "held": held.get(w.name, [])} for w in workers
        ],
    )


# ---------------------------------------------------------------------------------- acting


async def _form(request: Request) -> dict[str, str]:
    return dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))


def _act(request: Request, back: str, call: Callable[[], Any], done: Callable[[Any], str]) -> Response:
    try:
        result = call()
    except OrchdError as exc:
        if isinstance(exc, NotFound):
            return render(request, "error.html", 404, message=str(exc))
        flash(request, "error", str(exc))
    else:
        flash(request, "ok", done(result))
    return RedirectResponse(back, 303)


def _run_action(act: Callable[[Request, int], dict[str, Any]], said: Callable[[dict[str, Any]], str]) -> Any:
    """A run's button (Cancel, Retry): the action, then back to the run with what happened."""

    async def handler(request: Request) -> Response:
        web = web_of(request)
        run_id = int(request.path_params["run_id"])
        await _form(request)
        back = f"{web.base}runs/{run_id}"
        return await asyncio.to_thread(_act, request, back, lambda: act(request, run_id), said)

    return handler


cancel = _run_action(
    actions.cancel_run,
    lambda r: (
        f"run {r['id']}: {r['state']}"
        + (" (its worker stops it within seconds)" if r["state"] == "CANCELLING" else "")
    ),
)
retry = _run_action(
    actions.retry_run, lambda r: f"run {r['id']}: SCHEDULED again as attempt {r['attempt']}, due now"
)


async def run_now(request: Request) -> Response:
    """Run now (or at a time) with parameters from the form; bad JSON re-shows the form (422)."""
    web = web_of(request)
    name = request.path_params["name"]
    form = await _form(request)

    def go() -> Response:
        try:
            parameters = actions.parse_parameters(form.get("parameters", ""))
            at = actions.parse_time(form.get("at"), "at", past=False)
            created = actions.create_run(request, name, parameters, at)
        except NotFound as exc:
            return render(request, "error.html", 404, message=str(exc))
        except (actions.Unprocessable, actions.BadRequest) as exc:
            row = web.store.deployment(name)
            return _deployment_page(
                request,
                row,
                422,
                run_error=str(exc),
                parameters_text=form.get("parameters", ""),
                at_text=form.get("at", ""),
            )
        except OrchdError as exc:
            flash(request, "error", str(exc))
            return RedirectResponse(f"{web.base}deployments/{name}", 303)
        flash(request, "ok", f"run {created['id']} of {name} created")
        return RedirectResponse(f"{web.base}runs/{created['id']}", 303)

    return await asyncio.to_thread(page_errors(lambda _r: go()), request)


def _pause(kind: str, paused: bool) -> Callable[[Request], Any]:
    async def handler(request: Request) -> Response:
        web = web_of(request)
        name = request.path_params["name"]
        await _form(request)
        if kind == "deployment":
            back = f"{web.base}deployments/{name}"
            call = lambda: actions.set_deployment_paused(request, name, paused)  # noqa: E731
        else:
            back = f"{web.base}pools"
            call = lambda: actions.set_pool_paused(request, name, paused)  # noqa: E731
        verb = "paused" if paused else "resumed"
        return await asyncio.to_thread(_act, request, back, call, lambda _r: f"{kind} {name} {verb}")

    return handler


# ---------------------------------------------------------------------------------- login


def _next_target(request: Request, raw: str | None) -> str:
    """Only a path of this dashboard: never an open redirect to another site."""
    base = web_of(request).base
    if raw and raw.startswith(base) and not raw.startswith("//") and "\\" not in raw:
        return raw
    return base


def login_page(request: Request) -> Response:
    return render(request, "login.html", next=_next_target(request, request.query_params.get("next")))


async def login(request: Request) -> Response:
    web = web_of(request)
    form = await _form(request)
    name, password = form.get("username", ""), form.get("password", "")
    target = _next_target(request, form.get("next"))
    client = request.client.host if request.client else "?"
    keys = [f"addr:{client}", f"user:{name}"]
    wait = web.auth.limiter.retry_after(keys)
    if wait > 0:
        return render(
            request,
            "login.html",
            429,
            next=target,
            username=name,
            error=f"too many failed logins: try again in {int(wait) + 1} s",
        )
    user = await _check(web, name, password)
    if user is None:
        web.auth.limiter.failed(keys)
        return render(
            request, "login.html", 401, next=target, username=name, error="wrong user name or password"
        )
    request.session.clear()
    request.session.update({"user": user.name, "fp": web.auth.fingerprint(user)})
    csrf_token(request.session)
    return RedirectResponse(target, 303)


async def _check(web: Any, name: str, password: str) -> Any:
    return await asyncio.to_thread(web.auth.users.check, name, password)


async def logout(request: Request) -> Response:
    await _form(request)
    request.session.clear()
    return RedirectResponse(web_of(request).base + "login", 303)


# ---------------------------------------------------------------------------------- errors


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(web_of(request).base + "api/")


async def not_found(request: Request, exc: Exception) -> Response:
    if _is_api(request):
        return JSONResponse({"error": "not found"}, 404)
    return render(request, "error.html", 404, message=f"{request.url.path}: no such page")


async def not_allowed(request: Request, exc: Exception) -> Response:
    if _is_api(request):
        return JSONResponse({"error": f"method {request.method} not allowed here"}, 405)
    return PlainTextResponse(f"method {request.method} not allowed here", 405)


async def server_error(request: Request, exc: Exception) -> Response:
    from orchd.web.app import log

    log.error("request failed", path=request.url.path, error=repr(exc))
    if _is_api(request):
        return JSONResponse({"error": "internal error (see the orchd-web log)"}, 500)
    return PlainTextResponse("internal error (see the orchd-web log)", 500)


def routes(base: str) -> list[Route]:
    return [
        Route(base, overview),
        Route(base + "runs", runs),
        Route(base + "runs/{run_id:int}", run),
        Route(base + "runs/{run_id:int}/logs.txt", run_logs_text),
        Route(base + "runs/{run_id:int}/cancel", cancel, methods=["POST"]),
        Route(base + "runs/{run_id:int}/retry", retry, methods=["POST"]),
        Route(base + "deployments", deployments),
        Route(base + "deployments/{name}", deployment),
        Route(base + "deployments/{name}/runs", run_now, methods=["POST"]),
        Route(base + "deployments/{name}/pause", _pause("deployment", True), methods=["POST"]),
        Route(base + "deployments/{name}/resume", _pause("deployment", False), methods=["POST"]),
        Route(base + "pools", pools),
        Route(base + "pools/{name}/pause", _pause("pool", True), methods=["POST"]),
        Route(base + "pools/{name}/resume", _pause("pool", False), methods=["POST"]),
        Route(base + "login", login_page, methods=["GET"]),
        Route(base + "login", login, methods=["POST"]),
        Route(base + "logout", logout, methods=["POST"]),
    ]
