"""The worker daemon: claims due runs of its pools and executes them as child processes.

The main thread owns every database call (one connection per process on SQLite) and reads like
the list of its steps; pump threads only read child output and post events.  It sleeps until the
earliest known due time of its pools, a child event, or the next heartbeat, and polls the queue
only as a safety net.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from orchd.config import Config
from orchd.db.store import ClaimedRun, Store
from orchd.logging import get_logger
from orchd.notify import Notifier
from orchd.states import RunState
from orchd.worker.process import ExitEvent, OutputEvent, RunProcess, run_environment

log = get_logger("orchd.worker")
S = RunState
_MAX_WAIT = 0.25  # how quickly a stop request (signal) is noticed
_LOG_BATCH = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ActiveRun:
    run: ClaimedRun
    process: RunProcess
    started: float
    deadline: float | None
    kill_at: float | None = None
    #: Why orchd ended it early: TIMED_OUT, or "lost"/"released" (not ours to record).
    ending: RunState | str | None = None
    reason: str | None = None
    returncode: int | None = None


@dataclass
class Worker:
    config: Config
    store: Store
    pools: Sequence[str]
    concurrency: int
    name: str = ""
    burst: bool = False
    clock: Callable[[], datetime] = utcnow
    events: queue.Queue[OutputEvent | ExitEvent] = field(default_factory=queue.Queue)
    active: dict[int, ActiveRun] = field(default_factory=dict)
    _logs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.host = socket.gethostname()
        self.name = self.name or self.config.worker.name or f"{self.host}-{os.getpid()}"
        cfg = self.config.worker
        self.lease = timedelta(seconds=cfg.lease_timeout)
        self.work_dir = Path(cfg.work_dir or self.config.state_dir)

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event, notifier: Notifier | None = None) -> None:
        """Work until ``stop`` is set (then drain) or, with ``burst``, until nothing is due."""
        cfg = self.config.worker
        notify = notifier or Notifier()
        self.store.register_worker(
            self.name, self.host, os.getpid(), self.pools, self.concurrency, self.clock()
        )
        log.info("worker started", worker=self.name, pools=",".join(self.pools), concurrency=self.concurrency)
        notify.ready(self._status())
        next_heartbeat = time.monotonic() + cfg.heartbeat
        next_claim = 0.0
        drain_until: float | None = None
        while True:
            now = time.monotonic()
            notify.watchdog()
            notify.status(self._status())
            if stop.is_set() and drain_until is None:
                drain_until = now + cfg.shutdown_grace
                notify.stopping(f"stopping: waiting for {len(self.active)} runs")
                log.info(
                    "stopping: no new claims, waiting for running runs",
                    running=len(self.active),
                    grace=cfg.shutdown_grace,
                )
            try:
                self._handle_events(timeout=0)
                self._flush_logs()
                if self._finish_exited():
                    next_claim = 0.0  # a slot freed: more may be due right now
                self._enforce_deadlines(now, drain_until)
                if now >= next_heartbeat:
                    self._heartbeat()
                    next_heartbeat = now + cfg.heartbeat
                claimed = 0
                if drain_until is None and now >= next_claim and len(self.active) < self.concurrency:
                    claimed = self._claim()
                    next_claim = now + self._idle_wait() if not claimed else now
            except OperationalError as exc:
                log.warning("database unavailable; runs keep running", error=str(exc.orig).strip())
                next_claim = now + min(5.0, cfg.poll_interval)
                claimed = 0
            if not self.active and (
                drain_until is not None or (self.burst and not claimed and now >= next_claim)
            ):
                break
            wait = min(next_heartbeat, next_claim if len(self.active) < self.concurrency else next_heartbeat)
            self._handle_events(timeout=max(0.0, min(wait - time.monotonic(), _MAX_WAIT)))
        self._flush_logs()
        self.store.worker_stopped(self.name, self.clock())
        log.info("worker stopped", worker=self.name)

    def _status(self) -> str:
        return f"running {len(self.active)}/{self.concurrency} runs, pools {','.join(self.pools)}"

    def _idle_wait(self) -> float:
        """Seconds until the earliest known due run of our pools, capped by the poll interval."""
        poll = self.config.worker.poll_interval
        if self.burst:
            return 0.0
        due = self.store.next_due_at(self.pools)
        if due is None:
            return poll
        return max(0.0, min(poll, (due - self.clock()).total_seconds()))

    # ------------------------------------------------------------------ steps

    def _claim(self) -> int:
        now = self.clock()
        runs = self.store.claim(
            self.name, self.pools, self.concurrency - len(self.active), now, now + self.lease
        )
        for run in runs:
            self._start(run)
        return len(runs)

    def _start(self, run: ClaimedRun) -> None:
        spec = run.spec
        env = run_environment(
            {
                **spec.get("env", {}),
                "ORCHD_RUN_ID": str(run.id),
                "ORCHD_DEPLOYMENT": run.deployment,
                "ORCHD_ATTEMPT": str(run.attempt),
                "ORCHD_SCHEDULED_FOR": run.scheduled_for.isoformat(),
                "ORCHD_PARAMETERS": json.dumps(run.parameters, sort_keys=True),
            }
        )
        cwd = spec.get("working_dir") or str(self.work_dir)
        bound = log.bind(run_id=run.id, deployment=run.deployment, attempt=run.attempt)
        try:
            Path(cwd).mkdir(parents=True, exist_ok=True)
            process = RunProcess(
                run.id, spec["command"], env, cwd, self.events, self.config.worker.log_max_bytes
            )
        except OSError as exc:
            error = f"cannot start {spec['command'][0]!r}: {exc.strerror or exc}"
            bound.error("run failed to start", error=error)
            self.store.finish(run.id, self.name, S.FAILED, self.clock(), error=error, source=S.PENDING)
            return
        if not self.store.start(run.id, self.name, process.pid, self.clock()):
            process.signal_group(signal.SIGKILL)  # cancelled or reaped between claim and start
            self.active[run.id] = ActiveRun(run, process, time.monotonic(), None, ending="lost")
            return
        timeout = spec.get("timeout")
        started = time.monotonic()
        self.active[run.id] = ActiveRun(run, process, started, started + timeout if timeout else None)
        bound.info("run started", pid=process.pid, command=" ".join(spec["command"]))

    def _handle_events(self, timeout: float) -> None:
        """Take child events: output lines (to be stored and echoed) and exits."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=remaining) if remaining > 0 else self.events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, OutputEvent):
                self._take_output(event)
            elif (active := self.active.get(event.run_id)) is not None:
                active.returncode = event.returncode
                return  # let the loop record it promptly
            if len(self._logs) >= _LOG_BATCH:
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

    def _finish_exited(self) -> int:
        ended = [a for a in self.active.values() if a.returncode is not None]
        for active in ended:
            self._record_end(active)
            del self.active[active.run.id]
        return len(ended)

    def _record_end(self, active: ActiveRun) -> None:
        run, rc = active.run, active.returncode
        bound = log.bind(run_id=run.id, deployment=run.deployment, attempt=run.attempt)
        now = self.clock()
        duration = round(time.monotonic() - active.started, 3)
        if active.ending == "lost":
            bound.warning("run stopped: its lease was taken over", exit_code=rc)
            return
        if active.ending == "released":
            self.store.release([run.id], self.name, now, "worker shutting down: handed back")
            bound.warning("run handed back to the queue", exit_code=rc)
            return
        if active.ending == S.TIMED_OUT:
            outcome, error = S.TIMED_OUT, active.reason
        elif rc == 0:
            outcome, error = S.COMPLETED, None
        elif rc is not None and rc < 0:
            outcome, error = S.FAILED, f"killed by signal {signal.Signals(-rc).name}"
        else:
            outcome, error = S.FAILED, f"exit code {rc}"
        final = self.store.finish(run.id, self.name, outcome, now, exit_code=rc, error=error)
        level = bound.info if outcome == S.COMPLETED else bound.warning
        level(
            f"run {outcome.value.lower()}",
            exit_code=rc,
            duration=duration,
            error=error,
            retry=final == S.SCHEDULED or None,
        )

    def _enforce_deadlines(self, now: float, drain_until: float | None) -> None:
        """Timeouts (SIGTERM, then SIGKILL after kill_grace) and the end of the shutdown grace."""
        kill_grace = self.config.worker.kill_grace
        for active in self.active.values():
            if active.returncode is not None:
                continue
            if active.kill_at is not None:
                if now >= active.kill_at:
                    active.process.signal_group(signal.SIGKILL)
                continue
            if active.deadline is not None and now >= active.deadline:
                active.ending = S.TIMED_OUT
                active.reason = f"timed out after {round(now - active.started, 1)}s"
            elif drain_until is not None and now >= drain_until:
                active.ending = "released"
            else:
                continue
            active.process.signal_group(signal.SIGTERM)
            active.kill_at = now + kill_grace

    def _heartbeat(self) -> None:
        now = self.clock()
        held = self.store.heartbeat(self.name, now, now + self.lease, len(self.active))
        for run_id, active in self.active.items():
            if run_id not in held and active.returncode is None and active.ending != "lost":
                log.warning("lease lost: stopping the run", run_id=run_id)
                active.ending = "lost"
                active.process.signal_group(signal.SIGKILL)
