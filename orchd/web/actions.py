"""What a person or a script can do through orchd-web: the same data-layer calls, guards and
errors as the matching ``orchd`` commands, recorded in the run history as ``web:USER``.

Pages (forms) and the API (JSON) both come here, so the two cannot drift apart; each function
returns what the CLI's ``--json`` would print after the action.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

import click
from starlette.requests import Request

from orchd.cli.deployments import require_deployment
from orchd.cli.params import When
from orchd.cli.pools import pool_json
from orchd.cli.runs import get_run, run_json
from orchd.db.store import Store
from orchd.errors import OrchdError
from orchd.web.auth import Principal
from orchd.web.context import web_of


class BadRequest(OrchdError):
    """The request itself is wrong (a bad filter, a malformed cursor): 400."""


class Unprocessable(OrchdError):
    """Well-formed but unusable input (parameters that are not a JSON object): 422."""


def principal(request: Request) -> Principal:
    found: Principal = request.scope["orchd.principal"]
    return found


def acting_store(request: Request) -> Store:
    """The web's store, acting as ``web:USER`` in the history (a Store is only engine + actor)."""
    return Store(web_of(request).store.engine, f"web:{principal(request).name}")


def now() -> datetime:
    return datetime.now(UTC)


def parse_parameters(raw: Any) -> dict[str, Any]:
    """A run's parameters: a JSON object (given as text from a form, or already parsed)."""
    if isinstance(raw, str):
        text = raw.strip() or "{}"
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise Unprocessable(f"parameters: not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise Unprocessable('parameters: expected a JSON object like {"days": 7}')
    return raw


def parse_time(raw: str | None, field: str, past: bool = True) -> datetime | None:
    """A time as the CLI takes it: ISO 8601, "now", or a duration ("1h" = an hour ago)."""
    if not raw or not raw.strip():
        return None
    try:
        value: datetime = When(past=past).convert(raw, None, None)
    except click.BadParameter as exc:
        raise BadRequest(f"{field}: {exc.format_message()}") from None
    return value


def encode_cursor(cursor: tuple[datetime, int] | None) -> str | None:
    if cursor is None:
        return None
    at, run_id = cursor
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{run_id}".encode()).decode().rstrip("=")


def decode_cursor(raw: str | None) -> tuple[datetime, int] | None:
    if not raw:
        return None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        at, _, run_id = text.partition("|")
        return datetime.fromisoformat(at).astimezone(UTC), int(run_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("cursor: not a cursor from a previous page") from None


def create_run(
    request: Request, deployment: str, parameters: dict[str, Any], at: datetime | None
) -> dict[str, Any]:
    """`orchd run create DEPLOYMENT --params-json ... [--at ...]`."""
    web = web_of(request)
    store = acting_store(request)
    require_deployment(store, web.config, deployment)
    run_id = store.create_run(deployment, now(), at=at, parameters=parameters, reason="created in the web")
    return run_json(get_run(store, run_id))


def cancel_run(request: Request, run_id: int) -> dict[str, Any]:
    """`orchd run cancel ID`."""
    store = acting_store(request)
    get_run(store, run_id)
    store.cancel_run(run_id, now())
    return run_json(get_run(store, run_id))


def retry_run(request: Request, run_id: int) -> dict[str, Any]:
    """`orchd run retry ID`."""
    store = acting_store(request)
    get_run(store, run_id)
    store.retry_run(run_id, now())
    return run_json(get_run(store, run_id))


def set_deployment_paused(request: Request, name: str, paused: bool) -> dict[str, Any]:
    """`orchd deployment pause|resume NAME`."""
    changed, dropped = acting_store(request).set_deployment_paused(name, paused, now())
    return {"name": name, "paused": paused, "changed": changed, "runs_dropped": dropped}


def set_pool_paused(request: Request, name: str, paused: bool) -> dict[str, Any]:
    """`orchd pool pause|resume NAME`."""
    web = web_of(request)
    store = acting_store(request)
    store.update_pool(name, now(), paused=paused)
    report = next(p for p in store.pools(now(), web.config.scheduler.worker_timeout) if p.name == name)
    return pool_json(report)
