"""``orchd schedule preview`` (when will it fire?) and ``orchd backfill`` (runs for a past range)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from orchd.cli.common import (
    common_options,
    load,
    open_store,
)
from orchd.cli.deployments import config_deployment, deployment_argument, require_deployment
from orchd.cli.oneline import usage_error, warn
from orchd.cli.output import age, iso, plural, print_json, print_table
from orchd.cli.params import When
from orchd.errors import OrchdError
from orchd.schedules import TICK, ScheduleSpec, never_fires

_FAR = timedelta(days=366 * 100)
#: Fire times inserted per transaction by a backfill (SQLite write transactions stay tiny).
BATCH = 500


@click.group("schedule")
def schedule_group() -> None:
    """Look at schedules before they fire.

    \b
    Example:
      orchd schedule preview nightly-backup -n 5
    """


@schedule_group.command("preview")
@deployment_argument
@click.option("-n", "count", type=click.IntRange(1, 10_000), default=10, show_default=True, help="How many.")
@click.option("--from", "start", type=When(past=False), help="Start at TIME instead of now.")
@common_options
def schedule_preview(
    deployment: str, count: int, start: datetime | None, config_path: Path | None, as_json: bool
) -> None:
    """The next fire times of DEPLOYMENT's active schedules, each in its own timezone.

    Read from the config file alone: the database is not touched, so a schedule can be checked
    before it is applied.

    \b
    Example:
      orchd schedule preview nightly-backup -n 20
      orchd schedule preview nightly-backup --from 2026-10-24 -n 5   # around a DST change
    """
    config = load(config_path)
    dep = config_deployment(config, deployment)
    active = [s for s in dep.schedules if s.active]
    begin = start or datetime.now(UTC)
    upcoming: list[tuple[datetime, ScheduleSpec]] = sorted(
        ((at, spec) for spec in active for at in spec.fire_times(begin, begin + _FAR, count)),
        key=lambda pair: pair[0],
    )[:count]
    if as_json:
        print_json(
            [
                {
                    "at": iso(at),
                    "local": at.astimezone(spec.zone).isoformat(),
                    "timezone": spec.timezone,
                    "schedule": spec.describe(),
                    "key": spec.key,
                }
                for at, spec in upcoming
            ]
        )
        return
    if not active:
        click.echo(f"deployment {deployment} has no active schedule", err=True)
        return
    for spec in active:
        if (why := never_fires(spec, begin)) is not None:
            warn(f"{deployment}: {spec.describe()} {why}")
    if not upcoming:
        return
    print_table(
        ["AT (SCHEDULE'S TIMEZONE)", "FROM NOW", "SCHEDULE"],
        [
            [at.astimezone(spec.zone).strftime("%a %Y-%m-%d %H:%M:%S %Z"), age(at), spec.describe()]
            for at, spec in upcoming
        ],
    )


@click.command("backfill")
@deployment_argument
@click.option("--from", "start", type=When(past=True), required=True, help="First fire time to cover.")
@click.option("--to", "end", type=When(past=True), required=True, help="Last fire time to cover (included).")
@click.option("--yes", is_flag=True, help="Go ahead even beyond scheduler.backfill_limit runs.")
@common_options
def backfill(
    deployment: str, start: datetime, end: datetime, yes: bool, config_path: Path | None, as_json: bool
) -> None:
    """Create the runs DEPLOYMENT's schedules would have fired between --from and --to.

    Idempotent: a fire time that already has a run (scheduled, or backfilled before) is skipped,
    through the same unique key as the scheduler's.  The runs are due now, oldest first.  More
    than scheduler.backfill_limit runs are refused unless --yes.

    \b
    Example:
      orchd backfill nightly-backup --from 2026-04-01 --to 2026-04-30T23:59
      orchd backfill hourly-sync --from 7d --to now --yes
    """
    now = datetime.now(UTC)
    if start > end:
        usage_error(f"--from ({iso(start)}) is after --to ({iso(end)})")
    if end > now + timedelta(seconds=1):
        usage_error(f"--to ({iso(end)}) is in the future: the scheduler creates upcoming runs")
    config = load(config_path)
    store = open_store(config)
    dep = require_deployment(store, config, deployment)
    schedules = store.active_schedules(dep.id)
    if not schedules:
        raise OrchdError(f"deployment {deployment!r} has no active schedule to backfill")
    limit = config.scheduler.backfill_limit
    wanted = sum(len(s.spec.fire_times(start, end, limit + 1)) for s in schedules)
    if wanted > limit and not yes:
        raise OrchdError(
            f"{deployment} fires more than {limit} times between {iso(start)} and {iso(end)} "
            "(scheduler.backfill_limit): narrow the range, or add --yes"
        )
    span = max((end - start).total_seconds(), 1.0)
    created = total = 0
    with click.progressbar(
        length=int(span * len(schedules)), label=f"backfilling {deployment}", file=sys.stderr
    ) as bar:
        for schedule in schedules:
            cursor = start
            while True:
                times = schedule.spec.fire_times(cursor, end, BATCH)
                created += store.backfill(dep, schedule, times, now)
                total += len(times)
                if len(times) < BATCH:
                    bar.update(int((end - cursor).total_seconds()))
                    break
                bar.update(int((times[-1] - cursor).total_seconds()))
                cursor = times[-1] + TICK
    result = {
        "deployment": deployment,
        "from": iso(start),
        "to": iso(end),
        "fire_times": total,
        "created": created,
        "existing": total - created,
    }
    if as_json:
        print_json(result)
    else:
        click.echo(
            f"{deployment}: {plural(created, 'run')} created for {plural(total, 'fire time')} "
            f"between {iso(start)} and {iso(end)}"
            f" ({total - created} had a run already)"
        )
