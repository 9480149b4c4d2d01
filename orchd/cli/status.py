"""``orchd status``: the one screen an operator reads first, and a monitoring check.

Exit status 0 when every check passes, 1 when something needs attention (the same 1 as any
error, so a check that cannot even reach the database fails too); 2 and 78 keep their meaning
(usage, configuration).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from orchd.cli.common import common_options, load, open_store
from orchd.cli.output import age, iso, local, plural, print_json
from orchd.cli.params import Duration
from orchd.cli.pools import pool_json, print_pools
from orchd.config import Config
from orchd.db import migrate
from orchd.db.engine import describe, ping
from orchd.db.server import Connections, connections
from orchd.db.store import Store
from orchd.durations import format_duration
from orchd.errors import DatabaseUnavailable
from orchd.models import Health, PoolReport
from orchd.scheduler.daemon import SEEN_EVERY
from orchd.states import RETRYABLE, RunState
from orchd.worker.containers import Engine, EngineUnavailable

#: Failures counted by the check: those of the last hour.
WINDOW = 3600.0
#: Server connections in use from which the check warns (of those ordinary users may open).
CONNECTIONS_NEAR = 0.8
FAILURES = [s.value for s in RunState if s in RETRYABLE]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")


def judge(health: Health, config: Config, late_after: float) -> list[Check]:
    """The checks after the database one; each says what is wrong and where to look."""
    leader, timeout = health.leader, config.scheduler.worker_timeout
    if leader is None:
        scheduler = Check("scheduler", False, "no scheduler has run on this database: start orchd-scheduler")
    else:
        fresh = (health.now - leader.last_tick_at).total_seconds() <= timeout
        standbys = f"; {health.standbys} standby" if health.standbys else ""
        # the leader records itself every SEEN_EVERY, not every tick: say so, or 8s reads as a hang
        seen = age(leader.last_tick_at, health.now)
        where = f"{leader.host} (pid {leader.pid})"
        scheduler = Check(
            "scheduler",
            fresh,
            f"leader {where}, seen {seen} (it reports every {format_duration(SEEN_EVERY)}){standbys}"
            if fresh
            else f"no leader seen for {format_duration(timeout)}: the last was {where}, seen {seen}",
        )
    unserved = [p for p in health.pools if not p.paused and p.workers == 0 and (p.due or p.deployments)]
    workers = Check(
        "workers",
        not unserved,
        "; ".join(f"pool {p.name}: no worker online ({plural(p.due, 'run')} due)" for p in unserved)
        or f"{health.workers_online} online",
    )
    after = format_duration(late_after)
    late = Check(
        "late runs",
        not health.late,
        f"{plural(len(health.late), 'run')} due more than {after} ago, still waiting: {_ids(health.late)}"
        if health.late
        else f"none due more than {after} ago",
    )
    stuck = Check(
        "stuck runs",
        not health.stuck,
        f"{plural(len(health.stuck), 'run')} past their lease: {_ids(health.stuck)} "
        "(is a scheduler up to reap them?)"
        if health.stuck
        else "none past their lease",
    )
    failures = Check(
        "failures",
        not health.failures,
        f"{plural(health.failures, 'run')} failed, timed out or crashed in the last hour "
        f"(orchd run ls --since 1h {' '.join(f'--state {s}' for s in FAILURES)})"
        if health.failures
        else "none in the last hour",
    )
    return [scheduler, workers, late, stuck, failures]


def connection_check(found: Connections | None) -> list[Check]:
    """PostgreSQL: how close the server is to max_connections (a fleet grows into it)."""
    if found is None:
        return []
    used = f"{found.used} of {found.limit} in use ({found.share:.0%}), {found.orchd} of them orchd's"
    if found.share < CONNECTIONS_NEAR:
        return [Check("connections", True, used)]
    return [
        Check(
            "connections",
            False,
            f"{used}: near max_connections, and then new workers and commands are refused; a worker "
            "needs about 2: raise max_connections or put PgBouncer in front (README: Scaling out)",
        )
    ]


def containers(config: Config) -> list[Check]:
    """When deployments run in containers: does this host's engine answer?  (Each worker checks
    its own at start and says so in its status line.)"""
    pools = sorted({d.pool for d in config.deployments if d.image})
    if not pools:
        return []
    one = len(pools) == 1
    needing = f"pool{'' if one else 's'} {', '.join(pools)}"
    try:
        engine = Engine.find(config.worker.container_runtime, config.worker.container_binary)
        version = engine.check()
    except EngineUnavailable as exc:
        verb = "runs" if one else "run"
        return [Check("containers", False, f"{needing} {verb} containers, but on this host: {exc}")]
    return [Check("containers", True, f"{version} ({engine.binary}) for {needing}")]


def _show(checks: list[Check], as_json: bool, extra: dict[str, Any], body: Any = None) -> None:
    healthy = all(c.ok for c in checks)
    if as_json:
        print_json({"healthy": healthy, "checks": [c.__dict__ for c in checks], **extra})
    else:
        click.echo(f"orchd status at {local(datetime.now(UTC))}")
        for c in checks:
            mark = click.style("ok  ", fg="green") if c.ok else click.style("FAIL", fg="red", bold=True)
            click.echo(f"{mark}  {c.name:<10} {c.detail}")
        if body is not None:
            click.echo()
            body()
        problems = sum(not c.ok for c in checks)
        if problems:
            click.echo(f"\n{problems} {'checks need' if problems > 1 else 'check needs'} attention")
    raise SystemExit(0 if healthy else 1)


@click.command("status")
@click.option(
    "--late-after",
    type=Duration(),
    default="1m",
    show_default=True,
    help="A due run still waiting this long is late.",
)
@common_options
def status(late_after: float, config_path: Path | None, as_json: bool) -> None:
    """Is orchd healthy?  Database, scheduler leader, workers per pool, queue, late and stuck runs,
    failures of the last hour, the server's connections (PostgreSQL), and the container engine
    when deployments need one.
    Exit status 0: healthy; 1: something needs attention.

    \b
    Example:
      orchd status
      orchd status --json | jq .checks
      orchd status >/dev/null || alert "orchd needs attention"
    """
    config = load(config_path)
    try:
        store = open_store(config, schema=False)
    except DatabaseUnavailable as exc:
        _show([Check("database", False, str(exc))], as_json, {})
        return
    checks, extra, pools = report(config, store, late_after)
    body = None if pools is None else (lambda: print_pools(pools, datetime.now(UTC)))
    _show(checks, as_json, extra, body)


def report(
    config: Config, store: Store, late_after: float
) -> tuple[list[Check], dict[str, Any], list[PoolReport] | None]:
    """The checks, the JSON beside them (`orchd status --json` less ``healthy`` and ``checks``),
    and the pools (None when the database is not usable): shared by `orchd status` and the web."""
    try:
        server = ping(store.engine)
    except DatabaseUnavailable as exc:
        return [Check("database", False, str(exc))], {}, None
    current, head = migrate.current_revision(store.engine), migrate.HEAD  # (a test keeps HEAD right)
    where = describe(store.engine.url)
    database = {"where": where, "server": server, "revision": current, "head": head}
    if current != head:
        detail = f"{where}: schema {current or 'empty'}, orchd needs {head}: run `orchd db upgrade`"
        return [Check("database", False, detail)], {"database": database}, None
    now = datetime.now(UTC)
    health = store.health(
        now, worker_timeout=config.scheduler.worker_timeout, late_after=late_after, window=WINDOW
    )
    checks = [Check("database", True, f"{where}, {server}, schema {current} (current)")]
    found = connections(store.engine)
    checks += judge(health, config, late_after) + connection_check(found) + containers(config)
    leader = health.leader
    extra = {
        "database": database,
        "scheduler": leader
        and {
            "name": leader.name,
            "host": leader.host,
            "pid": leader.pid,
            "last_tick_at": iso(leader.last_tick_at),
        },
        "workers_online": health.workers_online,
        "pools": [pool_json(p) for p in health.pools],
        "late_runs": health.late,
        "stuck_runs": health.stuck,
        "failures_last_hour": health.failures,
        "connections": found and {"used": found.used, "orchd": found.orchd, "limit": found.limit},
    }
    return checks, extra, health.pools
