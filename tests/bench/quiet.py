"""Was the machine quiet while a bench section ran?  Figures taken while other processes used the
CPUs measure the neighbours, not orchd (this machine is shared: stray test runs skewed earlier
figures by tens of percent), so each section records the load average and the CPU time of every
process that is not ours, and a section where others used more than a tenth of a core is marked
unreliable in the table and in latest.json.

"Ours" is this process and its descendants, counted as utime + stime + cutime + cstime of each
live one: when a child is reaped its whole time moves into its parent's cutime, so the sum stays
continuous however many short-lived processes (each run's `true`) come and go.  Processes that
leave the tree (the throwaway PostgreSQL that pg_ctl daemonizes) are added as extra roots.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

#: Other processes may use this many cores on average (CPU-seconds per second) for a section to
#: count as quiet: enough for the kernel's and an idle desktop's background, not for a test run.
QUIET_CORES = 0.10

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Snapshot:
    """The machine's busy CPU time, ours, and the load average at one instant."""

    at: float  #: time.monotonic()
    busy: float  #: CPU-seconds the whole machine spent not idle since boot
    ours: float  #: CPU-seconds of our process trees, including reaped children
    load: float  #: 1-minute load average


@dataclass(frozen=True)
class Section:
    """One bench section's quietness: load averages at its ends, other processes' CPU during it."""

    name: str
    backend: str
    seconds: float
    load_start: float
    load_end: float
    other_cpu: float  #: CPU-seconds of processes that are not ours

    @property
    def other_cores(self) -> float:
        """Other processes' average use, in cores."""
        return self.other_cpu / self.seconds if self.seconds > 0 else 0.0

    @property
    def quiet(self) -> bool:
        return self.other_cores <= QUIET_CORES

    def as_json(self) -> dict[str, object]:
        return {
            "section": self.name,
            "backend": self.backend,
            "seconds": round(self.seconds, 2),
            "load_start": self.load_start,
            "load_end": self.load_end,
            "other_cpu_seconds": round(self.other_cpu, 2),
            "other_cores": round(self.other_cores, 3),
            "quiet": self.quiet,
        }

    def line(self) -> str:
        verdict = "quiet" if self.quiet else "BUSY: its figures are unreliable"
        return (
            f"{self.name} on {self.backend}: {self.seconds:.1f}s, load {self.load_start:.2f} -> "
            f"{self.load_end:.2f}, other processes {self.other_cpu:.1f} CPU-s "
            f"({self.other_cores:.2f} cores): {verdict}"
        )


def busy_seconds() -> float:
    """All CPUs' non-idle time since boot (user nice system irq softirq steal; not idle, iowait)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    # guest time is already inside user and nice
    return (user + nice + system + irq + softirq + steal) / _TICK


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, utime + stime + cutime + cstime in seconds) of every process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone between the listing and the read
        table[int(entry.name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / _TICK)
    return table


def _tree_seconds(table: dict[int, tuple[int, float]], roots: Iterable[int]) -> float:
    children: dict[int, list[int]] = {}
    for pid, (parent, _cpu) in table.items():
        children.setdefault(parent, []).append(pid)
    total, seen, todo = 0.0, set(), [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo += children.get(pid, [])
    return total


def snapshot(extra_roots: Iterable[int] = ()) -> Snapshot:
    return Snapshot(
        time.monotonic(),
        busy_seconds(),
        _tree_seconds(_processes(), [os.getpid(), *extra_roots]),
        _load(),
    )


class Meter:
    """Measures sections; ``extra_roots`` gives the pids of our processes outside our tree."""

    def __init__(self, extra_roots: Callable[[], list[int]] = list) -> None:
        self.extra_roots = extra_roots
        self.sections: list[Section] = []

    def other_cores(self, seconds: float) -> float:
        """Other processes' use over the next ``seconds``, in cores."""
        before = snapshot(self.extra_roots())
        time.sleep(seconds)
        return _section("", "", before, snapshot(self.extra_roots())).other_cores

    def settle(self, timeout: float, window: float = 2.0) -> bool:
        """Wait up to ``timeout`` seconds for a quiet window; whether one came."""
        deadline = time.monotonic() + timeout
        while True:
            if self.other_cores(window) <= QUIET_CORES:
                return True
            if time.monotonic() >= deadline:
                return False

    def begin(self) -> Snapshot:
        return snapshot(self.extra_roots())

    def end(self, name: str, backend: str, before: Snapshot) -> Section:
        section = _section(name, backend, before, snapshot(self.extra_roots()))
        self.sections.append(section)
        return section


def _section(name: str, backend: str, before: Snapshot, after: Snapshot) -> Section:
    other = (after.busy - before.busy) - (after.ours - before.ours)
    return Section(name, backend, after.at - before.at, before.load, after.load, max(0.0, other))


def postmaster_pid(data_dir: Path | None) -> list[int]:
    """The throwaway PostgreSQL's postmaster (pg_ctl leaves it to init), if the bench started one."""
    if data_dir is None:
        return []
    try:
        return [int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])]
    except (FileNotFoundError, PermissionError, ValueError):
        return []
