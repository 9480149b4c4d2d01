"""The daemons of a chaos run as real processes: started, SIGKILLed, restarted and stopped by PID.

Every kill is recorded with its wall-clock time, because a run's child that dies with its worker
writes no "end" line to the ledger: the kill time is then the end of that execution.  Just
before a worker is killed its run process groups are noted, so a probe can tell afterwards
whether anything of a run outlived the worker (a retry could then execute the run twice).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import proc_status

BIN = Path(sys.executable).parent
KINDS = ("scheduler", "worker")
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_harness() -> None:  # runs in the daemon between fork and exec
    """A harness killed without cleanup must not leave daemons behind."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Daemon:
    """One slot of the fleet (``worker-2``); each restart is a new process in the same slot."""

    kind: str
    slot: int
    proc: subprocess.Popen[bytes] | None = None
    incarnation: int = 0
    #: When a killed daemon is due to be started again (time.monotonic), or None.
    restart_at: float | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.slot}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass(frozen=True)
class Kill:
    kind: str
    pid: int
    at: float  # time.time() once the process is gone (so its run children are gone too)
    leader: bool
    #: Process groups of the worker's runs at the moment of the kill (each run is a group).
    run_groups: frozenset[int] = frozenset()


@dataclass
class Orphan:
    """A process of a killed worker's run, found alive a second after the worker died."""

    pid: int
    worker_pid: int
    killed_at: float  # when its worker was SIGKILLed
    run_id: int
    attempt: int
    cmdline: str
    #: When it was seen gone, or killed by the harness's cleanup (time.time()).
    died_at: float | None = None


@dataclass
class Fleet:
    config: Path
    log_dir: Path
    tag: str  # CHAOS_TAG in every run's environment: finds leftovers of this chaos run only
    daemons: list[Daemon] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    restarts: int = 0
    #: (kind, pid, exit status) of processes that exited without being killed or stopped.
    unexpected_exits: list[tuple[str, int, int]] = field(default_factory=list)
    #: pid -> (kind, exit status) of the final SIGTERM stop.
    stop_status: dict[int, tuple[str, int]] = field(default_factory=dict)
    orphans: list[Orphan] = field(default_factory=list)
    _probes: list[tuple[float, Kill]] = field(default_factory=list)

    @classmethod
    def of(cls, config: Path, log_dir: Path, tag: str, schedulers: int, workers: int) -> Fleet:
        fleet = cls(config, log_dir, tag)
        fleet.daemons = [Daemon("scheduler", i + 1) for i in range(schedulers)]
        fleet.daemons += [Daemon("worker", i + 1) for i in range(workers)]
        return fleet

    def of_kind(self, kind: str) -> list[Daemon]:
        return [d for d in self.daemons if d.kind == kind]

    def alive(self, kind: str) -> list[Daemon]:
        return [d for d in self.of_kind(kind) if d.alive()]

    def start(self, daemon: Daemon) -> None:
        daemon.incarnation += 1
        if daemon.incarnation > 1:
            self.restarts += 1
        log = self.log_dir / f"{daemon.label}.{daemon.incarnation}.log"
        with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
            daemon.proc = subprocess.Popen(
                self.command(daemon),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ORCHD_LOGGING_FORMAT": "logfmt"},
                preexec_fn=_die_with_harness,
            )
        daemon.restart_at = None

    def command(self, daemon: Daemon) -> list[str]:
        """The daemon's command line; a fleet of simulated hosts runs it in the host's namespace."""
        return [str(BIN / f"orchd-{daemon.kind}"), "--config", str(self.config)]

    def kill(self, daemon: Daemon, leader: bool, restart_in: float) -> Kill:
        """SIGKILL, wait until it is gone, and schedule its restart."""
        assert daemon.proc is not None and daemon.pid is not None
        groups = frozenset(_children(daemon.pid)) if daemon.kind == "worker" else frozenset()
        daemon.proc.kill()
        daemon.proc.wait(timeout=30)
        kill = Kill(daemon.kind, daemon.pid, time.time(), leader, groups)
        self.kills.append(kill)
        if groups:
            self._probes.append((time.monotonic() + 1.0, kill))
        daemon.restart_at = time.monotonic() + restart_in
        return kill

    def tend(self) -> None:
        """Start daemons whose restart is due; note and restart any that died on their own."""
        now = time.monotonic()
        for daemon in self.daemons:
            proc = daemon.proc
            if proc is not None and daemon.restart_at is None and (status := proc.poll()) is not None:
                self.unexpected_exits.append((daemon.kind, proc.pid, status))
                daemon.restart_at = now + 1.0  # as systemd's RestartSec: no tight loop if it cannot start
            if daemon.restart_at is not None and now >= daemon.restart_at:
                self.start(daemon)

    def last_log(self) -> str:
        """The end of the newest daemon log: why the fleet did not come up."""
        logs = sorted(self.log_dir.glob("*.log"), key=lambda p: p.stat().st_mtime)
        return logs[-1].read_text(errors="replace")[-3000:] if logs else "(no daemon log)"

    def start_all_stopped(self) -> None:
        for daemon in self.daemons:
            if not daemon.alive():
                daemon.restart_at = 0.0
        self.tend()

    def watch_orphans(self, force: bool = False) -> None:
        """Look for run processes of workers killed a second ago (``force``: however recently), and
        note when those already found are gone: whether a retry started while one still ran."""
        now, waiting = time.monotonic(), []
        for due, kill in self._probes:
            if force or now >= due:
                self.orphans += [_describe(pid, kill) for pid in _group_members(kill.run_groups, self.tag)]
            else:
                waiting.append((due, kill))
        self._probes = waiting
        for orphan in self.orphans:
            if orphan.died_at is None and not _running(orphan.pid):
                orphan.died_at = time.time()

    def stop_kind(self, kind: str, timeout: float) -> None:
        """SIGTERM every daemon of ``kind`` and wait for each; their exit statuses are kept, and the
        slots are left empty so nothing restarts them."""
        stopping = [(d, d.proc) for d in self.alive(kind) if d.proc is not None]
        deadline = time.monotonic() + timeout
        for _, proc in stopping:
            _wait_for_sigterm_handler(proc, deadline)
            proc.send_signal(signal.SIGTERM)
        for daemon, proc in stopping:
            try:
                status = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                status = proc.wait(timeout=30)
            self.stop_status[proc.pid] = (kind, status)
            daemon.proc = None

    def cleanup(self) -> None:
        """Whatever is still running, daemons and stray run processes of this chaos run: SIGKILL."""
        for daemon in self.daemons:
            if daemon.alive() and daemon.proc is not None:
                daemon.proc.kill()
                with suppress(subprocess.TimeoutExpired):
                    daemon.proc.wait(timeout=30)
        for pid in _tagged(self.tag):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for orphan in self.orphans:
            if orphan.died_at is None:
                orphan.died_at = time.time()


def _children(pid: int) -> set[int]:
    """Direct children of ``pid`` (all its threads): a worker's run processes, each a group leader."""
    kids: set[int] = set()
    with suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(FileNotFoundError):
                kids.update(int(p) for p in (task / "children").read_text().split())
    return kids


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[0], int(fields[2])


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def _tagged(tag: str, keep: Callable[[int], bool] = lambda pid: True) -> list[int]:
    """Live processes of this chaos run's runs (found by the CHAOS_TAG in their environment)."""
    found = []
    for pid in _pids():
        if _running(pid) and keep(pid) and _environ(pid).get("CHAOS_TAG") == tag:
            found.append(pid)
    return found


def _group_members(groups: frozenset[int], tag: str) -> list[int]:
    def in_groups(pid: int) -> bool:
        stat = _stat(pid)
        return stat is not None and stat[1] in groups

    return _tagged(tag, in_groups)


def _running(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _describe(pid: int, kill: Kill) -> Orphan:
    env = _environ(pid)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        cmdline = "?"
    return Orphan(
        pid,
        kill.pid,
        kill.at,
        int(env.get("ORCHD_RUN_ID", "0")),
        int(env.get("ORCHD_ATTEMPT", "0")),
        cmdline.strip()[:200],
    )


def _wait_for_sigterm_handler(proc: subprocess.Popen[bytes], deadline: float) -> None:
    """A daemon restarted a moment ago may still be importing: a SIGTERM before its handler is
    installed ends it with the default action (-15), which is the harness's timing, not a daemon
    that failed to stop.  Its handler is installed when SIGTERM is in its caught set (SigCgt)."""
    caught = 1 << (signal.SIGTERM - 1)
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            mask = int(proc_status(proc.pid, "SigCgt"), 16)
        except OSError:
            return
        if mask & caught:
            return
        time.sleep(0.05)
