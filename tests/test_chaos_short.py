"""A short chaos run: 60 s of schedulers and workers SIGKILLed at random and one PostgreSQL restart,
then every invariant of tests/chaos/checks.py checked from the database and the runs' ledger.

`make chaos` runs the same harness for five minutes.  The run takes about 90 s of wall time; its
own deadlines (drain, process stops) keep it well inside the timeout below, and it stops every
process it started and drops its database however it ends.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.harness import Settings, run

pytestmark = pytest.mark.slow


@pytest.mark.timeout(400)
def test_short_chaos_run_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    summary = run(Settings(seconds=60, results=tmp_path / "chaos.json", drain_stall=60))
    report = summary.render()
    print(report)
    assert summary.kills.get("worker") and summary.kills.get("scheduler"), report
    assert summary.runs_by_state.get("COMPLETED") and summary.runs_by_state.get("FAILED"), report
    assert not summary.violations, report
    if summary.runs_by_deployment.get("boxed") is not None or os.environ.get("CI"):  # podman here
        assert summary.runs_by_deployment["boxed"].get("COMPLETED"), report
