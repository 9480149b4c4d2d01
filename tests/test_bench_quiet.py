"""The bench's busy-machine meter counts our own processes as ours, however short-lived, so only
other processes' CPU can mark a section unreliable."""

from __future__ import annotations

import subprocess
import sys

from tests.bench.quiet import QUIET_CORES, Section, snapshot

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"


def test_reaped_children_stay_ours() -> None:
    before = snapshot()
    subprocess.run([sys.executable, "-c", BURN], check=True, timeout=60)
    for _ in range(20):  # short-lived ones, as a worker's runs of `true`
        subprocess.run(["true"], check=True, timeout=60)
    after = snapshot()
    assert after.ours - before.ours >= 0.25
    assert after.busy - before.busy >= after.ours - before.ours - 0.05  # the machine's total holds ours


def test_busy_when_others_use_more_than_a_tenth_of_a_core() -> None:
    quiet = Section("latency", "sqlite", 10.0, 0.5, 0.6, other_cpu=QUIET_CORES * 10)
    busy = Section("latency", "sqlite", 10.0, 2.5, 3.0, other_cpu=QUIET_CORES * 10 + 0.5)
    assert quiet.quiet and not busy.quiet
    assert "unreliable" in busy.line() and busy.as_json()["quiet"] is False
