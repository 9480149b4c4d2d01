"""Shared plumbing for the benchmarks: databases, daemons as processes, statistics, reporting."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchd.config import Config, load_config
from orchd.db import migrate
from orchd.db.store import Store
from tests import helpers
from tests.bench.quiet import QUIET_CORES, Section
from tests.helpers import engine_for
from tests.pg import PgServer

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    """One measured figure: repeated samples, summarised as median and spread, against a target."""

    name: str
    backend: str
    unit: str
    samples: list[float]
    target: str = ""
    #: The figure meets its target when check(median) is true; None: no target.
    check: Callable[[float], bool] | None = field(default=None, repr=False)
    #: The section it was measured in, and whether the machine was quiet then (None: not measured).
    section: str = ""
    quiet: bool | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.samples), max(self.samples)

    @property
    def met(self) -> bool | None:
        return None if self.check is None else bool(self.check(self.median))

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("check")
        data.update(median=self.median, spread=list(self.spread), met=self.met)
        return data


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Databases:
    """Fresh migrated databases on demand: SQLite files in a temp dir, or PostgreSQL databases."""

    def __init__(self, tmp: Path, pg: PgServer | None) -> None:
        self.tmp, self.pg = tmp, pg
        self._created: list[str] = []
        self._count = 0

    def new(self, backend: str) -> str:
        self._count += 1
        if backend == "sqlite":
            url = f"sqlite:///{self.tmp / f'bench-{self._count}.db'}"
        else:
            assert self.pg is not None
            name = self.pg.create_database()
            self._created.append(name)
            url = self.pg.url_for(name)
        engine = engine_for(url)
        migrate.upgrade(engine)
        engine.dispose()
        return url

    def drop_all(self) -> None:
        if self.pg is not None:
            for name in self._created:
                self.pg.drop_database(name)


def store_for(url: str, actor: str = "bench") -> Store:
    return helpers.store_for(url, actor)


def write_config(path: Path, url: str, body: str) -> Config:
    """The test config, quieter (the bench prints a table), loaded."""
    helpers.write_config(path, url, '[logging]\nlevel = "warning"\n' + textwrap.dedent(body))
    return load_config(path, env={"ORCHD_STATE_DIR": str(path.parent / "state")})


@contextmanager
def daemons(log_dir: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def start(
    procs: list[subprocess.Popen[bytes]], log_dir: Path, command: str, *args: str
) -> subprocess.Popen[bytes]:
    log = open(log_dir / f"{command}-{len(procs)}.log", "wb")  # noqa: SIM115 (the child owns it)
    proc = subprocess.Popen(
        [str(BIN / command), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ORCHD_LOGGING_FORMAT": "logfmt"},
    )
    procs.append(proc)
    return proc


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid``'s threads, in nanoseconds from each thread's schedstat: /proc/PID/stat
    counts 10 ms clock ticks, and an idle daemon uses a few of them a minute (its figure was
    0.10 give or take 0.01, at a 0.1 target).  Threads that ended are not counted: for the idle
    figures it is used for, a daemon's threads live as long as it does."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    try:
        return int(helpers.proc_status(pid, key)) / 1024
    except KeyError:  # a zombie has no memory lines
        return float("nan")


def report(figures: list[Figure], sections: list[Section], path: Path) -> str:
    """The table, each figure taken on a busy machine marked, then the sections' load and other
    processes' CPU; the same in ``path`` as JSON."""
    lines = [f"{'figure':<46} {'backend':<10} {'median':>10} {'spread':>21}  {'unit':<8} {'target':<18} met"]
    for f in figures:
        low, high = f.spread
        met = {True: "met", False: "NOT MET", None: "-"}[f.met]
        busy = "  UNRELIABLE (busy machine)" if f.quiet is False else ""
        lines.append(
            f"{f.name:<46} {f.backend:<10} {f.median:>10.4g} {f'{low:.4g}..{high:.4g}':>21}  {f.unit:<8} "
            f"{f.target:<18} {met}{busy}"
        )
    lines.append(f"machine, per section (quiet: other processes used <= {QUIET_CORES} cores on average):")
    lines += [f"  {s.line()}" for s in sections]
    unreliable = sum(f.quiet is False for f in figures)
    if unreliable:
        lines.append(f"{unreliable} of {len(figures)} figures were taken on a busy machine: unreliable")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "quiet_cores": QUIET_CORES,
        "cpus": os.cpu_count(),
        "sections": [s.as_json() for s in sections],
        "figures": [f.as_json() for f in figures],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return "\n".join(lines)
