"""``orchd run ...``: look at runs.  The --json shapes are a documented contract (README)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from sqlalchemy import Row

from orchd.cli.common import (
    config_option,
    fail,
    friendly,
    iso,
    json_option,
    load,
    open_store,
    print_json,
    print_table,
    relative,
)
from orchd.states import RunState


def run_json(row: Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "deployment": row.deployment,
        "schedule_id": row.schedule_id,
        "pool": row.pool,
        "state": row.state,
        "attempt": row.attempt,
        "max_attempts": row.max_attempts,
        "scheduled_for": iso(row.scheduled_for),
        "due_at": iso(row.due_at),
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "exit_code": row.exit_code,
        "worker": row.worker,
    }


@click.group("run")
def run_group() -> None:
    """Look at runs.

    \b
    Example:
      orchd run ls --state FAILED --limit 20
      orchd run show 42 --json
    """


@run_group.command("ls")
@config_option
@json_option
@click.option("--deployment", help="Only runs of this deployment.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in RunState], case_sensitive=False),
    help="Only runs in this state (repeatable).",
)
@click.option("--pool", help="Only runs of this pool.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@friendly
def run_ls(
    config_path: Path | None,
    as_json: bool,
    deployment: str | None,
    states: tuple[str, ...],
    pool: str | None,
    limit: int,
) -> None:
    """List runs, newest scheduled first."""
    store = open_store(load(config_path))
    rows = store.list_runs(deployment=deployment, states=[s.upper() for s in states], pool=pool, limit=limit)
    if as_json:
        print_json([run_json(r) for r in rows])
        return
    print_table(
        ["ID", "DEPLOYMENT", "STATE", "TRY", "SCHEDULED", "STARTED", "EXIT", "WORKER"],
        [
            [
                r.id,
                r.deployment,
                r.state,
                f"{r.attempt}/{r.max_attempts}",
                relative(r.scheduled_for),
                relative(r.started_at) if r.started_at else None,
                r.exit_code,
                r.worker,
            ]
            for r in rows
        ],
    )


@run_group.command("show")
@click.argument("run_id", type=int)
@config_option
@json_option
@click.option("--logs/--no-logs", default=True, help="Also print the run's captured output.")
@friendly
def run_show(run_id: int, config_path: Path | None, as_json: bool, logs: bool) -> None:
    """Show one run: its fields, its state history and its output."""
    store = open_store(load(config_path))
    row = store.get_run(run_id)
    if row is None:
        fail(f"run {run_id} not found")
        return
    history = store.run_history(run_id)
    if as_json:
        print_json(
            {
                **run_json(row),
                "parameters": row.parameters,
                "error": row.error,
                "result": row.result,
                "states": [
                    {
                        "from": h.from_state,
                        "to": h.to_state,
                        "at": iso(h.at),
                        "attempt": h.attempt,
                        "actor": h.actor,
                        "reason": h.reason,
                    }
                    for h in history
                ],
            }
        )
        return
    for label, value in [
        ("id", row.id),
        ("deployment", row.deployment),
        ("state", row.state),
        ("pool", row.pool),
        ("attempt", f"{row.attempt}/{row.max_attempts}"),
        ("scheduled for", relative(row.scheduled_for)),
        ("started", relative(row.started_at)),
        ("finished", relative(row.finished_at)),
        ("exit code", row.exit_code),
        ("worker", row.worker),
        ("error", row.error),
    ]:
        click.echo(f"{label + ':':<15}{'-' if value is None else value}")
    click.echo("\nhistory:")
    for h in history:
        reason = f"  ({h.reason})" if h.reason else ""
        click.echo(
            f"  {relative(h.at)}  {h.from_state or '-':>10} -> {h.to_state:<10} {h.actor or ''}{reason}"
        )
    if logs:
        lines = store.run_logs(run_id)
        click.echo(f"\noutput ({len(lines)} lines):")
        for line in lines:
            click.echo(f"  {line.stream}: {line.line}")
