"""``orchd run ...``: look at runs and act on them.  The --json shapes are a documented contract (README)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from orchd.cli.common import common_options, config_option, friendly, load, open_store
from orchd.cli.deployments import apply_if_new, complete_deployment, require_deployment
from orchd.cli.oneline import fail, usage_error
from orchd.cli.output import (
    coloured,
    duration,
    echo_output,
    iso,
    plural,
    print_fields,
    print_json,
    print_table,
    relative,
)
from orchd.cli.params import ATTEMPT, RUN_ID, Duration, JsonObject, KeyValue, When
from orchd.config import Config
from orchd.db.store import Store
from orchd.durations import format_duration
from orchd.errors import NotFound
from orchd.models import LogLine, Run, RunChain, RunLink, StateChange
from orchd.states import FINISHED, RunState

#: How often a followed run is looked at (the CLI polls: it has no LISTEN of its own).
POLL = 0.3
run_id_argument = click.argument("run_id", metavar="ID", type=RUN_ID)
raw_option = click.option(
    "--raw", is_flag=True, help="Write the output's control characters as they are, even to a terminal."
)


def run_json(row: Run) -> dict[str, Any]:
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


def link_json(link: RunLink) -> dict[str, Any]:
    return {"id": link.id, "deployment": link.deployment, "state": link.state}


def run_detail_json(row: Run, history: list[StateChange], chain: RunChain) -> dict[str, Any]:
    """`orchd run show --json`: the run object plus parameters, error, result, its run chain
    links and its states.  ``upstream``: the run whose end triggered it (its deployment and
    state null when retention deleted it), or null; ``downstream``: the runs its end triggered."""
    upstream = None
    if chain.upstream_run_id is not None:
        upstream = (
            link_json(chain.upstream)
            if chain.upstream is not None
            else {"id": chain.upstream_run_id, "deployment": None, "state": None}
        )
    return {
        **run_json(row),
        "parameters": row.parameters,
        "error": row.error,
        "result": row.result,
        "upstream": upstream,
        "downstream": [link_json(link) for link in chain.downstream],
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


def chain_fields(chain: RunChain) -> list[tuple[str, str]]:
    """`run show`'s lines for a run in a run chain (none for the others)."""

    def text(link: RunLink) -> str:
        return f"run {link.id} of {link.deployment} ({link.state})"

    fields = []
    if chain.upstream_run_id is not None:
        gone = f"run {chain.upstream_run_id} (deleted by retention)"
        fields.append(("triggered by", text(chain.upstream) if chain.upstream else gone))
    if chain.downstream:
        fields.append(("triggered", ", ".join(text(link) for link in chain.downstream)))
    return fields


def get_run(store: Store, run_id: int) -> Run:
    row = store.get_run(run_id)
    if row is None:
        raise NotFound(f"run {run_id} not found (see `orchd run ls`)")
    return row


@click.group("run")
def run_group() -> None:
    """Look at runs and act on them.

    \b
    Example:
      orchd run ls --state FAILED --since 1d
      orchd run create nightly-backup --param target=/srv/b --wait
      orchd run logs 42 --follow
    """


@run_group.command("ls")
@click.option("--deployment", help="Only runs of this deployment.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in RunState], case_sensitive=False),
    help="Only runs in this state (repeatable).",
)
@click.option("--pool", help="Only runs of this pool.")
@click.option("--since", type=When(past=True), help="Only runs scheduled since TIME (e.g. 1h, 2026-05-01).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option(
    "--upcoming", "window", flag_value="upcoming", help="Instead: the runs planned ahead, soonest first."
)
@click.option("--all", "window", flag_value="all", help="Instead: every run, newest scheduled first.")
@common_options
def run_ls(
    config_path: Path | None,
    as_json: bool,
    deployment: str | None,
    states: tuple[str, ...],
    pool: str | None,
    since: datetime | None,
    limit: int,
    window: str | None,
) -> None:
    """List the runs that are due or done, the most recently due first: what ran, what runs,
    what waits.  The runs the scheduler planned ahead are left out: --upcoming lists them.

    \b
    Example:
      orchd run ls
      orchd run ls --deployment nightly-backup --state FAILED --state CRASHED
      orchd run ls --upcoming --limit 5
      orchd run ls --since 2h --json | jq '.[].id'
    """
    store = open_store(load(config_path))
    if deployment:
        store.deployment(deployment)
    if pool:
        store.pool(pool)
    now = datetime.now(UTC)
    rows = store.list_runs(
        deployment=deployment,
        states=[s.upper() for s in states],
        pool=pool,
        since=since,
        limit=limit,
        now=None if window == "all" else now,
        upcoming=window == "upcoming",
    )
    if as_json:
        print_json([run_json(r) for r in rows])
        return
    print_table(
        ["ID", "DEPLOYMENT", "STATE", "TRY", "DUE", "STARTED", "TOOK", "EXIT", "WORKER"],
        [
            [
                r.id,
                r.deployment,
                coloured(r.state),
                f"{r.attempt}/{r.max_attempts}",
                relative(r.due_at, now),
                relative(r.started_at, now) if r.started_at else None,
                duration(r.started_at, r.finished_at, now),
                r.exit_code,
                r.worker,
            ]
            for r in rows
        ],
    )


@run_group.command("show")
@run_id_argument
@click.option("--logs/--no-logs", default=True, help="Also print the run's captured output.")
@raw_option
@common_options
def run_show(run_id: int, config_path: Path | None, as_json: bool, logs: bool, raw: bool) -> None:
    """Show one run: its fields, its state history and its output.

    On a terminal, control characters in the output are shown escaped (\\x1b, \\r): --raw
    writes them as they are; piped, the output is always written as the run printed it.

    \b
    Example:
      orchd run show 42
      orchd run show 42 --json | jq .states
    """
    store = open_store(load(config_path))
    row = get_run(store, run_id)
    history = store.run_history(run_id)
    chain = store.run_chain(row)
    if as_json:
        print_json(run_detail_json(row, history, chain))
        return
    # a retried run is due again long after (or before: a cancelled planned one) its fire time
    due = [("due", relative(row.due_at))] if row.due_at != row.scheduled_for else []
    print_fields(
        [
            ("id", row.id),
            ("deployment", row.deployment),
            ("state", coloured(row.state)),
            ("pool", row.pool),
            ("attempt", f"{row.attempt}/{row.max_attempts}"),
            ("parameters", json.dumps(row.parameters)),
            ("scheduled for", relative(row.scheduled_for)),
            *due,
            ("started", relative(row.started_at)),
            ("finished", relative(row.finished_at)),
            ("took", duration(row.started_at, row.finished_at)),
            ("exit code", row.exit_code),
            ("worker", row.worker),
            ("error", row.error),
            *chain_fields(chain),
        ]
    )
    click.echo("\nhistory:")
    for h in history:
        reason = f"  ({h.reason})" if h.reason else ""
        click.echo(
            f"  {relative(h.at)}  {h.from_state or '-':>10} -> {h.to_state:<10} {h.actor or ''}{reason}"
        )
    if logs:
        lines = store.run_logs(run_id)
        attempts = sorted({line.attempt for line in lines})
        for attempt in attempts or [row.attempt]:
            own = [line for line in lines if line.attempt == attempt]
            of = f" of attempt {attempt}" if len(attempts) > 1 else ""
            click.echo(f"\noutput{of} ({plural(len(own), 'line')}):")
            for line in own:
                echo_output(f"  {line.stream}: {line.line}", raw=raw)


@run_group.command("create")
@click.argument("deployment", required=False, shell_complete=complete_deployment)
@click.option(
    "--param", "params", multiple=True, type=KeyValue(), help="A parameter (repeatable); JSON values."
)
@click.option("--params-json", type=JsonObject(), help="Parameters as one JSON object (--param wins).")
@click.option(
    "--like",
    metavar="ID",
    type=RUN_ID,
    help="Start from run ID: its deployment and parameters (--params-json and --param change them).",
)
@click.option("--at", type=When(past=False), help="Due at TIME instead of now (e.g. 10m, 2026-05-01T02:00).")
@click.option(
    "--wait", is_flag=True, help="Follow the run, print its output, exit 0 if it COMPLETED, else 1."
)
@click.option(
    "--timeout",
    type=Duration(),
    help="With --wait: stop waiting after DURATION (exit 1; the run goes on).",
)
@common_options
def run_create(
    deployment: str | None,
    params: tuple[tuple[str, Any], ...],
    params_json: dict[str, Any] | None,
    like: int | None,
    at: datetime | None,
    wait: bool,
    timeout: float | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Create a run of DEPLOYMENT by hand, due now or --at a time.

    Its parameters are the deployment's, updated with --params-json, then with each --param
    (a value that is valid JSON is read as JSON: days=7 is a number, name=x is text).  With
    --like ID the run is a new one of run ID's deployment, with run ID's parameters to start
    from: a re-run with other parameters (`orchd run retry` re-runs ID itself, as it was).

    With --wait, a run that no worker can take (none online for its pool, or the pool paused) is
    said so once; the wait goes on until --timeout.

    \b
    Example:
      orchd run create nightly-backup
      orchd run create refresh-report --param days=30 --at 22:00 --json
      orchd run create nightly-backup --wait --timeout 1h && echo done
      orchd run create --like 42 --param days=2 --wait
    """
    if timeout is not None and not wait:
        usage_error("--timeout goes with --wait")
    if deployment is None and like is None:
        usage_error("which deployment? give DEPLOYMENT, or --like ID")
    config = load(config_path)
    store = open_store(config)
    base: dict[str, Any] = {}
    if like is not None:
        model = get_run(store, like)
        if deployment is not None and deployment != model.deployment:
            usage_error(f"run {like} is of deployment {model.deployment}, not {deployment}")
        deployment, base = model.deployment, dict(model.parameters)
    assert deployment is not None
    if apply_if_new(store, config, deployment):
        click.echo(
            f"deployment {deployment} is new in the config: applied it to the database "
            "(as `orchd deployment apply` would)",
            err=True,
        )
    require_deployment(store, config, deployment)
    now = datetime.now(UTC)
    parameters = {**base, **(params_json or {}), **dict(params)}
    run_id = store.create_run(deployment, now, at=at, parameters=parameters)
    if not wait:
        row = get_run(store, run_id)
        if as_json:
            print_json(run_json(row))
        else:
            click.echo(f"run {run_id} of {deployment} created, due {relative(at) if at else 'now'}")
        return
    if not as_json:
        click.echo(f"run {run_id} of {deployment} created; following it (Ctrl-C stops following)", err=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    final = follow(store, run_id, None if as_json else log_printer(), deadline, WorkerWatch(store, config))
    if as_json:
        print_json(run_json(final))
    elif final.state not in FINISHED:
        fail(
            f"run {run_id} is still {final.state} after {format_duration(timeout or 0)}: stopped waiting "
            f"(the run is not stopped: `orchd run cancel {run_id}` does that)"
        )
    else:
        report_outcome(final)
    raise SystemExit(0 if final.state == RunState.COMPLETED else 1)


@run_group.command("cancel")
@run_id_argument
@common_options
def run_cancel(run_id: int, config_path: Path | None, as_json: bool) -> None:
    """Cancel a run: a waiting one at once, a running one is killed by its worker within seconds.

    \b
    Example:
      orchd run cancel 42
    """
    store = open_store(load(config_path))
    state = store.cancel_run(run_id, datetime.now(UTC))
    if as_json:
        print_json(run_json(get_run(store, run_id)))
    elif state == RunState.CANCELLING:
        click.echo(f"run {run_id}: CANCELLING (its worker stops it within seconds)")
    else:
        click.echo(f"run {run_id}: CANCELLED")


@run_group.command("retry")
@run_id_argument
@common_options
def run_retry(run_id: int, config_path: Path | None, as_json: bool) -> None:
    """Run a finished run again, as its next attempt, due now.

    Its output so far is kept per attempt (`orchd run logs ID --attempt N`).  A run that never
    started (cancelled or missed while it waited) is re-queued as the same attempt.  To run it
    with other parameters, create a new run like it: `orchd run create --like ID --param ...`.

    \b
    Example:
      orchd run retry 42
    """
    store = open_store(load(config_path))
    attempt = store.retry_run(run_id, datetime.now(UTC))
    if as_json:
        print_json(run_json(get_run(store, run_id)))
    else:
        click.echo(f"run {run_id}: SCHEDULED again as attempt {attempt}, due now")


@run_group.command("logs")
@run_id_argument
@click.option("--follow", "-f", "follow_", is_flag=True, help="Keep printing output until the run finishes.")
@click.option("--attempt", type=ATTEMPT, help="Only the output of attempt N (see `run show`).")
@raw_option
@config_option
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line: run_id, attempt, at, stream, line."
)
@friendly
def run_logs(
    run_id: int, follow_: bool, attempt: int | None, raw: bool, config_path: Path | None, as_json: bool
) -> None:
    """Print a run's captured output, stderr lines on stderr; a retried run's attempts one after
    the other, each new one after a `--- attempt N ---` line on stderr.

    On a terminal, control characters are shown escaped (\\x1b, \\r) so a run cannot drive it;
    --raw writes them as they are (as a pipe or file always gets them).

    \b
    Example:
      orchd run logs 42
      orchd run logs 42 --follow
      orchd run logs 42 --attempt 2
    """
    store = open_store(load(config_path))
    row = get_run(store, run_id)
    if attempt is not None and attempt > row.attempt:
        raise NotFound(f"run {run_id} has had {plural(row.attempt, 'attempt')}, not {attempt}")
    printer = _json_line if as_json else log_printer(raw)
    if attempt is not None:
        printer = _only(attempt, printer)
    if follow_:
        follow(store, run_id, printer)
    else:
        print_logs(store, run_id, 0, printer)


def _json_line(line: LogLine) -> None:
    fields = {"run_id": line.run_id, "attempt": line.attempt, "at": iso(line.at), "stream": line.stream}
    click.echo(json.dumps({**fields, "line": line.line}))


def _only(attempt: int, printer: Callable[[LogLine], None]) -> Callable[[LogLine], None]:
    def only(line: LogLine) -> None:
        if line.attempt == attempt:
            printer(line)

    return only


def log_printer(raw: bool = False) -> Callable[[LogLine], None]:
    """Prints output lines as the run wrote them, with a marker where a new attempt begins."""
    attempt: int | None = None

    def printer(line: LogLine) -> None:
        nonlocal attempt
        if attempt is not None and line.attempt != attempt:
            click.echo(f"--- attempt {line.attempt} ---", err=True)
        attempt = line.attempt
        echo_output(line.line, err=line.stream == "stderr", raw=raw)

    return printer


def print_logs(store: Store, run_id: int, after: int, printer: Callable[[LogLine], None]) -> int:
    """Print the output of ``run_id`` past line id ``after``; returns the last id printed."""
    while True:
        lines = store.run_logs(run_id, after_id=after)
        for line in lines:
            printer(line)
            after = line.id
        if len(lines) < 10_000:
            return after


class WorkerWatch:
    """While a followed run waits to be claimed, says once why nothing takes it: no worker online
    for its pool, or the pool paused (a silent wait looks like a hang)."""

    EVERY = 5.0

    def __init__(self, store: Store, config: Config) -> None:
        self.store, self.timeout = store, config.scheduler.worker_timeout
        self.next_look = 0.0
        self.said: str | None = None

    def __call__(self, row: Run) -> None:
        now = time.monotonic()
        if row.state != RunState.SCHEDULED or row.due_at > datetime.now(UTC) or now < self.next_look:
            return
        self.next_look = now + self.EVERY
        pool = next(
            (p for p in self.store.pools(datetime.now(UTC), self.timeout) if p.name == row.pool), None
        )
        if pool is None:
            return
        why = None
        if pool.paused:
            why = f"pool {pool.name} is paused: its runs wait until `orchd pool resume {pool.name}`"
        elif not pool.workers:
            why = f"no worker is online for pool {pool.name}: start one (orchd-worker --pool {pool.name})"
        if why is not None and why != self.said:
            click.echo(f"{why}; still waiting (Ctrl-C stops following)", err=True)
        self.said = why


def follow(
    store: Store,
    run_id: int,
    printer: Callable[[LogLine], None] | None,
    deadline: float | None = None,
    watch: Callable[[Run], None] | None = None,
) -> Run:
    """Print the run's output as it comes until the run is finished, or ``deadline``
    (time.monotonic()) passes; return its last row.  ``watch`` sees the row at each look.

    The state is read before the output, and a worker stores a run's output before its outcome,
    so once a finished state is seen the output read next is complete.  A FAILED run seen here is
    final: a retry moves it back to SCHEDULED in the same transaction that records the failure.
    """
    after = 0
    try:
        while True:
            row = get_run(store, run_id)
            if printer is not None:
                after = print_logs(store, run_id, after, printer)
            if row.state in FINISHED or (deadline is not None and time.monotonic() >= deadline):
                return row
            if watch is not None:
                watch(row)
            time.sleep(POLL)
    except KeyboardInterrupt:
        click.echo(
            f"\nstopped following; run {run_id} goes on (`orchd run cancel {run_id}` stops it)", err=True
        )
        raise SystemExit(130) from None


def report_outcome(row: Run) -> None:
    took = duration(row.started_at, row.finished_at)
    detail = f": {row.error}" if row.error and row.state != RunState.COMPLETED else ""
    click.echo(
        f"run {row.id} {coloured(row.state)}{detail}" + (f" after {took}" if took else ""),
        err=True,
    )
