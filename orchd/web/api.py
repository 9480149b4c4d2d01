"""The JSON API: the objects of the CLI's ``--json`` contract, over HTTP (README, "HTTP API").

Errors are ``{"error": "..."}`` with the status that says what kind: 400 a malformed request,
401/403 authentication and role (the guard), 404 an unknown run, deployment or pool, 409 an
action the run's state does not allow (the state machine's own message), 422 unusable
parameters, 503 the database is unreachable.  Never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from orchd.cli.deployments import deployment_detail_json, deployment_json, deployment_runs, next_run
from orchd.cli.output import iso
from orchd.cli.pools import pool_json, worker_json
from orchd.cli.runs import get_run, run_detail_json, run_json
from orchd.cli.status import report
from orchd.db.engine import ping
from orchd.errors import DatabaseError, DatabaseUnavailable, NotFound, OrchdError
from orchd.models import RunFilter
from orchd.states import FINISHED, RunState
from orchd.web import actions
from orchd.web.actions import BadRequest, Unprocessable
from orchd.web.context import one_snapshot, web_of
from orchd.web.live import Subscriber, line_json, sse

Handler = Callable[..., Any]
#: orchd status --late-after default
LATE_AFTER = 60.0
#: State changes replayed at most to a client resuming the events stream.
REPLAY = 10_000
#: Runs per page of /api/runs at most.
MAX_LIMIT = 1000


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


def status_of(exc: Exception) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, BadRequest):
        return 400
    if isinstance(exc, Unprocessable):
        return 422
    if isinstance(exc, DatabaseError):  # unreachable, or it refused: not the client's fault
        return 503
    return 409


def json_errors(handler: Handler) -> Handler:
    """orchd's errors as JSON with their status; an unreachable database as 503.  What an
    answer shows is read as one snapshot of the database (``Store.snapshot``)."""

    @functools.wraps(handler)
    def wrapper(request: Request) -> Response:
        try:
            with one_snapshot(request):
                return handler(request)  # type: ignore[no-any-return]
        except OrchdError as exc:
            return error(status_of(exc), str(exc))

    return wrapper


def run_id_of(request: Request) -> int:
    return int(request.path_params["run_id"])


def filters(request: Request) -> RunFilter:
    """The run ls filters from the query string: state (repeatable), deployment, pool, since,
    until (times as the CLI takes them), q (text in the error)."""
    query = request.query_params
    states = [s.upper() for s in query.getlist("state") if s]
    unknown = [s for s in states if s not in RunState.__members__]
    if unknown:
        raise BadRequest(f"state: unknown state {unknown[0]!r} (one of {', '.join(RunState)})")
    return RunFilter(
        states=states,
        deployment=query.get("deployment") or None,
        pool=query.get("pool") or None,
        since=actions.parse_time(query.get("since"), "since"),
        until=actions.parse_time(query.get("until"), "until"),
        text=query.get("q") or None,
    )


def limit_of(request: Request, default: int = 50) -> int:
    raw = request.query_params.get("limit")
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise BadRequest(f"limit: expected a number, got {raw!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise BadRequest(f"limit: expected 1 to {MAX_LIMIT}, got {value}")
    return value


async def read_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"body: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("body: expected a JSON object")
    return value


# ---------------------------------------------------------------------------------- reading


def health(request: Request) -> Response:
    """For load balancers and systemd checks: 200 while the database answers, else 503."""
    web = web_of(request)
    try:
        server = ping(web.store.engine)
    except DatabaseUnavailable as exc:
        return JSONResponse({"status": "unavailable", "error": str(exc)}, 503)
    return JSONResponse({"status": "ok", "database": server})


@json_errors
def status(request: Request) -> Response:
    web = web_of(request)
    checks, extra, _pools = report(web.config, web.store, LATE_AFTER)
    healthy = all(c.ok for c in checks)
    return JSONResponse({"healthy": healthy, "checks": [c.__dict__ for c in checks], **extra})


@json_errors
def runs(request: Request) -> Response:
    """A page of runs: ``?state=FAILED&deployment=...&since=1d&q=text&limit=50&cursor=...``;
    ``upcoming=1`` for runs waiting for their time, soonest first."""
    web = web_of(request)
    where = filters(request)
    after = actions.decode_cursor(request.query_params.get("cursor"))
    limit = limit_of(request)
    if where.deployment:
        web.store.deployment(where.deployment)
    if where.pool:
        web.store.pool(where.pool)
    upcoming = request.query_params.get("upcoming") in ("1", "true", "yes")
    fetch = web.store.upcoming_page if upcoming else web.store.runs_page
    page = fetch(where, actions.now(), after=after, limit=limit)
    return JSONResponse(
        {"runs": [run_json(r) for r in page.runs], "next_cursor": actions.encode_cursor(page.next)}
    )


@json_errors
def run(request: Request) -> Response:
    web = web_of(request)
    run_id = run_id_of(request)
    row = get_run(web.store, run_id)
    history = web.store.run_history(run_id)
    return JSONResponse(run_detail_json(row, history, web.store.run_chain(row)))


@json_errors
def logs(request: Request) -> Response:
    """``?after=N``: the lines after line id N (at most 10,000), and whether the run is finished
    (then there will be no more)."""
    web = web_of(request)
    run_id = run_id_of(request)
    try:
        after = int(request.query_params.get("after") or 0)
    except ValueError:
        raise BadRequest("after: expected a line id (a number)") from None
    row = get_run(web.store, run_id)
    lines = web.store.run_logs(run_id, after_id=after)
    return JSONResponse(
        {
            "lines": [line_json(line) for line in lines],
            "last_id": lines[-1].id if lines else after,
            "finished": RunState(row.state) in FINISHED,
        }
    )


async def logs_stream(request: Request) -> Response:
    """SSE: ``line`` events (id = line id) as the run writes them, ``state`` events as it moves;
    resumes after ``Last-Event-ID`` (or ``?after=N``)."""
    web = web_of(request)
    run_id = run_id_of(request)
    try:
        after = int(request.headers.get("last-event-id") or request.query_params.get("after") or 0)
        seen = request.query_params.get("events_after")
        events_after = int(seen) if seen else await _in_thread(web.store.last_change_id)
    except ValueError:
        return error(400, "after, events_after: expected an id (a number)")
    try:  # the state is read after the cursor, so no change can fall between the two
        row = await _in_thread(get_run, web.store, run_id)
    except NotFound as exc:
        return error(404, str(exc))
    web.feed.track(run_id, RunState(row.state) not in FINISHED)
    sub = Subscriber(events_after, run_id=run_id, log_after=after)
    first = [sse({"state": row.state, "run_id": run_id}, "hello")]
    return _event_stream(web.feed.stream(sub, first))


async def events_stream(request: Request) -> Response:
    """SSE of every run state change (``state`` events, id = history id); resumes after
    ``Last-Event-ID`` (or ``?after=N``), replaying what was missed (at most REPLAY events)."""
    web = web_of(request)
    raw = request.headers.get("last-event-id") or request.query_params.get("after")
    try:
        after = int(raw) if raw else None
    except ValueError:
        return error(400, "after: expected an event id (a number)")
    last = await _in_thread(web.store.last_change_id)
    after = last if after is None else max(after, last - REPLAY)
    # what it missed comes from the feed, which reads from ``after`` again for it (see Feed.stream)
    return _event_stream(web.feed.stream(Subscriber(after), []))


def _event_stream(body: Any) -> Response:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _in_thread(func: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(func, *args)


@json_errors
def deployments(request: Request) -> Response:
    web = web_of(request)
    include_archived = request.query_params.get("all") in ("1", "true", "yes")
    now = datetime.now(UTC)
    return JSONResponse(
        [deployment_json(d, next_run(web.store, d, now)) for d in web.store.deployments(include_archived)]
    )


@json_errors
def deployment(request: Request) -> Response:
    """`deployment show --json`, plus ``next_fire_times``: the next 5 of each active schedule."""
    web = web_of(request)
    name = request.path_params["name"]
    row = web.store.deployment(name)
    schedules = web.store.schedules_of(row.id)
    recent, upcoming, next_fires = deployment_runs(web.store, row, datetime.now(UTC))
    body = deployment_detail_json(row, schedules, recent, upcoming, next_fires, web.store.triggers_of(row.id))
    fires = next_fire_times(web, row)
    for entry in body["schedules"]:
        entry["next_fire_times"] = fires.get(entry["id"], [])
    return JSONResponse(body)


def next_fire_times(web: Any, row: Any, count: int = 5) -> dict[int, list[str]]:
    """The next ``count`` fire times of each active schedule (none while the deployment is paused
    or archived), computed from the schedule as `orchd schedule preview` does."""
    if row.paused or row.archived_at is not None:
        return {}
    now = actions.now()
    found: dict[int, list[str]] = {}
    for schedule in web.store.active_schedules(row.id):
        times = schedule.spec.fire_times(now, now + timedelta(days=3660), count)
        found[schedule.id] = [str(iso(t)) for t in times]
    return found


@json_errors
def pools(request: Request) -> Response:
    web = web_of(request)
    return JSONResponse(
        [pool_json(p) for p in web.store.pools(actions.now(), web.config.scheduler.worker_timeout)]
    )


@json_errors
def workers(request: Request) -> Response:
    web = web_of(request)
    now, timeout = actions.now(), web.config.scheduler.worker_timeout
    return JSONResponse([worker_json(w, now, timeout) for w in web.store.workers()])


# ---------------------------------------------------------------------------------- acting


async def create_run(request: Request) -> Response:
    """Body: ``{"parameters": {...}, "at": "TIME"}`` (both optional); 201 with the run."""
    try:
        body = await read_json(request)
        parameters = actions.parse_parameters(body.get("parameters", {}))
        at_raw = body.get("at")
        if at_raw is not None and not isinstance(at_raw, str):
            raise BadRequest("at: expected a time as text")
        at = actions.parse_time(at_raw, "at", past=False)
    except OrchdError as exc:
        return error(status_of(exc), str(exc))
    name = request.path_params["name"]
    return await _act(lambda: (201, actions.create_run(request, name, parameters, at)))


async def cancel_run(request: Request) -> Response:
    return await _act(lambda: (200, actions.cancel_run(request, run_id_of(request))))


async def retry_run(request: Request) -> Response:
    return await _act(lambda: (200, actions.retry_run(request, run_id_of(request))))


def _paused(kind: str, paused: bool) -> Handler:
    act = actions.set_deployment_paused if kind == "deployment" else actions.set_pool_paused

    async def handler(request: Request) -> Response:
        return await _act(lambda: (200, act(request, request.path_params["name"], paused)))

    return handler


async def _act(call: Callable[[], tuple[int, Any]]) -> Response:
    status_and_body = await _in_thread(json_errors(lambda _request: _respond(call)), None)
    return status_and_body  # type: ignore[no-any-return]


def _respond(call: Callable[[], tuple[int, Any]]) -> Response:
    code, body = call()
    return JSONResponse(body, code)


def routes(base: str) -> list[Route]:
    a = base + "api/"
    return [
        Route(a + "health", health),
        Route(a + "status", status),
        Route(a + "runs", runs),
        Route(a + "runs/{run_id:int}", run),
        Route(a + "runs/{run_id:int}/logs", logs),
        Route(a + "runs/{run_id:int}/logs/stream", logs_stream),
        Route(a + "runs/{run_id:int}/cancel", cancel_run, methods=["POST"]),
        Route(a + "runs/{run_id:int}/retry", retry_run, methods=["POST"]),
        Route(a + "events/stream", events_stream),
        Route(a + "deployments", deployments),
        Route(a + "deployments/{name}", deployment),
        Route(a + "deployments/{name}/runs", create_run, methods=["POST"]),
        Route(a + "deployments/{name}/pause", _paused("deployment", True), methods=["POST"]),
        Route(a + "deployments/{name}/resume", _paused("deployment", False), methods=["POST"]),
        Route(a + "pools", pools),
        Route(a + "pools/{name}/pause", _paused("pool", True), methods=["POST"]),
        Route(a + "pools/{name}/resume", _paused("pool", False), methods=["POST"]),
        Route(a + "workers", workers),
    ]
