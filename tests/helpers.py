"""Small helpers shared by tests: waiting with a deadline, and daemons as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, func, select

from orchd.config import load_config
from orchd.db.engine import make_engine
from orchd.db.schema import run_states, runs
from orchd.db.store import Store

T = TypeVar("T")
BIN = Path(sys.executable).parent


def engine_for(url: str) -> Engine:
    """An engine on ``url`` set up as orchd's daemons set theirs up (every other key defaulted)."""
    return make_engine(load_config("/dev/null", env={"ORCHD_DATABASE_URL": url}).database)


def store_for(url: str, actor: str = "test") -> Store:
    """A Store of its own on the test database, as another process would have."""
    return Store(engine_for(url), actor)


def write_config(path: Path, url: str, body: str = "") -> Path:
    """An orchd.toml pointing at the test database, plus ``body`` (TOML, dedented): for tests,
    the bench and the chaos run alike."""
    path.write_text(f'[database]\nurl = "{url}"\n' + textwrap.dedent(body))
    return path


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class Daemons:
    """Processes started by a test; every one is stopped by its PID when the test ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, command: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        return self.spawn([str(BIN / command), *args], command, env=env, cwd=cwd)

    def spawn(
        self, argv: Sequence[str], label: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Any command line (e.g. a daemon inside a network namespace); ``label`` names its log."""
        log = open(self.log_dir / f"{label}-{len(self.procs)}.log", "wb")  # noqa: SIM115 (closed by the OS at exit)
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, "ORCHD_LOGGING_FORMAT": "logfmt", **(env or {})},
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        proc.send_signal(sig)
        return proc.wait(timeout=timeout)

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def daemons(log_dir: Path) -> Iterator[Daemons]:
    group = Daemons(log_dir)
    try:
        yield group
    finally:
        group.cleanup()


def reap(store: Store, now: datetime) -> list[int]:
    """The reaping part of the scheduler's upkeep: the runs whose lease expired, now CRASHED."""
    return store.upkeep(now, misfire_grace=None, worker_timeout=3600).crashed


def state_of(store: Store, run_id: int) -> str:
    with store.read() as conn:
        return str(conn.execute(select(runs.c.state).where(runs.c.id == run_id)).scalar_one())


def states_count(store: Store) -> dict[str, int]:
    with store.read() as conn:
        return {s: n for s, n in conn.execute(select(runs.c.state, func.count()).group_by(runs.c.state))}


def claims_per_run(store: Store) -> dict[int, int]:
    """How many times each run went SCHEDULED -> PENDING (a claim)."""
    with store.read() as conn:
        rows = conn.execute(
            select(run_states.c.run_id, func.count())
            .where(run_states.c.to_state == "PENDING")
            .group_by(run_states.c.run_id)
        )
        return {rid: n for rid, n in rows}


def history(store: Store, run_id: int) -> list[tuple[str | None, str]]:
    return [(h.from_state, h.to_state) for h in store.run_history(run_id)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def proc_status(pid: int, key: str) -> str:
    """The first value of ``key`` in /proc/PID/status (VmRSS in kB, SigCgt as hex…)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split()[1]
    raise KeyError(f"{key} not in /proc/{pid}/status")


def signal_name(sig: int) -> str:
    return signal.Signals(sig).name


def run_cli(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
    command: str = "orchd",
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / command), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )
