"""``orchd deployment ...``: what is deployed, applying the config now, pausing and resuming."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from orchd.cli.common import (
    common_options,
    load,
    open_store,
)
from orchd.cli.output import coloured, duration, iso, plural, print_fields, print_json, print_table, relative
from orchd.config import Config, default_config_path, load_config
from orchd.db.store import Store
from orchd.errors import NotFound, OrchdError, did_you_mean
from orchd.models import Deployment, DeploymentReport, Run, Schedule, TriggerEdge


def complete_deployment(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of deployment names, from the config (the database may be far away)."""
    try:
        config = load_config(ctx.params.get("config_path") or default_config_path(os.environ))
    except OrchdError:
        return []
    return [d.name for d in config.deployments if d.name.startswith(incomplete)]


deployment_argument = click.argument("deployment", shell_complete=complete_deployment)


def apply_if_new(store: Store, config: Config, name: str) -> bool:
    """Apply deployment ``name`` (only it) when the config has it and the database does not, or
    only archived; True when it did.  The first thing a person does after adding a deployment is
    run it, before any scheduler re-read the config."""
    if config.deployment(name) is None:
        return False
    try:
        if store.deployment(name).archived_at is None:
            return False
    except NotFound:
        pass
    store.sync(config, datetime.now(UTC), only=[name])
    return True


def require_deployment(store: Store, config: Config, name: str) -> Deployment:
    """The deployment, or a one-line error that says what to do about it."""
    try:
        row = store.deployment(name)
    except NotFound:
        if config.deployment(name) is not None:
            raise NotFound(
                f"deployment {name!r} is in the config but not in the database yet: "
                "run `orchd deployment apply` (or start orchd-scheduler)"
            ) from None
        raise
    if row.archived_at is not None:
        raise OrchdError(f"deployment {name!r} is archived: it was removed from the config")
    return row


def next_run(store: Store, d: DeploymentReport, now: datetime) -> datetime | None:
    """When the deployment runs next: its earliest planned run, or the next fire time of its
    schedules (the scheduler plans runs only a horizon ahead: an hourly schedule often has none)."""
    times = [d.next_run_at] if d.next_run_at else []
    if d.deployment.status == "active":
        times += [t for s in store.active_schedules(d.deployment.id) if (t := s.spec.next_at_or_after(now))]
    return min(times, default=None)


def deployment_json(d: DeploymentReport, next_run_at: datetime | None) -> dict[str, Any]:
    """A deployment as `orchd deployment ls --json` prints it (``next_run_at``: see next_run)."""
    return {
        "name": d.deployment.name,
        "pool": d.deployment.pool,
        "status": d.deployment.status,
        "priority": d.deployment.priority,
        "schedules": d.schedules,
        "next_run_at": iso(next_run_at),
        "last_run": d.last_run
        and {"id": d.last_run.id, "state": d.last_run.state, "finished_at": iso(d.last_run.finished_at)},
    }


def chain_lines(name: str, edges: list[TriggerEdge]) -> list[tuple[str, str]]:
    """`deployment show`'s lines of a deployment's neighbours in run chains, each with the states
    that link them; none for a deployment in no chain."""
    after = [f"{e.upstream} ({', '.join(e.states)})" for e in edges if e.downstream == name]
    starts = [f"{e.downstream} ({', '.join(e.states)})" for e in edges if e.upstream == name]
    return [
        (label, ", ".join(names)) for label, names in (("runs after", after), ("starts", starts)) if names
    ]


def deployment_detail_json(
    row: Deployment,
    schedules: list[Schedule],
    recent: list[Run],
    upcoming: list[Run],
    fires: dict[int, datetime | None],
    edges: list[TriggerEdge],
) -> dict[str, Any]:
    """A deployment as `orchd deployment show --json` prints it: ``recent`` runs (due or done),
    ``upcoming`` ones (planned), ``fires`` the next fire time of each active schedule, its run
    chains (``triggers``: what it runs after; ``triggered``: what its runs start)."""
    return {
        "triggers": [{"after": e.upstream, "on": list(e.states)} for e in edges if e.downstream == row.name],
        "triggered": [
            {"deployment": e.downstream, "on": list(e.states)} for e in edges if e.upstream == row.name
        ],
        "name": row.name,
        "pool": row.pool,
        "status": row.status,
        "priority": row.priority,
        "archived_at": iso(row.archived_at),
        "updated_at": iso(row.updated_at),
        "spec": row.spec.to_json(),
        "schedules": [
            {
                "id": s.id,
                "key": s.spec.key,
                "kind": s.spec.kind,
                "expr": s.spec.expr,
                "timezone": s.spec.timezone,
                "active": s.spec.active,
                "next_fire_at": iso(s.next_fire_at),
                "next_fire_time": iso(fires.get(s.id)),
            }
            for s in schedules
        ],
        "recent_runs": [_run_summary(r) for r in recent],
        "upcoming_runs": [_run_summary(r) for r in upcoming],
    }


def _run_summary(r: Run) -> dict[str, Any]:
    return {"id": r.id, "state": r.state, "scheduled_for": iso(r.scheduled_for), "due_at": iso(r.due_at)}


def deployment_runs(
    store: Store, row: Deployment, now: datetime
) -> tuple[list[Run], list[Run], dict[int, datetime | None]]:
    """What `deployment show` shows besides the settings: the last 5 runs due or done, the next 3
    planned, and the next fire time of each active schedule."""
    recent = store.list_runs(deployment=row.name, limit=5, now=now)
    upcoming = store.list_runs(deployment=row.name, limit=3, now=now, upcoming=True)
    fires = {s.id: s.spec.next_at_or_after(now) for s in store.active_schedules(row.id)}
    return recent, upcoming, fires


@click.group("deployment")
def deployment_group() -> None:
    """What is deployed: list, inspect, apply the config now, pause and resume.

    \b
    Example:
      orchd deployment ls
      orchd deployment pause nightly-backup
    """


@deployment_group.command("ls")
@click.option("--all", "include_archived", is_flag=True, help="Also deployments removed from the config.")
@common_options
def deployment_ls(include_archived: bool, config_path: Path | None, as_json: bool) -> None:
    """List deployments with their next and last run.

    \b
    Example:
      orchd deployment ls --all
    """
    store = open_store(load(config_path))
    now = datetime.now(UTC)
    found = [(d, next_run(store, d, now)) for d in store.deployments(include_archived)]
    if as_json:
        print_json([deployment_json(d, at) for d, at in found])
        return
    print_table(
        ["NAME", "POOL", "STATUS", "SCHEDULES", "NEXT RUN", "LAST RUN"],
        [
            [
                d.deployment.name,
                d.deployment.pool,
                d.deployment.status,
                d.schedules,
                relative(at, now) if at else None,
                d.last_run and f"{coloured(d.last_run.state)} {relative(d.last_run.finished_at, now)}",
            ]
            for d, at in found
        ],
    )


@deployment_group.command("show")
@deployment_argument
@common_options
def deployment_show(deployment: str, config_path: Path | None, as_json: bool) -> None:
    """Show a deployment as the database has it: settings, schedules with their next fire time,
    its last runs (due or done) and its next ones.

    \b
    Example:
      orchd deployment show nightly-backup --json
    """
    store = open_store(load(config_path))
    row = store.deployment(deployment)
    schedules = store.schedules_of(row.id)
    now = datetime.now(UTC)
    recent, upcoming, fires = deployment_runs(store, row, now)
    edges = store.triggers_of(row.id)
    if as_json:
        print_json(deployment_detail_json(row, schedules, recent, upcoming, fires, edges))
        return
    spec = row.spec
    print_fields(
        [
            ("name", row.name),
            ("description", spec.description or None),
            ("status", row.status),
            ("pool", row.pool),
            ("priority", row.priority),
            ("runs", " ".join(spec.command) or f"entrypoint {spec.entrypoint}"),
            ("timeout", spec.timeout),
            ("retries", spec.retries),
            ("catch-up", spec.catchup),
            ("overlap", f"{spec.overlap} (max_active_runs {spec.max_active_runs or 'unlimited'})"),
            *chain_lines(row.name, edges),
            ("updated", relative(row.updated_at)),
        ]
    )
    click.echo("\nschedules:")
    print_table(
        ["ID", "KIND", "EXPRESSION", "TIMEZONE", "ACTIVE", "NEXT FIRE TIME"],
        [
            [
                s.id,
                s.spec.kind,
                s.spec.expr,
                s.spec.timezone,
                "yes" if s.spec.active else "no",
                (relative(fires[s.id], now) if fires[s.id] else "never") if s.id in fires else None,
            ]
            for s in schedules
        ],
    )
    click.echo("\nlast runs:")
    print_table(
        ["ID", "STATE", "TRY", "DUE", "TOOK", "EXIT", "ERROR"],
        [
            [
                r.id,
                coloured(r.state),
                f"{r.attempt}/{r.max_attempts}",
                relative(r.due_at, now),
                duration(r.started_at, r.finished_at, now),
                r.exit_code,
                r.error,
            ]
            for r in recent
        ],
    )
    click.echo("\nnext runs:")
    print_table(["ID", "DUE"], [[r.id, relative(r.due_at, now)] for r in upcoming])


@deployment_group.command("apply")
@common_options
def deployment_apply(config_path: Path | None, as_json: bool) -> None:
    """Write the config's deployments, schedules and pools into the database now.

    The scheduler does the same when it starts and on SIGHUP; applying an unchanged config
    changes nothing.  Deployments no longer in the config are archived, never deleted.

    \b
    Example:
      orchd config validate && orchd deployment apply
    """
    config = load(config_path)
    store = open_store(config)
    report = store.sync(config, datetime.now(UTC))
    result = {"path": str(config.path) if config.path else None, **dataclasses.asdict(report)}
    if as_json:
        print_json(result)
        return
    click.echo(
        f"{config.path or 'defaults'}: {plural(len(config.deployments), 'deployment')} applied: "
        f"{report.created} created, {report.updated} updated, {report.archived} archived; "
        f"schedules {report.schedules_added} added, {report.schedules_removed} removed"
    )


def _set_paused(deployment: str, paused: bool, config_path: Path | None, as_json: bool) -> None:
    store = open_store(load(config_path))
    changed, dropped = store.set_deployment_paused(deployment, paused, datetime.now(UTC))
    word = "paused" if paused else "resumed"
    if as_json:
        print_json({"name": deployment, "paused": paused, "changed": changed, "runs_dropped": dropped})
    elif not changed:
        click.echo(f"deployment {deployment} was already {word}")
    elif paused:
        click.echo(
            f"deployment {deployment} paused: nothing new is scheduled; "
            f"{plural(dropped, 'planned run')} dropped "
            "(runs already due or running are left alone)"
        )
    else:
        click.echo(f"deployment {deployment} resumed (missed fire times follow its catch-up policy)")


@deployment_group.command("pause")
@deployment_argument
@common_options
def deployment_pause(deployment: str, config_path: Path | None, as_json: bool) -> None:
    """Stop scheduling a deployment (its runs planned ahead are dropped).

    \b
    Example:
      orchd deployment pause nightly-backup
    """
    _set_paused(deployment, True, config_path, as_json)


@deployment_group.command("resume")
@deployment_argument
@common_options
def deployment_resume(deployment: str, config_path: Path | None, as_json: bool) -> None:
    """Schedule a paused deployment again; missed fire times follow its catch-up policy.

    \b
    Example:
      orchd deployment resume nightly-backup
    """
    _set_paused(deployment, False, config_path, as_json)


def config_deployment(config: Config, name: str) -> Any:
    """A deployment of the config file (no database), or a one-line error with a suggestion."""
    found = config.deployment(name)
    if found is None:
        names = [d.name for d in config.deployments]
        where = config.path or "the config (no file: defaults)"
        hint = did_you_mean(name, names) or (f" (it has: {', '.join(names)})" if names else "")
        raise NotFound(f"deployment {name!r} is not in {where}{hint}")
    return found
