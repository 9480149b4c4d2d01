"""The worker daemon: claims due runs of its pools and executes them as child processes.

The main thread owns every database call (one connection per process on SQLite) and its loop
reads like the list of its duties; pump threads only read child output and the LISTEN (or wake
socket) thread only posts wake-ups.  It sleeps until the earliest known due time of its pools, a
child event, a wake-up (NOTIFY on PostgreSQL, a datagram from the writer on SQLite, see
orchd/db/wake.py) or the next heartbeat; the poll interval (and on SQLite a look at whether the
file changed, every half second) is only the safety net.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from orchd.backoff import Backoff
from orchd.config import Config
from orchd.db.engine import connect_args, mask, session_url
from orchd.db.listen import Listener
from orchd.db.store import Store
from orchd.db.wake import WakeEvent, WakeSocket, wake_dir
from orchd.durations import format_duration
from orchd.errors import ConfigError, DatabaseError, DatabaseUnavailable
from orchd.logging import get_logger
from orchd.models import ClaimedRun
from orchd.notify import Notifier
from orchd.observer import Observer
from orchd.states import RunState
from orchd.worker.command import Invocation, check_working_dir, invocation, read_result, start_error
from orchd.worker.containers import (
    ContainerHost,
    ContainerRun,
    Engine,
    EngineUnavailable,
    client_environment,
    database_label,
)
from orchd.worker.fence import Fence
from orchd.worker.process import ExitEvent, Guardian, OutputEvent, RunProcess, describe_exit

log = get_logger("orchd.worker")
S = RunState
_LOG_FLUSH = 0.03  # how soon output reaches the database once it arrives
#: With runs active, how often their deadlines (timeout, kill, fence) are looked at.
_MAX_WAIT = 0.5
#: Idle, how often an SQLite worker looks whether the file changed without a wake-up (a writer
#: that could not send one); a stop request and wake-ups are events, waited for without polling.
_IDLE_WAIT = 2.0
#: At most this long before a known due time a claim starts (see Ahead).
_AHEAD_CAP = 0.02
_CANCEL_CHECK = 1.0  # how often a worker with running runs looks for cancellations
_CANCEL_GRACE = 1.0  # SIGTERM, then SIGKILL this much later, so a cancel lands within two seconds
_LOG_BATCH = 500
#: A renewal told to the guardian this close to its deadline may arrive after it struck.
_STRIKE_SLACK = 0.05
#: Poll-only workers (no LISTEN) with a longer poll start new runs late: they say so.
POLL_ONLY_HINT = 5.0


class Ending(StrEnum):
    """Why orchd ended a run early when there is no outcome of its own to record."""

    #: Someone else's now (reaped, or cancelled before it started): nothing to record.
    LOST = "lost"
    #: Handed back to the queue at shutdown (the attempt is not charged).
    RELEASED = "released"
    #: Its lease could not be renewed in time (see fence.py): recorded CRASHED if still ours.
    FENCED = "fenced"


_NEVER = datetime.min.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@dataclass
class ActiveRun:
    run: ClaimedRun
    process: RunProcess
    started: float
    deadline: float | None
    result_file: Path | None = None
    argv: Sequence[str] = ()
    #: When its lease was last renewed (time.monotonic(), read before the claim or heartbeat).
    renewed: float = 0.0
    #: When its exit was seen (time.monotonic()).
    exited_at: float | None = None
    #: Whether its RUNNING state is written (its outcome is recorded only after that).
    recorded: bool = False
    kill_at: float | None = None
    #: Why orchd ended it early: TIMED_OUT or CANCELLED (recorded as such), or an Ending.
    ending: RunState | Ending | None = None
    reason: str | None = None
    returncode: int | None = None
    #: Why it failed beyond its exit status (a container out of memory, an engine error).
    exit_error: str | None = None
    container: str | None = None

    @property
    def bound(self) -> Any:
        return log.bind(run_id=self.run.id, deployment=self.run.deployment, attempt=self.run.attempt)

    @property
    def plain(self) -> bool:
        """Exited 0 with nothing more to record: recorded COMPLETED with others in one statement."""
        return self.returncode == 0 and self.ending is None and self.result_file is None

    def end(self, why: RunState | Ending, reason: str, grace: float, now: float) -> None:
        """Stop the run's process group: SIGTERM now, SIGKILL after ``grace``."""
        if self.ending is None:
            self.ending, self.reason = why, reason
            self.process.terminate(grace)
            self.kill_at = now + grace


@dataclass
class Contention:
    """Workers of a fleet that keep losing the race for runs coming due spread their claims out.

    Every idle worker of a pool knows the same next due time and claims at that instant: with a
    hundred workers and runs due every second, a hundred claims a second, all but a few finding
    nothing (with the look for the next due time after each, most of the fleet's CPU, and the
    claims queued behind each other).  A worker whose claim at a known due time found nothing
    (others took the runs) waits a random while, up to a maximum that doubles with each such
    loss, before claiming at a due time again; a claim that gets runs starts over.  A worker
    that wins (alone, or the fastest) claims at once as before; with many losers backing off at
    random, one of them is back within a small share of the maximum, so a due run that the
    winners cannot take waits little.  A wake-up for runs due now (created, handed back) and a
    freed slot of its own are not held back."""

    backoff: Backoff = field(default_factory=lambda: Backoff(0.1, 4.0))
    #: time.monotonic() before which a claim at a due time waits.
    not_before: float = 0.0

    def claimed(self, runs: int, lost: bool, now: float) -> None:
        """A claim got ``runs``; ``lost``: none, although a run it knew of was due."""
        if runs:
            self.backoff.succeeded()
            self.not_before = 0.0
        elif lost:
            self.not_before = now + random.uniform(0.0, self.backoff.failed())


@dataclass
class Ahead:
    """How long before a known due time a claim starts: the claim's own duration (a few round
    trips; on PostgreSQL about 2-3 ms idle), so that the run is claimed by the time it comes due
    and starts then, not a claim later.  A run claimed ahead is started at its due time, never
    before.  Measured, as a moving average of recent claims, with room for their spread, and
    capped: a slow database must not make runs PENDING long before they are due."""

    #: The average claim's duration (seconds).
    claim: float = 0.0

    def claimed(self, took: float) -> None:
        self.claim += (took - self.claim) / 8

    @property
    def seconds(self) -> float:
        return min(_AHEAD_CAP, 1.5 * self.claim)


@dataclass
class Outage:
    """The database is away: runs keep running, output is kept, and the worker retries with
    backoff, saying so once rather than on every attempt."""

    retry_at: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(0.25, 5.0))

    def failed(self, exc: DatabaseError, now: float, cap: float) -> None:
        """Wait before the next try, at most ``cap`` (a try must come before a fence strikes).  A
        statement the database refused (not an outage: say, tables dropped under it by `orchd db
        reset`) is waited out the same way: it ends no run, nor the worker."""
        if not self.backoff.delay:
            if isinstance(exc, DatabaseUnavailable):
                log.warning("database unavailable; runs keep running", error=exc.reason)
            else:
                log.error("database error; runs keep running, retrying", error=exc.reason)
        self.retry_at = now + min(cap, self.backoff.failed())

    def over(self) -> None:
        if self.backoff.succeeded():
            log.info("database reachable again")


@dataclass
class Worker:
    config: Config
    store: Store
    pools: Sequence[str]
    concurrency: int
    name: str = ""
    burst: bool = False
    clock: Callable[[], datetime] = utcnow
    observer: Observer = field(default_factory=Observer)
    events: queue.Queue[Any] = field(default_factory=queue.Queue)
    active: dict[int, ActiveRun] = field(default_factory=dict)
    _logs: list[dict[str, Any]] = field(default_factory=list)
    _next_claim: float = 0.0
    #: The due time of a run it knows of that _next_claim waits for (None: a wake-up, a freed
    #: slot or the poll).
    _due_at: datetime | None = None
    _contention: Contention = field(default_factory=Contention)
    _ahead: Ahead = field(default_factory=Ahead)
    #: The due time the last claim took runs up to (a run due by then that it did not get is
    #: another worker's, or blocked by a limit).
    _last_claim_at: datetime = _NEVER
    _next_sweep: float = float("inf")
    _engine_problem: str = ""
    _removals: list[threading.Thread] = field(default_factory=list)
    #: The kill deadline the guardian was last given (time.monotonic()), and the moments it struck.
    _armed: float = float("inf")
    _strikes: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.host = socket.gethostname()
        self.name = self.name or self.config.worker.name or f"{self.host}-{os.getpid()}"
        cfg = self.config.worker
        self.lease = timedelta(seconds=cfg.lease_timeout)
        self.fence = Fence.of(cfg)
        self.work_dir = Path(cfg.work_dir or self.config.state_dir)
        try:
            engine, problem = Engine.find(cfg.container_runtime, cfg.container_binary), ""
        except EngineUnavailable as exc:
            engine, problem = None, str(exc)
        database = database_label(mask(self.store.engine.url))
        self.containers = ContainerHost(engine, problem, database, self.name)

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event, notifier: Notifier | None = None) -> None:
        """Work until ``stop`` is set (then drain) or, with ``burst``, until nothing is due."""
        notify = notifier or Notifier()
        self._prepare_work_dir()
        if not self._register(stop):
            return
        engine = self.containers.engine
        self.guardian = Guardian(engine.remove_argv() if engine else (), env=client_environment({}))
        self._check_engine()
        listener = self._listener()
        if listener is not None:
            listener.start()
        # a stop request wakes the loop (it otherwise sleeps until its next duty)
        threading.Thread(target=self._wake_on, args=(stop,), name="stop", daemon=True).start()
        log.info("worker started", worker=self.name, pools=",".join(self.pools), concurrency=self.concurrency)
        notify.ready(self._status())
        try:
            self._loop(stop, notify)
        except Exception as exc:
            self._fail(exc)
            raise
        finally:
            if listener is not None:
                listener.stop()
            for removal in self._removals:
                removal.join(timeout=60)
            self.guardian.close()
        self._flush_logs()
        self.store.worker_stopped(self.name, self.clock())
        log.info("worker stopped", worker=self.name)

    def _register(self, stop: threading.Event) -> bool:
        """Record this worker, waiting out an outage that began after the database answered at
        start (it used to end the worker with exit 1); False if told to stop meanwhile."""
        outage = Outage()
        while not stop.is_set():
            try:
                self.store.register_worker(
                    self.name, self.host, os.getpid(), self.pools, self.concurrency, self.clock()
                )
            except DatabaseError as exc:
                outage.failed(exc, time.monotonic(), cap=5.0)
                stop.wait(max(0.0, outage.retry_at - time.monotonic()))
                continue
            outage.over()
            return True
        return False

    def _wake_on(self, stop: threading.Event) -> None:
        stop.wait()
        self.events.put(WakeEvent(""))

    def _fail(self, exc: Exception) -> None:
        """The worker dies from an error of its own: first its runs (the guardian kills their
        process groups, so no retry can start beside one), then, as far as the database lets it,
        their outcome (CRASHED, retried if attempts remain) and its own stop, so that neither the
        runs nor `orchd status` wait for a lease or a timeout to tell."""
        error = f"worker failed: {type(exc).__name__}: {exc}"
        log.error("worker failed: stopping its runs", worker=self.name, error=error, runs=len(self.active))
        self.guardian.close()
        now = self.clock()
        try:
            self._flush_logs()
            for active in self.active.values():
                if active.ending == S.CANCELLED:
                    self.store.finish(active.run.id, self.name, S.CANCELLED, now, source=S.CANCELLING)
                elif active.ending != Ending.LOST:
                    source = S.RUNNING if active.recorded else S.PENDING
                    self.store.finish(active.run.id, self.name, S.CRASHED, now, error=error, source=source)
            self.store.worker_stopped(self.name, now)
        except Exception as record:  # the error may be the database's: the reaper does it later
            log.warning("could not record the worker's failure", error=str(record))

    def _listener(self) -> Listener | WakeSocket | None:
        """What wakes this worker when runs are queued: PostgreSQL, the LISTEN connection, on a
        session of its own (behind a transaction pooler without ``database.direct_url`` there is
        none, and the poll finds new runs; due times already known are waited for exactly either
        way); SQLite, a wake-up socket beside the database file."""
        db = self.config.database
        if self.burst:
            return None
        if self.store.engine.dialect.name != "postgresql":
            directory = wake_dir(self.store.engine)
            return None if directory is None else WakeSocket(directory, self.pools, self.events)
        session = session_url(db)
        if session is not None:
            return Listener(session, connect_args(db, "orchd-listen", url=session), self.pools, self.events)
        poll = self.config.worker.poll_interval
        slow = poll > POLL_ONLY_HINT
        (log.warning if slow else log.info)(
            "no LISTEN behind a transaction pooler without database.direct_url: polling for new runs",
            poll_interval=format_duration(poll),
            hint=f"set worker.poll_interval to {format_duration(POLL_ONLY_HINT)} or less" if slow else None,
        )
        return None

    def _prepare_work_dir(self) -> None:
        """The default working directory of runs (and where entrypoint results are written): the
        state directory is orchd's own and is created; a ``worker.work_dir`` that does not exist is
        a typo to report, not a directory to create."""
        if self.config.worker.work_dir:
            if not self.work_dir.is_dir():
                problem = "is not a directory" if self.work_dir.exists() else "does not exist"
                raise ConfigError(f"worker.work_dir: {str(self.work_dir)!r} {problem}")
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def _loop(self, stop: threading.Event, notify: Notifier) -> None:
        cfg = self.config.worker
        next_heartbeat = time.monotonic() + cfg.heartbeat
        next_cancel_check = 0.0
        outage = Outage()
        drain_until: float | None = None
        # idle, a PostgreSQL worker sleeps until its next duty: NOTIFY and stop requests wake it
        idle_wait = _IDLE_WAIT if self.store.polled else math.inf
        while True:
            now = time.monotonic()
            notify.watchdog()
            notify.status(self._status())
            if stop.is_set() and drain_until is None:
                drain_until = now + cfg.shutdown_grace
                notify.stopping(f"stopping: waiting for {len(self.active)} runs")
                log.info("stopping: no new claims", running=len(self.active), grace=cfg.shutdown_grace)
            claimed = 0
            self._handle_events(timeout=0)
            self._enforce_deadlines(now, drain_until)
            self._enforce_fence(now)
            if now >= outage.retry_at:
                try:
                    self._flush_logs()
                    self._record_starts()
                    # a claim follows (a slot freed: more may be due right now) and records the
                    # runs that ended well in its transaction, unless the worker is stopping
                    if self._finish_exited(plain=drain_until is not None):
                        self._claim_now()
                    if now >= next_heartbeat:
                        self._heartbeat(now)
                        next_heartbeat = now + cfg.heartbeat
                    if now >= self._next_sweep:
                        self._sweep()
                    if self.active and now >= next_cancel_check:
                        self._check_cancellations(now)
                        next_cancel_check = now + _CANCEL_CHECK
                    if self.store.changed() and (due := self.store.next_due_at(self.pools)) is not None:
                        # something was written (the scheduler records itself every few seconds):
                        # claim when a run is due, not at every write
                        self._claim_when_due(due)
                    if drain_until is None and now >= self._claim_at() and self._free_slots():
                        claimed = self._claim()
                        if claimed and not self._free_slots():
                            self._claim_now()  # full: the next claim comes with a freed slot
                        else:
                            # one that left slots free took every due run it could see: another
                            # now would find nothing (a write for each run a fleet starts)
                            self._next_claim = now + self._idle_wait()
                    outage.over()
                except DatabaseError as exc:
                    self.observer.database_error("worker", exc.reason)
                    outage.failed(exc, now, cap=self.fence.margin / 4)
            if not self.active and (drain_until is not None or (self.burst and not claimed)):
                break
            wake_at = min(next_heartbeat, self._claim_at() if self._free_slots() else next_heartbeat)
            # in an outage the heartbeat is overdue: waiting for it would mean not waiting at all
            wake_at = max(wake_at, outage.retry_at)
            self._handle_events(
                timeout=max(0.0, min(wake_at - time.monotonic(), _MAX_WAIT if self.active else idle_wait)),
                writable=time.monotonic() >= outage.retry_at,
            )

    def _status(self) -> str:
        status = f"running {len(self.active)}/{self.concurrency} runs, pools {','.join(self.pools)}"
        return f"{status}; {self._engine_problem}" if self._engine_problem else status

    # ------------------------------------------------------------------ containers

    def _needs_containers(self) -> list[str]:
        """Pools of this worker whose runs (by this worker's config) execute in containers."""
        pools = {p.name for p in self.config.pools if p.image and p.name in self.pools}
        pools |= {d.pool for d in self.config.deployments if d.image and d.pool in self.pools}
        return sorted(pools)

    def _check_engine(self) -> None:
        """At start, for pools that need containers: say (log, status line) when the engine is
        missing or broken, and remove what dead workers of this host left behind."""
        needing = self._needs_containers()
        if not needing:
            return
        try:
            version = self.containers.usable().check()
        except EngineUnavailable as exc:
            self._engine_problem = f"pools {','.join(needing)} need a container engine: {exc}"
            log.error("container runs will fail", pools=",".join(needing), error=str(exc))
            return
        log.info("container engine ready", engine=version, pools=",".join(needing))
        self._next_sweep = 0.0  # the loop's first turn, where an outage is waited out

    def _sweep(self) -> None:
        """Remove this database's containers on this host that no live worker holds: those whose
        run is over or moved on (another attempt, another worker), and those of a worker of this
        host whose process is gone.  Runs at start and then every lease timeout."""
        engine = self.containers.engine
        self._next_sweep = time.monotonic() + self.config.worker.lease_timeout
        if engine is None:
            return
        try:
            found = engine.leftovers(self.containers.database)
        except EngineUnavailable as exc:
            log.warning("cannot list containers", error=str(exc))
            return
        ours = {(a.run.id, a.run.attempt) for a in self.active.values()}
        others = [c for c in found if c.worker != self.name]
        hosts = {w.name: (w.host, w.pid) for w in self.store.workers()} if others else {}
        stale = []
        for box in found:
            if box.worker == self.name:
                if (box.run_id, box.attempt) not in ours:
                    stale.append(box)
                continue
            row = self.store.get_run(box.run_id)
            held = (
                row is not None
                and row.state in (S.PENDING.value, S.RUNNING.value, S.CANCELLING.value)
                and (row.attempt, row.worker) == (box.attempt, box.worker)
            )
            host, pid = hosts.get(box.worker, ("", 0))
            if not held or (host == self.host and not _alive(pid)):
                stale.append(box)
        if stale:
            log.warning("removing leftover containers", runs=",".join(str(c.run_id) for c in stale))
            try:
                engine.remove([c.id for c in stale])
            except EngineUnavailable as exc:
                log.warning("cannot remove leftover containers", error=str(exc))

    def _remove_after(self, active: ActiveRun) -> None:
        """Remove a container run's container once its outcome is written (on a thread: the
        engine takes a tenth of a second or more), then tell the guardian it is gone."""
        if active.container is None:
            return
        name, engine = active.container, self.containers.engine
        assert engine is not None

        def remove() -> None:
            try:
                engine.remove([name])
            except EngineUnavailable as exc:
                log.warning("cannot remove container", container=name, error=str(exc))
                return
            self.guardian.forget(name)

        thread = threading.Thread(target=remove, name=f"remove-{active.run.id}", daemon=True)
        thread.start()
        self._removals = [t for t in self._removals if t.is_alive()] + [thread]

    def _idle_wait(self) -> float:
        """Seconds until the earliest known due run of our pools, capped by the poll interval.
        A run that was already due when we last claimed and was not given to us is another
        worker's (its claim held it) or blocked (a limit is full): it is left out, retried at the
        poll interval or when a wake-up comes, and the runs due after it are waited for (hidden
        behind it, a worker of a fleet slept past them until its poll).  One that became due
        since is claimed at once."""
        poll = self.config.worker.poll_interval
        self._due_at = None
        if self.burst:
            return 0.0
        due = self.store.next_due_at(self.pools, after=self._last_claim_at)
        if due is None:
            return poll
        wait = (due - self.clock()).total_seconds()
        if wait < poll:
            self._due_at = due
        return max(0.0, min(poll, wait - self._ahead.seconds))

    def _claim_now(self) -> None:
        """Claim at the loop's next turn (runs may be due now: not held back, see Contention)."""
        self._next_claim, self._due_at = 0.0, None

    def _claim_when_due(self, due: datetime) -> None:
        """Claim when a run known to come due at ``due`` does (now if it has), unless a claim
        is already set for earlier."""
        wait = (due - self.clock()).total_seconds()
        if wait <= 0:
            self._claim_now()
        elif (at := time.monotonic() + max(0.0, wait - self._ahead.seconds)) < self._next_claim:
            self._next_claim, self._due_at = at, due

    def _claim_at(self) -> float:
        """When the next claim is due: at a known due time, not before Contention allows."""
        if self._due_at is None:
            return self._next_claim
        return max(self._next_claim, self._contention.not_before)

    # ------------------------------------------------------------------ steps

    def _claim(self) -> int:
        """Record the plainly completed runs and claim new ones in one transaction, spawn them,
        then mark every spawned run RUNNING in one statement.  At a known due time the claim
        starts ahead of it (Ahead) and the runs are spawned when it comes."""
        renewed = time.monotonic()
        now = self.clock()
        due_by = now
        if self._due_at is not None and now < self._due_at <= now + timedelta(seconds=_AHEAD_CAP):
            due_by = self._due_at
        self._last_claim_at = due_by
        plain = self._plain_ended()
        completed, runs = self.store.complete_and_claim(
            [a.run.id for a in plain],
            self.name,
            self.pools,
            self._free_slots(),
            now,
            now + self.lease,
            due_by,
        )
        took = time.monotonic() - renewed
        self._completed_plain(plain, set(completed))
        self.observer.claimed(len(runs), took)
        self._ahead.claimed(took)
        # nothing although a run was due by then (the time the claim compared with): others took it
        lost = not runs and self._due_at is not None and self._due_at <= due_by
        self._contention.claimed(len(runs), lost, time.monotonic())
        if runs:
            self._arm_guardian(renewed)  # before a run exists: an old deadline must not strike it
            if (early := (due_by - self.clock()).total_seconds()) > 0:
                time.sleep(min(early, _AHEAD_CAP))  # claimed ahead: started when due, not before
        for run in runs:
            self._spawn(run, renewed)
        self._record_starts()
        return len(runs)

    def _record_starts(self) -> None:
        """PENDING -> RUNNING for spawned runs not yet recorded; if the database fails here the
        runs keep running and this is retried on the next pass (before their outcome is)."""
        waiting = [a for a in self.active.values() if not a.recorded and a.ending != Ending.LOST]
        if not waiting:
            return
        now = self.clock()
        ours = set(self.store.start_many({a.run.id: a.process.pid for a in waiting}, self.name, now))
        for active in waiting:
            active.recorded = True
            if active.run.id not in ours:
                active.end(Ending.LOST, "cancelled or reaped before it started", 0.0, active.started)
                continue
            self.observer.run_started(active.run, now)
            active.bound.info("run started", pid=active.process.pid, command=" ".join(active.argv))

    def _spawn(self, run: ClaimedRun, renewed: float) -> None:
        """Start the run's process (or container).  Whatever goes wrong here (a missing program or
        directory, a value the kernel refuses, no container engine) fails this run alone, with the
        reason: never the worker."""
        argv: list[str] = []
        try:
            how = invocation(run, self.work_dir, self.containers)
            argv = how.argv
            if how.container is None:  # a container's working_dir is a path inside it
                check_working_dir(how.cwd, explicit=bool(run.spec.working_dir))
            how.prepare()
            process = self._start(run, how)
        except Exception as exc:
            error = start_error(argv, exc)
            log.error("run failed to start", run_id=run.id, deployment=run.deployment, error=error)
            if not self.store.finish(
                run.id, self.name, S.FAILED, self.clock(), error=error, source=S.PENDING
            ):
                _refused(log.bind(run_id=run.id, deployment=run.deployment), S.FAILED)
            return
        started = time.monotonic()
        timeout = run.spec.timeout
        self.active[run.id] = ActiveRun(
            run,
            process,
            started,
            started + timeout if timeout else None,
            how.result_file,
            argv=how.argv,
            container=how.container.name if how.container else None,
            renewed=renewed,
        )

    def _start(self, run: ClaimedRun, how: Invocation) -> RunProcess:
        args: dict[str, Any] = {
            "run_id": run.id,
            "argv": how.argv,
            "env": how.env,
            "cwd": str(how.cwd),
            "events": self.events,
            "max_output": self.config.worker.log_max_bytes,
            "guardian": self.guardian,
        }
        if how.container is None:
            return RunProcess(**args)
        launch = how.container
        if run.attempt > 1:  # a retry never runs next to what an earlier attempt left on this host
            with contextlib.suppress(EngineUnavailable):
                leftovers = launch.engine.leftovers(self.containers.database, run.id)
                launch.engine.remove([c.id for c in leftovers])
        self.guardian.watch(launch.name)  # before it exists: a death right after still removes it
        return ContainerRun(launch.engine, launch.name, launch.memory, **args)

    def _handle_events(self, timeout: float, writable: bool = True) -> None:
        """Take what the pump and listen threads posted: output, exits, wake-ups.  Output cuts the
        wait short to be written soon, unless the database is away (``writable`` false): then
        it only waits to be written, and cutting the wait would spin the loop."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=remaining) if remaining > 0 else self.events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, OutputEvent):
                self._take_output(event)
                # output is written within _LOG_FLUSH of its arrival (in batches, still), so a
                # person tailing the run sees a line a moment after it was printed
                if writable:
                    deadline = min(deadline, time.monotonic() + _LOG_FLUSH)
            elif isinstance(event, WakeEvent) and event.due is not None:
                # runs come due later: claim then, not now (the claim would find nothing)
                self._claim_when_due(datetime.fromtimestamp(event.due, UTC))
                deadline = min(deadline, self._claim_at())
            elif isinstance(event, WakeEvent):
                self._claim_now()
                deadline = 0.0  # act now, after taking what else is already there
            elif isinstance(event, ExitEvent) and (active := self.active.get(event.run_id)) is not None:
                active.returncode, active.exit_error = event.returncode, event.error
                active.exited_at = event.at
                deadline = 0.0  # record it promptly, with any other exit already posted
            if writable and len(self._logs) >= _LOG_BATCH:
                return

    def _take_output(self, event: OutputEvent) -> None:
        active = self.active.get(event.run_id)
        attempt = active.run.attempt if active else 1
        for line in event.lines:
            log.info(line.text, run_id=event.run_id, stream=line.stream)
            self._logs.append(
                {
                    "run_id": event.run_id,
                    "attempt": attempt,
                    "at": line.at,
                    "stream": line.stream,
                    "line": line.text,
                }
            )

    def _flush_logs(self) -> None:
        if self._logs:
            self.store.append_logs(self._logs)
            self._logs = []

    def _ended(self) -> list[ActiveRun]:
        """The runs whose process ended and whose outcome is to be written (their start was)."""
        return [
            a
            for a in self.active.values()
            if a.returncode is not None and (a.recorded or a.ending == Ending.LOST)
        ]

    def _plain_ended(self) -> list[ActiveRun]:
        return [a for a in self._ended() if a.plain]

    def _free_slots(self) -> int:
        """Slots for new runs: the plainly completed runs not yet recorded free theirs, since
        the claim records them first."""
        return self.concurrency - len(self.active) + len(self._plain_ended())

    def _finish_exited(self, plain: bool = True) -> int:
        """Record the runs whose process ended, the plain successes in one statement (or, when
        not ``plain``, in the claim that follows, _claim), the rest one by one; return how many
        ended.  A run leaves ``active`` only once its outcome is written."""
        ended = self._ended()
        simple = [a for a in ended if a.plain]
        if simple and plain:
            self._completed_plain(
                simple, set(self.store.complete_many([a.run.id for a in simple], self.name, self.clock()))
            )
        done = {a.run.id for a in simple}
        for active in ended:
            if active.run.id in done:
                continue
            self._record_end(active)
            del self.active[active.run.id]
            self._remove_after(active)
        return len(ended)

    def _completed_plain(self, ended: list[ActiveRun], recorded: set[int]) -> None:
        """After the plain successes ``ended`` were written: those ``recorded`` COMPLETED, the
        rest refused (no longer ours)."""
        for active in ended:
            del self.active[active.run.id]
            if active.run.id in recorded:
                self._completed(active)
            else:
                _refused(active.bound, S.COMPLETED, exit_code=0)
            self._remove_after(active)

    def _completed(self, active: ActiveRun) -> None:
        duration = time.monotonic() - active.started
        self.observer.run_ended(active.run.deployment, S.COMPLETED, duration)
        active.bound.info("run completed", exit_code=0, duration=round(duration, 3))

    def _record_end(self, active: ActiveRun) -> None:
        """Write the outcome; a database error leaves the run in ``active`` to be retried."""
        run, rc, bound = active.run, active.returncode, active.bound
        assert rc is not None  # only runs whose process exited are recorded
        now = self.clock()
        result, raised = read_result(active.result_file) if active.result_file else (None, None)
        if active.ending == Ending.LOST:
            bound.warning("run stopped: it is no longer ours", reason=active.reason, exit_code=rc)
            return
        if active.ending == Ending.FENCED:
            final = self.store.finish(run.id, self.name, S.CRASHED, now, exit_code=rc, error=active.reason)
            if final is None:
                bound.warning("fenced run: reaped meanwhile, nothing to record", exit_code=rc)
            else:
                bound.warning("run crashed: fenced", exit_code=rc, retry=(final == S.SCHEDULED) or None)
            return
        if active.ending == Ending.RELEASED:
            if self.store.release([run.id], self.name, now, "worker shutting down: handed back"):
                bound.warning("run handed back to the queue", exit_code=rc)
            else:
                _refused(bound, S.SCHEDULED, exit_code=rc)
            return
        if active.ending == S.CANCELLED:
            if self.store.finish(
                run.id, self.name, S.CANCELLED, now, exit_code=rc, error=active.reason, source=S.CANCELLING
            ):
                bound.info("run cancelled", exit_code=rc)
            else:
                _refused(bound, S.CANCELLED, exit_code=rc)
            return
        if active.ending == S.TIMED_OUT:
            outcome, error = S.TIMED_OUT, active.reason
        elif rc == 0:
            outcome, error = S.COMPLETED, None
        elif active.exit_error:
            outcome, error = S.FAILED, active.exit_error
        else:  # an entrypoint's exception says more than its runner's exit code
            outcome, error = S.FAILED, raised or describe_exit(rc)
        final = self.store.finish(run.id, self.name, outcome, now, exit_code=rc, error=error, result=result)
        if final is None:
            _refused(bound, outcome, exit_code=rc, error=error)
            return
        level = bound.info if outcome == S.COMPLETED else bound.warning
        duration = round(time.monotonic() - active.started, 3)
        self.observer.run_ended(run.deployment, outcome, duration)
        level(
            f"run {outcome.value.lower()}",
            exit_code=rc,
            duration=duration,
            error=error,
            retry=(final == S.SCHEDULED) or None,
        )

    def _enforce_deadlines(self, now: float, drain_until: float | None) -> None:
        """Timeouts, the end of the shutdown grace, and SIGKILL for whatever outlived its SIGTERM."""
        kill_grace = self.config.worker.kill_grace
        for active in self.active.values():
            if active.returncode is not None:
                continue
            if active.kill_at is not None and now >= active.kill_at:
                active.process.kill()
                active.kill_at = None  # once: a container is killed through its engine
            elif active.deadline is not None and now >= active.deadline:
                active.end(S.TIMED_OUT, f"timed out after {round(now - active.started, 1)}s", kill_grace, now)
            elif drain_until is not None and now >= drain_until:
                active.end(Ending.RELEASED, "shutdown grace over", kill_grace, now)

    def _enforce_fence(self, now: float) -> None:
        """Stop runs whose lease could not be renewed before it can expire (see fence.py); a run
        alive when the guardian's fence struck and over after it was (or may have been) killed
        by it: fenced too, whatever its exit status says."""
        self._note_strike(time.monotonic())  # now, not the loop's now: exits taken since count
        if not self.active:
            self._strikes.clear()
        for active in self.active.values():
            if active.ending in (Ending.LOST, Ending.FENCED):
                continue
            dead_by = self.fence.dead_by(active.renewed)
            if active.returncode is not None:
                exited = active.exited_at if active.exited_at is not None else now
                if active.ending is None and any(active.started <= s <= exited for s in self._strikes):
                    active.ending, active.reason = Ending.FENCED, self.fence.reason(active.renewed, now)
                    self.observer.fenced()
                continue
            if now < self.fence.stop_at(active.renewed):
                continue
            if active.ending is None:
                reason = self.fence.reason(active.renewed, now)
                active.bound.warning(
                    "lease not renewed: stopping the run before it can expire", reason=reason
                )
                active.end(Ending.FENCED, reason, self.fence.grace(active.renewed, now), now)
                self.observer.fenced()
            elif active.kill_at is not None:  # already stopping (timeout, cancel): dead in time too
                active.kill_at = min(active.kill_at, dead_by)

    def _arm_guardian(self, renewed: float = float("inf")) -> None:
        """Tell the guardian by when the runs still ours must be dead if no renewal follows."""
        held = [a.renewed for a in self.active.values() if a.ending not in (Ending.LOST, Ending.FENCED)]
        oldest = min([renewed, *held])
        if oldest != float("inf"):
            self._note_strike(time.monotonic() + _STRIKE_SLACK)  # a renewal coming too late
            self._armed = self.fence.dead_by(oldest)
            self.guardian.fence(self._armed)

    def _note_strike(self, now: float) -> None:
        """The guardian's deadline has passed without a renewal: it struck (and is disarmed)."""
        if now >= self._armed:
            self._strikes.append(self._armed)
            self._armed = float("inf")

    def _heartbeat(self, now: float) -> None:
        """Extend our leases; a run we hold that the database no longer gives us was reaped (or
        wiped): stop it.  A worker the database forgot registers again."""
        renewed = time.monotonic()
        clock = self.clock()
        beat = self.store.heartbeat(self.name, clock, clock + self.lease, list(self.active))
        self.observer.heartbeat()
        if not beat.known:  # `orchd db reset` wiped the database under us: be known again
            log.warning("this worker is unknown to the database (was it reset?): registering again")
            self.store.register_worker(self.name, self.host, os.getpid(), self.pools, self.concurrency, clock)
        held = beat.held
        for run_id, active in self.active.items():
            if run_id in held:
                active.renewed = renewed
            elif active.returncode is None:
                active.bound.warning("lease lost: stopping the run")
                active.end(Ending.LOST, "lease lost", 0.0, now)
        self._arm_guardian()
        self._cancel([run_id for run_id, state in held.items() if state == S.CANCELLING], now)

    def _check_cancellations(self, now: float) -> None:
        self._cancel(self.store.cancel_requested(self.name), now)

    def _cancel(self, run_ids: Sequence[int], now: float) -> None:
        for run_id in run_ids:
            if (active := self.active.get(run_id)) is not None and active.returncode is None:
                active.end(S.CANCELLED, "cancelled on request", _CANCEL_GRACE, now)


def _refused(bound: Any, outcome: RunState, **fields: Any) -> None:
    """The state machine refused the outcome: the run is not ours any more (its lease expired and
    it was reaped, or it was cancelled meanwhile).  Said as a warning, never as if it were recorded."""
    bound.warning(
        f"run outcome not recorded: the run is no longer this worker's ({outcome.value.lower()} refused)",
        **fields,
    )
