"""Chaos: real schedulers and workers on a real PostgreSQL, SIGKILLed at random, then audited.

    python -m tests.chaos.harness --seconds 300     (make chaos; make test runs 60 s of it)

orchd promises "nothing lost, nothing doubled" through crashes.  This harness tries to break that
promise the way production does: a mix of deployments (fast, slow, serial with overlap = skip,
failing with retries, timing out) runs while, every few seconds, a random daemon (sometimes the
leading scheduler) is SIGKILLed and restarted, and PostgreSQL is restarted once.  Then it stops
the chaos, lets the fleet drain, stops it with SIGTERM and checks the invariants of
tests/chaos/checks.py straight from the database and from a ledger that every run's child
appends to (a start and an end line with run id, attempt, pid, its worker's pid and a timestamp).

Leases are short (a few seconds) so crashes are detected within the budget; catch-up is "all"
and misfire_grace long, so every fire time in the window must have a run.  The summary is
printed and written as JSON (default tests/chaos/results/latest.json); the exit status is 1 when
any invariant was violated.  Everything the harness starts is stopped by PID, and its database
and temp dir are removed, however it ends.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import tomli_w
from sqlalchemy import Engine, func, select

from orchd.db import migrate
from orchd.db.engine import mask
from orchd.db.schema import (
    deployments,
    event_cursors,
    notification_attempts,
    notifications,
    run_states,
    runs,
    schedulers,
    schedules,
)
from orchd.db.store import Store
from orchd.errors import DatabaseError
from orchd.states import FINISHED, RunState
from orchd.worker import containers
from orchd.worker.containers import EngineUnavailable, database_label
from tests.chaos.checks import (
    Job,
    NotifyRule,
    Observed,
    Violation,
    check_all,
    notification_counts,
    read_ledger,
    unexplained_crashes,
)
from tests.chaos.fleet import KINDS, Daemon, Fleet
from tests.chaos.settle import wait_settled
from tests.containers import images
from tests.helpers import engine_for
from tests.pg import PgServer, postgres_server

S = RunState
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
LEASE = 3.0
#: The command of every deployment: the ledger lines around the work.  A SIGTERM (timeout, lost
#: lease, shutdown) still writes the end line; a SIGKILL (the child dies with its worker) does not.
JOB_SCRIPT = """\
ledger=$1 seconds=$2 status=$3
echo "start $ORCHD_RUN_ID $ORCHD_ATTEMPT $$ $PPID $(date +%s.%N)" >> "$ledger"
trap 'echo "end $ORCHD_RUN_ID $ORCHD_ATTEMPT $$ term $(date +%s.%N)" >> "$ledger"; exit 143' TERM
[ "$seconds" = 0 ] || sleep "$seconds"
echo "end $ORCHD_RUN_ID $ORCHD_ATTEMPT $$ $status $(date +%s.%N)" >> "$ledger"
exit "$status"
"""
JOBS = (
    Job("fast", "1s", 0, 0, retries=1, outcome=S.COMPLETED),
    Job("slow", "2s", 3, 0, retries=1, outcome=S.COMPLETED),
    Job("serial", "2s", 3, 0, retries=1, outcome=S.COMPLETED, overlap="skip"),
    Job("failing", "3s", 0.2, 3, retries=2, outcome=S.FAILED),
    Job("timeout", "4s", 30, 0, retries=1, outcome=S.TIMED_OUT, timeout="1s"),
    # a run chain: after each COMPLETED fast run, and after failing's final FAILED (not its retries)
    Job(
        "chained",
        "",
        0,
        0,
        retries=1,
        outcome=S.COMPLETED,
        triggers=(("fast", ("COMPLETED",)), ("failing", ("FAILED",))),
    ),
)
#: Told of every final outcome of these jobs by a command that appends the message's idempotency
#: key to a ledger (its timeout is short, so a message a killed leader left is sent again soon).
NOTIFY = NotifyRule(
    "chaos-outcomes",
    frozenset({"COMPLETED", "FAILED", "TIMED_OUT", "CRASHED"}),
    frozenset({"fast", "failing", "timeout"}),
)
#: Runs in a container (busybox image built locally) when podman works here.  It writes no ledger
#: lines (the ledger's pids are the host's); instead the harness samples the engine: never two
#: running containers of one run, and none left of this database after the drain.
BOXED = Job("boxed", "2s", 1, 0, retries=1, outcome=S.COMPLETED)


@dataclass(frozen=True)
class Settings:
    seconds: float = 300.0
    seed: int | None = None
    schedulers: int = 2
    workers: int = 3
    #: Seconds between two kills, and before a killed daemon is started again (uniform ranges).
    kill_every: tuple[float, float] = (2.0, 5.0)
    restart_after: tuple[float, float] = (0.5, 4.0)
    #: The drain waits as long as things keep getting done; this long without: stuck (a violation).
    drain_stall: float = 120.0
    results: Path | None = RESULTS
    keep: bool = False  # keep the temp dir (config, ledger, daemon logs) for a post-mortem


@dataclass
class Summary:
    seconds: float
    seed: int
    wall_seconds: float = 0.0
    runs: int = 0
    runs_by_state: dict[str, int] = field(default_factory=dict)
    runs_by_deployment: dict[str, dict[str, int]] = field(default_factory=dict)
    executions: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    leader_kills: int = 0
    restarts: int = 0
    pg_restarts: int = 0
    notifications: dict[str, int] = field(default_factory=dict)
    unexplained_crashes: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    work_dir: str | None = None

    def render(self) -> str:
        lines = [
            f"chaos: {self.seconds:g}s of chaos, seed {self.seed}, {self.wall_seconds:.0f}s wall time",
            f"runs: {self.runs} ({_counts(self.runs_by_state)}), executions in the ledger: {self.executions}",
            *(f"  {dep}: {_counts(states)}" for dep, states in sorted(self.runs_by_deployment.items())),
            f"kills: {_counts(self.kills)} (leader scheduler {self.leader_kills}), "
            f"restarts: {self.restarts}, PostgreSQL restarts: {self.pg_restarts}",
            f"notifications: {_counts(self.notifications)}",
        ]
        if self.unexplained_crashes:
            lines.append(
                f"crashes without a kill or outage (not violations): {len(self.unexplained_crashes)}"
            )
            lines += [f"  {note}" for note in self.unexplained_crashes[:20]]
        lines.append(f"violations: {len(self.violations)}")
        lines += [f"  [{v.check}] {v.detail}" for v in self.violations]
        if self.work_dir:
            lines.append(f"kept: {self.work_dir}")
        return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none"


def write_config(
    path: Path,
    url: str,
    ledger: Path,
    work: Path,
    tag: str,
    image: str | None = None,
    notified: Path | None = None,
) -> None:
    body: dict[str, Any] = {
        "database": {"url": url},
        "scheduler": {"loop_interval": "250ms", "horizon": "10s", "catchup": "all", "misfire_grace": "10m"},
        "worker": {
            "concurrency": 4,
            "heartbeat": "500ms",
            "lease_timeout": f"{LEASE:g}s",
            "poll_interval": "1s",
            "shutdown_grace": "20s",
            "kill_grace": "1s",
            "work_dir": str(work),
        },
        "deployments": [
            {
                "name": job.name,
                "command": [
                    "sh",
                    "-c",
                    JOB_SCRIPT,
                    "orchd-chaos-job",
                    str(ledger),
                    f"{job.seconds:g}",
                    str(job.status),
                ],
                "env": {"CHAOS_TAG": tag},
                "retries": job.retries,
                "retry_delay": "1s",
                "retry_backoff": 1.0,
                "schedules": [job.schedule] if job.every else [],
                **(
                    {"triggers": [{"after": a, "on": list(on)} for a, on in job.triggers]}
                    if job.triggers
                    else {}
                ),
                **({"timeout": job.timeout} if job.timeout else {}),
                **({"overlap": job.overlap} if job.overlap != "allow" else {}),
            }
            for job in JOBS
        ],
    }
    if notified is not None:
        body["notifications"] = [
            {
                "name": NOTIFY.name,
                "on": sorted(NOTIFY.on),
                "deployments": sorted(NOTIFY.deployments),
                "command": ["sh", "-c", f'echo "$ORCHD_IDEMPOTENCY_KEY" >> {notified}'],
                "timeout": "2s",
            }
        ]
    if image is not None:
        body["deployments"].append(
            {
                "name": BOXED.name,
                "image": image,
                "container": {"pull": "never", "network": "none"},
                "command": ["sleep", f"{BOXED.seconds:g}"],
                "retries": BOXED.retries,
                "retry_delay": "1s",
                "retry_backoff": 1.0,
                "schedules": [BOXED.schedule],
            }
        )
    path.write_text(tomli_w.dumps(body))


class Chaos:
    """One chaos run: the database, the fleet, the kills, the drain and the audit."""

    def __init__(
        self, settings: Settings, server: PgServer, url: str, work: Path, image: str | None = None
    ) -> None:
        self.settings = settings
        self.seed = settings.seed if settings.seed is not None else random.randrange(2**32)
        self.rng = random.Random(self.seed)
        self.server = server
        self.engine: Engine = engine_for(url)
        self.ledger = work / "ledger"
        self.ledger.touch()
        self.notified = work / "notified"
        self.notified.touch()
        (work / "logs").mkdir()
        (work / "runs").mkdir()  # a configured worker.work_dir must exist (a typo is refused)
        config = work / "orchd.toml"
        tag = uuid.uuid4().hex
        write_config(config, url, self.ledger, work / "runs", tag, image, self.notified)
        self.jobs = (*JOBS, BOXED) if image is not None else JOBS
        self.podman = containers.Engine.find("podman") if image is not None else None
        self.database = database_label(mask(self.engine.url))
        self.next_container_look = 0.0
        self.fleet = Fleet.of(config, work / "logs", tag, settings.schedulers, settings.workers)
        self.outages: list[tuple[float, float]] = []
        self.leader_kills = 0
        self.violations: list[Violation] = []
        self.t0 = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", flush=True)

    def run(self) -> Summary:
        started = datetime.now(UTC)
        # the outbox's cursor at the start of the history: every event of the run is to be told
        migrate.upgrade(self.engine)
        Store(self.engine, "chaos").match_events([], started)
        for daemon in self.fleet.daemons:
            self.fleet.start(daemon)
        if not self._wait(
            "a first completed run", lambda: int(not self._count(runs.c.state == S.COMPLETED.value)), 60
        ):
            raise RuntimeError(f"the fleet did not come up; newest daemon log:\n{self.fleet.last_log()}")
        self.say(
            f"fleet up: {self.settings.schedulers} schedulers, {self.settings.workers} workers; chaos begins"
        )
        self._chaos()
        ended = datetime.now(UTC)
        drained_at = self._drain(ended)
        self.fleet.watch_orphans(force=True)
        self.violations += self._containers_left()
        return self._audit((started, ended), drained_at)

    # ------------------------------------------------------------------ chaos

    def _chaos(self) -> None:
        settings, rng = self.settings, self.rng
        start = time.monotonic()
        end = start + settings.seconds
        pg_at = start + settings.seconds / 2 if self.server.data_dir is not None else None
        if pg_at is None:
            self.say("PostgreSQL is an external server (ORCHD_TEST_DATABASE_URL): it will not be restarted")
        next_kill = start + rng.uniform(*settings.kill_every)
        while (now := time.monotonic()) < end:
            self._tend()
            if pg_at is not None and now >= pg_at:
                pg_at = None
                self._restart_postgres()
            elif now >= next_kill:
                self._strike()
                next_kill = now + rng.uniform(*settings.kill_every)
            time.sleep(0.1)

    def _strike(self) -> None:
        """SIGKILL one daemon; the last one of its kind only now and then (a full outage)."""
        kind = self.rng.choices(KINDS, weights=(2, 3))[0]
        alive = self.fleet.alive(kind)
        if not alive or (len(alive) == 1 and self.rng.random() > 0.25):
            return
        leader = self._leader_pid() if kind == "scheduler" else None
        victim: Daemon = self.rng.choice(alive)
        if leader is not None and self.rng.random() < 0.5:
            victim = next((d for d in alive if d.pid == leader), victim)
        is_leader = victim.pid == leader
        self.leader_kills += int(is_leader)
        restart_in = self.rng.uniform(*self.settings.restart_after)
        kill = self.fleet.kill(victim, is_leader, restart_in)
        self.say(
            f"SIGKILL {victim.label} (pid {kill.pid}{', leader' if is_leader else ''}"
            f"{f', {len(kill.run_groups)} runs' if kill.run_groups else ''}); restart in {restart_in:.1f}s"
        )

    def _leader_pid(self) -> int | None:
        alive = [d.pid for d in self.fleet.alive("scheduler")]
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(schedulers.c.pid, schedulers.c.last_tick_at).where(
                        schedulers.c.pid.in_(alive), schedulers.c.role == "leader"
                    )
                ).all()
        except DatabaseError:  # the database is restarting: any victim will do
            return None
        return max(rows, key=lambda r: r.last_tick_at).pid if rows else None

    def _restart_postgres(self) -> None:
        """A clean fast shutdown: the test cluster runs without fsync, so an immediate stop could lose
        commits, and what looked like an orchd bug would be the harness's doing."""
        down_for = self.rng.uniform(1.0, 3.0)
        self.say(f"PostgreSQL: fast shutdown, back in {down_for:.1f}s")
        self.engine.dispose()
        stopped = time.time()
        self.server.stop()
        self._idle(down_for)
        self.server.start()
        self.outages.append((stopped, time.time()))
        self.say("PostgreSQL: up again")

    def _tend(self) -> None:
        before = len(self.fleet.unexpected_exits)
        self.fleet.tend()
        for kind, pid, status in self.fleet.unexpected_exits[before:]:
            self.violations.append(Violation("daemon exit", f"{kind} pid {pid} exited on its own: {status}"))
            self.say(f"{kind} pid {pid} exited on its own ({status}); restarting it")
        self.fleet.watch_orphans()
        self._watch_containers()

    def _watch_containers(self) -> None:
        """About once a second: no run has two running containers (two attempts at once)."""
        if self.podman is None or time.monotonic() < self.next_container_look:
            return
        self.next_container_look = time.monotonic() + 1.0
        with suppress(EngineUnavailable):
            running = self.podman.leftovers(self.database, running=True)
            for run_id, n in Counter(c.run_id for c in running).items():
                if n > 1:
                    attempts = sorted(c.attempt for c in running if c.run_id == run_id)
                    self.violations.append(
                        Violation(
                            "double execution", f"run {run_id}: containers of attempts {attempts} at once"
                        )
                    )

    def _containers_left(self) -> list[Violation]:
        if self.podman is None:
            return []
        left = self.podman.leftovers(self.database)
        if not left:
            return []
        self.podman.remove([c.id for c in left])
        runs_left = ", ".join(f"{c.run_id}/{c.attempt}" for c in left)
        return [Violation("container leftover", f"containers of runs/attempts {runs_left} after the drain")]

    def _idle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._tend()
            time.sleep(0.1)

    # ------------------------------------------------------------------ drain

    def _drain(self, chaos_end: datetime) -> datetime:
        """Every daemon up until the window's runs are finished; then the schedulers stop (no new
        runs), and once nothing is due or waiting to start the workers are stopped with SIGTERM
        (what still runs finishes within their shutdown grace).  Returns when nothing was due.

        A run PENDING for longer than a lease after its claim whose lease is still being extended
        will not move on its own (the worker that claimed it keeps it alive without running it):
        waiting for it would only time out, so the drain leaves it to the audit, which reports it."""
        self.fleet.start_all_stopped()
        self.say("chaos over: all daemons up, draining")
        stall = self.settings.drain_stall
        drained_at = datetime.now(UTC)

        def settled(waiting: Callable[[datetime], Any]) -> Callable[[], int]:
            def left() -> int:
                nonlocal drained_at
                now = datetime.now(UTC)
                held = (
                    (runs.c.state == S.PENDING.value)
                    & (runs.c.claimed_at < now - timedelta(seconds=2 * LEASE))
                    & (runs.c.lease_expires_at > now)
                )
                drained_at = now
                return self._count(waiting(now) & ~held)

            return left

        def window_open(now: datetime) -> Any:
            return (runs.c.scheduled_for <= chaos_end) & runs.c.state.not_in([s.value for s in FINISHED])

        def due_or_starting(now: datetime) -> Any:
            due = (runs.c.state == S.SCHEDULED.value) & (runs.c.due_at <= now)
            return due | (runs.c.state == S.PENDING.value)

        self._wait("the window's runs to finish", settled(window_open), stall)
        self._wait("the notifications to be sent", self._notifications_left, stall)
        self.fleet.stop_kind("scheduler", 30)
        self._wait("nothing due or starting", settled(due_or_starting), stall)
        self.fleet.stop_kind("worker", 60)
        for pid, (kind, status) in sorted(self.fleet.stop_status.items()):
            if status != 0:
                self.violations.append(
                    Violation("daemon exit", f"{kind} pid {pid} exited {status} on SIGTERM")
                )
        self.say("drained and stopped")
        return drained_at

    def _wait(self, what: str, left: Callable[[], int], stall: float) -> bool:
        """Poll how many things are ``left`` while tending the fleet, as long as that keeps falling
        (tests/chaos/settle.py); one that stands still for ``stall`` seconds is a violation (the
        fleet does not drain)."""

        def count() -> int | None:
            try:
                return left()
            except DatabaseError:  # the schema is not there yet, or the database is restarting
                return None

        settled = wait_settled(count, stall, tend=self._tend, interval=0.2)
        if not settled.done:
            detail = f"{settled.left} left, none done in the last {settled.still:.0f}s"
            self.violations.append(Violation("drain", f"stuck waiting for {what}: {detail}"))
            self.say(f"stuck waiting for {what}")
        return settled.done

    def _notify_position(self) -> int | None:
        with self.engine.connect() as conn:
            position: int | None = conn.execute(select(event_cursors.c.position)).scalar()
        return position

    def _notifications_left(self) -> int:
        """Events the outbox has yet to read plus messages it holds to send (0: settled)."""
        with self.engine.connect() as conn:
            last = conn.execute(select(func.coalesce(func.max(run_states.c.id), 0))).scalar_one()
            read = conn.execute(select(event_cursors.c.position)).scalar()
            waiting = conn.execute(
                select(func.count())
                .select_from(notifications)
                .where(notifications.c.state.in_(["pending", "sending"]))
            ).scalar_one()
        return int(max(0, last - (read if read is not None else -1)) + waiting)

    def _count(self, condition: Any) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(runs).where(condition)).scalar_one())

    # ------------------------------------------------------------------ audit

    def _audit(self, window: tuple[datetime, datetime], drained_at: datetime) -> Summary:
        run_rows, history, schedule_rows = database_rows(self.engine)
        executions, problems = read_ledger(self.ledger)
        outbox, attempts = notification_rows(self.engine)
        observed = Observed(
            jobs=self.jobs,
            runs=run_rows,
            history=history,
            schedules=schedule_rows,
            executions=executions,
            worker_kills={k.pid: k.at for k in self.fleet.kills if k.kind == "worker"},
            outages=self.outages,
            window=window,
            drained_at=drained_at,
            lease=LEASE,
            orphans=self.fleet.orphans,
            notify_rule=NOTIFY,
            notifications=outbox,
            notify_attempts=attempts,
            notified=self.notified.read_text().split(),
            notify_upto=self._notify_position(),
        )
        by_deployment: dict[str, Counter[str]] = defaultdict(Counter)
        for r in run_rows:
            by_deployment[r.deployment][r.state] += 1
        return Summary(
            seconds=self.settings.seconds,
            seed=self.seed,
            runs=len(run_rows),
            runs_by_state=dict(Counter(r.state for r in run_rows)),
            runs_by_deployment={dep: dict(c) for dep, c in by_deployment.items()},
            executions=len(executions),
            kills=dict(Counter(k.kind for k in self.fleet.kills)),
            leader_kills=self.leader_kills,
            restarts=self.fleet.restarts,
            pg_restarts=len(self.outages),
            notifications=notification_counts(observed),
            unexplained_crashes=unexplained_crashes(observed),
            violations=[*self.violations, *problems, *check_all(observed)],
        )

    def close(self) -> None:
        self.fleet.cleanup()
        self.engine.dispose()


def database_rows(engine: Engine) -> tuple[list[Any], dict[int, list[Any]], list[Any]]:
    """What the checks read from the database: the runs (with their deployment's name), each
    run's state history in order, and the schedules (deployment, key, created_at)."""
    with engine.connect() as conn:
        run_rows = conn.execute(
            select(runs, deployments.c.name.label("deployment")).join(
                deployments, deployments.c.id == runs.c.deployment_id
            )
        ).all()
        history: dict[int, list[Any]] = defaultdict(list)
        for h in conn.execute(select(run_states).order_by(run_states.c.run_id, run_states.c.id)):
            history[h.run_id].append(h)
        schedule_rows = conn.execute(
            select(deployments.c.name.label("deployment"), schedules.c.key, schedules.c.created_at).join(
                deployments, deployments.c.id == schedules.c.deployment_id
            )
        ).all()
    return list(run_rows), history, list(schedule_rows)


def notification_rows(engine: Engine) -> tuple[list[Any], dict[int, list[Any]]]:
    """The outbox and each message's attempts, in order."""
    with engine.connect() as conn:
        outbox = conn.execute(select(notifications).order_by(notifications.c.id)).all()
        attempts: dict[int, list[Any]] = defaultdict(list)
        for a in conn.execute(select(notification_attempts).order_by(notification_attempts.c.id)):
            attempts[a.notification_id].append(a)
    return list(outbox), attempts


@contextmanager
def _database(server: PgServer) -> Iterator[str]:
    name = server.create_database()
    try:
        yield server.url_for(name)
    finally:
        with suppress(Exception):  # the server may be the thing that failed
            server.drop_database(name)


@contextmanager
def _image() -> Iterator[str | None]:
    """The busybox test image, if podman works here (else the container job is left out)."""
    engine = images.podman_or_none()
    if engine is None:
        yield None
        return
    with images.built(engine, images.busybox_image, "chaos-busybox") as tag:
        yield tag


def run(settings: Settings) -> Summary:
    """One chaos run; its summary (also written to ``settings.results``)."""
    clock = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="orchd-chaos-"))
    try:
        with postgres_server() as server, _database(server) as url, _image() as image:
            chaos = Chaos(settings, server, url, work, image)
            try:
                summary = chaos.run()
            finally:
                chaos.close()
    finally:
        if not settings.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary.wall_seconds = round(time.monotonic() - clock, 1)
    summary.work_dir = str(work) if settings.keep else None
    if settings.results is not None:
        settings.results.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "host": socket.gethostname(),
            "finished_at": datetime.now(UTC).isoformat(),
            **asdict(summary),
        }
        settings.results.write_text(json.dumps(report, indent=2) + "\n")
    return summary


def _stop_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every cleanup, as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.harness", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="chaos budget (default 300)")
    parser.add_argument("--seed", type=int, help="random seed, to replay a run's choices")
    parser.add_argument("--schedulers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"JSON summary (default {RESULTS})")
    parser.add_argument("--keep", action="store_true", help="keep config, ledger and daemon logs")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    summary = run(
        Settings(
            seconds=args.seconds,
            seed=args.seed,
            schedulers=args.schedulers,
            workers=args.workers,
            results=args.results,
            keep=args.keep,
        )
    )
    print(summary.render())
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
