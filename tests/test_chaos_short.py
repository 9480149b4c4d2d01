"""A short chaos run: 60 s of schedulers and workers SIGKILLed at random and one PostgreSQL restart,
then every invariant of tests/chaos/checks.py checked from the database and the runs' ledger.

`make chaos` runs the same harness for five minutes.  The run takes about 90 s of wall time; its
own deadlines (drain, process stops) keep it well inside the timeout below, and it stops every
process it started and drops its database however it ends.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import Settings, run

pytestmark = pytest.mark.slow

#: Violations that orchd bugs found by this harness cause, until they are fixed: the test still
#: fails on anything else, and reports these as an expected failure with the evidence.
KNOWN_BUGS = {
    "orphan": "a run's grandchildren outlive a SIGKILLed worker (PR_SET_PDEATHSIG reaches only the "
    "direct child; nothing kills the rest of its process group), so they run alongside the retry",
    "stuck claim": "a claim whose start could not be recorded (database gone between claim and start) "
    "stays PENDING forever: the claiming worker's heartbeat extends every lease with its name",
    "unrecorded start": "same cause: the command ran while the run stayed PENDING, so its outcome was "
    "never recorded",
}


@pytest.mark.timeout(400)
def test_short_chaos_run_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    summary = run(Settings(seconds=60, results=tmp_path / "chaos.json", drain_timeout=60))
    report = summary.render()
    print(report)
    assert summary.kills.get("worker") and summary.kills.get("scheduler"), report
    assert summary.runs_by_state.get("COMPLETED") and summary.runs_by_state.get("FAILED"), report
    unknown = [v for v in summary.violations if v.check not in KNOWN_BUGS]
    assert not unknown, report
    known = sorted({v.check for v in summary.violations})
    if known:
        pytest.xfail("known orchd bugs: " + "; ".join(f"[{k}] {KNOWN_BUGS[k]}" for k in known))
