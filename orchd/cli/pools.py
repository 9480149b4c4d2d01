"""``orchd pool ...`` and ``orchd worker ls``: where runs execute, and who executes them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from orchd.cli.common import common_options, load, open_store
from orchd.cli.output import iso, print_json, print_table, relative
from orchd.cli.params import Setting
from orchd.config import Config
from orchd.config.fields import parser_of
from orchd.config.model import PoolConfig, pool_name
from orchd.db.store import Store
from orchd.models import PoolReport, Worker


def pool_json(p: PoolReport) -> dict[str, Any]:
    return {
        "name": p.name,
        "paused": p.paused,
        "concurrency_limit": p.concurrency_limit,
        "workers": p.workers,
        "slots": p.slots,
        "active": p.active,
        "due": p.due,
        "upcoming": p.upcoming,
        "oldest_due_at": iso(p.oldest_due),
    }


@click.group("pool")
def pool_group() -> None:
    """Pools: the queues workers serve.  Pause one, or limit how many of its runs are active.

    A pool declared under [[pools]] in the config takes its paused and concurrency_limit from
    there again whenever the config is applied (scheduler start, SIGHUP, `orchd deployment apply`).

    \b
    Example:
      orchd pool ls
      orchd pool set-limit gpu 2
    """


@pool_group.command("ls")
@common_options
def pool_ls(config_path: Path | None, as_json: bool) -> None:
    """List pools with their workers, slots and queue.

    \b
    Example:
      orchd pool ls --json
    """
    config = load(config_path)
    now = datetime.now(UTC)
    found = open_store(config).pools(now, config.scheduler.worker_timeout)
    if as_json:
        print_json([pool_json(p) for p in found])
        return
    print_pools(found, now)


def print_pools(found: list[PoolReport], now: datetime) -> None:
    print_table(
        ["POOL", "STATUS", "LIMIT", "WORKERS", "SLOTS", "ACTIVE", "DUE", "OLDEST DUE", "UPCOMING"],
        [
            [
                p.name,
                "paused" if p.paused else "open",
                p.concurrency_limit,
                p.workers,
                p.slots,
                p.active,
                p.due,
                relative(p.oldest_due, now) if p.oldest_due else None,
                p.upcoming,
            ]
            for p in found
        ],
    )


#: A pool's name and limit as the config accepts them.
POOL_NAME = Setting(pool_name, "NAME")
POOL_LIMIT = Setting(parser_of(PoolConfig, "concurrency_limit"), "LIMIT")


def _done(config: Config, store: Store, name: str, as_json: bool, message: str, **changed: Any) -> None:
    """Say what changed, and warn when the config will change it back at the next apply."""
    declared = next((p for p in config.pools if p.name == name), None)
    for key, value in changed.items():
        if declared is not None and getattr(declared, key) != value:
            click.echo(
                f"note: [[pools]] {name} in {config.path} sets {key} = {getattr(declared, key) or 0}; "
                "the next apply of the config restores that",
                err=True,
            )
    if as_json:
        report = next(
            p for p in store.pools(datetime.now(UTC), config.scheduler.worker_timeout) if p.name == name
        )
        print_json(pool_json(report))
    else:
        click.echo(message)


@pool_group.command("create")
@click.argument("name", type=POOL_NAME)
@click.option("--limit", type=POOL_LIMIT, default=0, help="Runs of the pool active at once (0: no limit).")
@click.option("--paused", is_flag=True, help="Create it paused.")
@common_options
def pool_create(name: str, limit: int | None, paused: bool, config_path: Path | None, as_json: bool) -> None:
    """Create a pool (pools used by deployments or workers are created for you).

    \b
    Example:
      orchd pool create gpu --limit 2
    """
    config = load(config_path)
    store = open_store(config)
    store.create_pool(name, limit, paused, datetime.now(UTC))
    _done(config, store, name, as_json, f"pool {name} created")


def _update(name: str, config_path: Path | None, as_json: bool, message: str, **values: Any) -> None:
    config = load(config_path)
    store = open_store(config)
    store.update_pool(name, datetime.now(UTC), **values)
    _done(config, store, name, as_json, message, **values)


@pool_group.command("pause")
@click.argument("name")
@common_options
def pool_pause(name: str, config_path: Path | None, as_json: bool) -> None:
    """Stop workers from claiming the pool's runs (running ones finish).

    \b
    Example:
      orchd pool pause default
    """
    _update(
        name,
        config_path,
        as_json,
        f"pool {name} paused: its runs wait until `orchd pool resume {name}`",
        paused=True,
    )


@pool_group.command("resume")
@click.argument("name")
@common_options
def pool_resume(name: str, config_path: Path | None, as_json: bool) -> None:
    """Let workers claim the pool's runs again.

    \b
    Example:
      orchd pool resume default
    """
    _update(name, config_path, as_json, f"pool {name} resumed", paused=False)


@pool_group.command("set-limit")
@click.argument("name")
@click.argument("limit", type=POOL_LIMIT)
@common_options
def pool_set_limit(name: str, limit: int | None, config_path: Path | None, as_json: bool) -> None:
    """Limit how many runs of the pool are active at once, across all workers (0: no limit).

    \b
    Example:
      orchd pool set-limit gpu 2
    """
    message = f"pool {name}: " + (f"at most {limit} runs active at once" if limit else "no limit")
    _update(name, config_path, as_json, message, concurrency_limit=limit)


@click.group("worker")
def worker_group() -> None:
    """Workers: the daemons that execute runs.

    \b
    Example:
      orchd worker ls
    """


def worker_json(w: Worker, now: datetime, timeout: float) -> dict[str, Any]:
    """A worker as `orchd worker ls --json` prints it."""
    return {
        "name": w.name,
        "host": w.host,
        "pid": w.pid,
        "pools": w.pools,
        "last_heartbeat": iso(w.last_heartbeat),
        "status": w.status_at(now, timeout),
        "concurrency": w.concurrency,
        "running": w.running,
        "version": w.version,
        "started_at": iso(w.started_at),
    }


@worker_group.command("ls")
@common_options
def worker_ls(config_path: Path | None, as_json: bool) -> None:
    """List workers: online, offline (silent) and stopped.

    \b
    Example:
      orchd worker ls --json | jq '.[] | select(.status == "online") | .name'
    """
    config = load(config_path)
    rows = open_store(config).workers()
    now = datetime.now(UTC)
    timeout = config.scheduler.worker_timeout
    if as_json:
        print_json([worker_json(w, now, timeout) for w in rows])
        return
    print_table(
        ["NAME", "HOST", "PID", "POOLS", "STATUS", "RUNNING", "HEARTBEAT", "VERSION"],
        [
            [
                w.name,
                w.host,
                w.pid,
                ",".join(w.pools),
                w.status_at(now, timeout),
                f"{w.running}/{w.concurrency}",
                relative(w.last_heartbeat, now),
                w.version,
            ]
            for w in rows
        ],
    )
