"""The chaos invariants (tests/chaos/checks.py) on made-up observations: a clean history passes, and
each kind of damage a crash could do is caught.  A check that never fires in a real chaos run
would otherwise look exactly like one that cannot fire."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from orchd.schedules import parse_schedule
from orchd.states import RunState
from tests.chaos.checks import Execution, Job, NotifyRule, Observed, check_all, notification_counts
from tests.chaos.fleet import Orphan

S = RunState
T0 = datetime(2026, 1, 1, tzinfo=UTC)
JOB = Job("j", "1s", 0.1, 0, retries=1, outcome=S.COMPLETED)
KEY = parse_schedule(JOB.schedule).key
WORKER = 100  # pid of the worker that ran everything


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def step(run_id: int, source: str | None, target: str, attempt: int, seconds: float, **kw: Any) -> Any:
    return SimpleNamespace(
        run_id=run_id,
        from_state=source,
        to_state=target,
        attempt=attempt,
        at=at(seconds),
        actor=kw.get("actor", f"host-{WORKER}"),
        reason=kw.get("reason"),
    )


def run_row(run_id: int, **kw: Any) -> Any:
    values = {
        "id": run_id,
        "deployment": "j",
        "schedule_key": KEY,
        "scheduled_for": at(run_id),
        "due_at": at(run_id),
        "state": "COMPLETED",
        "attempt": 1,
        "max_attempts": 2,
        "worker": None,
        "claimed_at": None,
        "lease_expires_at": None,
        "upstream_run_id": None,
    }
    return SimpleNamespace(**{**values, **kw})


def completed(run_id: int) -> list[Any]:
    t = float(run_id)
    return [
        step(run_id, None, "SCHEDULED", 1, t - 5),
        step(run_id, "SCHEDULED", "PENDING", 1, t),
        step(run_id, "PENDING", "RUNNING", 1, t + 0.01),
        step(run_id, "RUNNING", "COMPLETED", 1, t + 0.2),
    ]


def clean() -> Observed:
    """Runs 1..5 (one per fire time of the window), each executed once and COMPLETED."""
    ids = range(1, 6)
    return Observed(
        jobs=[JOB],
        runs=[run_row(i) for i in ids],
        history={i: completed(i) for i in ids},
        schedules=[SimpleNamespace(deployment="j", key=KEY, created_at=T0)],
        executions=[
            Execution(i, 1, 1000 + i, WORKER, at(i + 0.02).timestamp(), at(i + 0.12).timestamp(), "0")
            for i in ids
        ],
        worker_kills={},
        outages=[],
        window=(T0, at(6.5)),
        drained_at=at(8),
        lease=3.0,
        orphans=[],
    )


def checks(obs: Observed) -> list[str]:
    return sorted(v.check for v in check_all(obs))


def test_a_clean_history_passes() -> None:
    assert check_all(clean()) == []


def test_a_retry_started_before_the_killed_attempt_was_gone_is_an_overlap() -> None:
    obs = clean()
    kill = at(3.5).timestamp()
    history = {
        **obs.history,
        3: [
            *completed(3)[:3],
            step(3, "RUNNING", "CRASHED", 1, 7),
            step(3, "CRASHED", "SCHEDULED", 2, 7, reason="retry 2/2"),
            step(3, "SCHEDULED", "PENDING", 2, 8),
            step(3, "PENDING", "RUNNING", 2, 8.01),
            step(3, "RUNNING", "COMPLETED", 2, 8.2),
        ],
    }
    runs = [run_row(3, attempt=2) if r.id == 3 else r for r in obs.runs]
    killed = Execution(3, 1, 2000, 200, at(3.02).timestamp())  # no end line: died with worker 200
    retry = Execution(3, 2, 2001, WORKER, at(3.4).timestamp(), at(3.5).timestamp(), "0")
    executions = [e for e in obs.executions if e.run_id != 3] + [killed, retry]
    assert checks(
        replace(obs, runs=runs, history=history, executions=executions, worker_kills={200: kill})
    ) == ["overlap"]
    later = replace(retry, start=at(8.02).timestamp(), end=at(8.1).timestamp())
    executions[-1] = later
    assert (
        check_all(replace(obs, runs=runs, history=history, executions=executions, worker_kills={200: kill}))
        == []
    )


def test_lost_doubled_and_stray_fire_times() -> None:
    obs = clean()
    lost = [r for r in obs.runs if r.id != 4]
    assert checks(replace(obs, runs=lost, executions=[e for e in obs.executions if e.run_id != 4])) == [
        "skipped"
    ]
    assert "duplicate" in checks(replace(obs, runs=[*obs.runs, run_row(6, scheduled_for=at(2))]))
    stray = run_row(7, scheduled_for=at(2.5))
    assert "fire time" in checks(
        replace(obs, runs=[*obs.runs, stray], history={**obs.history, 7: completed(7)})
    )


def test_an_attempt_executed_more_often_than_claimed() -> None:
    obs = clean()
    again = Execution(2, 1, 3000, 300, at(2.5).timestamp(), at(2.6).timestamp(), "0")
    assert checks(replace(obs, executions=[*obs.executions, again])) == ["double execution"]


def test_stuck_runs_and_runs_left_behind() -> None:
    obs = clean()
    pending = run_row(5, state="PENDING", worker="host-100", claimed_at=at(5), lease_expires_at=at(30))
    history = {**obs.history, 5: completed(5)[:2]}
    executions = [e for e in obs.executions if e.run_id != 5]
    found = check_all(replace(obs, runs=[*obs.runs[:4], pending], history=history, executions=executions))
    assert [v.check for v in found] == ["stuck claim"] and "never started" in found[0].detail
    due = run_row(5, state="SCHEDULED")
    assert checks(replace(obs, runs=[*obs.runs[:4], due], history=history, executions=executions)) == [
        "left behind"
    ]


def test_retries_must_follow_the_policy() -> None:
    obs = clean()
    failed = run_row(2, state="FAILED")  # attempt 1 of 2: a retry was due
    history = {**obs.history, 2: [*completed(2)[:3], step(2, "RUNNING", "FAILED", 1, 2.2)]}
    found = checks(replace(obs, runs=[failed if r.id == 2 else r for r in obs.runs], history=history))
    assert found == ["outcome", "retries"]  # a command that exits 0 cannot FAIL, and none was retried


def test_a_process_outliving_its_killed_worker_while_the_retry_runs() -> None:
    obs = clean()
    orphan = Orphan(4000, 200, at(1.5).timestamp(), 1, 1, "sleep 30", died_at=at(30).timestamp())
    retry = Execution(1, 2, 4001, WORKER, at(6).timestamp(), at(6.1).timestamp(), "0")
    found = check_all(replace(obs, orphans=[orphan], executions=[*obs.executions, retry]))
    assert "orphan" in [v.check for v in found]
    assert any("executed twice at once" in v.detail for v in found)


def test_an_execution_never_recorded_running_unless_its_worker_had_no_chance() -> None:
    """Run 3 attempt 1 ran to its end but no RUNNING was ever recorded: its worker lived on and
    failed to record it, unless it was killed right after the spawn, or the database was down from
    the start until the worker was killed."""
    base = clean()
    history = {**base.history, 3: [h for h in base.history[3] if h.to_state not in ("RUNNING", "COMPLETED")]}
    damaged = replace(base, history=history)
    assert "unrecorded start" in checks(damaged)
    start = at(3.02).timestamp()
    assert "unrecorded start" not in checks(replace(damaged, worker_kills={WORKER: start + 0.2}))
    assert "unrecorded start" in checks(replace(damaged, worker_kills={WORKER: start + 60}))
    outage = replace(damaged, outages=[(start + 0.1, start + 10)], worker_kills={WORKER: start + 11})
    assert "unrecorded start" not in checks(outage)


def test_a_fenced_execution_ends_when_its_worker_records_it_not_when_the_worker_dies() -> None:
    """The guardian SIGKILLed run 3's child (no end line); its worker recorded CRASHED at 5 s and
    lived until 20 s.  Run 4 of a max_active_runs 1 deployment may start at 6 s."""
    serial = replace(JOB, overlap="skip")
    obs = replace(clean(), jobs=[serial])
    history = {
        **obs.history,
        3: [*completed(3)[:3], step(3, "RUNNING", "CRASHED", 1, 5, reason="fenced")],
    }
    runs = [run_row(3, state="CRASHED", max_attempts=1) if r.id == 3 else r for r in obs.runs]
    fenced = Execution(3, 1, 2000, WORKER, at(3.02).timestamp())
    executions = [e for e in obs.executions if e.run_id not in (3, 4)] + [
        fenced,
        Execution(4, 1, 2001, WORKER, at(6).timestamp(), at(6.1).timestamp(), "0"),
    ]
    fenced_obs = replace(
        obs, runs=runs, history=history, executions=executions, worker_kills={WORKER: at(20).timestamp()}
    )
    assert "overlap" not in checks(fenced_obs)
    history[3][-1] = step(3, "RUNNING", "CRASHED", 1, 5, actor="scheduler", reason="lease expired")
    assert "overlap" in checks(fenced_obs)  # the reaper's word is no proof the child was gone


def test_a_run_chain_fires_once_per_final_matching_end() -> None:
    """Job c runs after each COMPLETED run of j: runs 11..15 follow runs 1..5.  A link lost, a
    link doubled, and a link after an end no trigger names (a retried FAILED) are caught."""
    chained = Job("c", "", 0, 0, retries=1, outcome=S.COMPLETED, triggers=(("j", ("COMPLETED",)),))
    base = clean()
    links = [run_row(10 + i, deployment="c", schedule_key=None, upstream_run_id=i) for i in range(1, 6)]
    obs = replace(
        base,
        jobs=[JOB, chained],
        runs=[*base.runs, *links],
        history={**base.history, **{r.id: completed(r.id) for r in links}},
    )
    assert check_all(obs) == []
    assert checks(replace(obs, runs=[r for r in obs.runs if r.id != 13])) == ["trigger"]
    doubled = run_row(16, deployment="c", schedule_key=None, upstream_run_id=3)
    assert checks(replace(obs, runs=[*obs.runs, doubled], history={**obs.history, 16: completed(16)})) == [
        "trigger"
    ]
    failed = [run_row(2, state="FAILED", attempt=2) if r.id == 2 else r for r in obs.runs]
    found = check_all(replace(obs, runs=failed))
    assert "which no trigger names" in next(v.detail for v in found if v.check == "trigger")


def notified() -> Observed:
    """The clean history told to a rule on COMPLETED: one message per run, each received once."""
    base = clean()
    history = {
        rid: [SimpleNamespace(**vars(h), id=rid * 10 + i) for i, h in enumerate(steps)]
        for rid, steps in base.history.items()
    }
    outbox = [
        SimpleNamespace(
            id=rid,
            rule="r",
            event_key=f"state:{rid * 10 + 3}",
            channel="command",
            state="delivered",
            last_error=None,
        )
        for rid in history
    ]
    return replace(
        base,
        history=history,
        notify_rule=NotifyRule("r", frozenset({"COMPLETED"}), frozenset({"j"})),
        notifications=outbox,
        notified=[f"r.state:{rid * 10 + 3}.command" for rid in history],
    )


def test_notifications_lost_doubled_stray_or_repeated_outside_the_window() -> None:
    obs = notified()
    assert check_all(obs) == []
    assert checks(replace(obs, notifications=obs.notifications[1:])) == ["notification lost"]
    assert checks(replace(obs, notified=obs.notified[1:])) == ["notification lost"]
    doubled = SimpleNamespace(**{**vars(obs.notifications[0]), "id": 99, "channel": "command"})
    assert "notification doubled" in checks(replace(obs, notifications=[*obs.notifications, doubled]))
    stray = SimpleNamespace(**{**vars(obs.notifications[0]), "id": 98, "event_key": "state:12"})
    with_stray = replace(
        obs, notifications=[*obs.notifications, stray], notified=[*obs.notified, "r.state:12.command"]
    )
    assert checks(with_stray) == ["notification stray"]
    stuck = SimpleNamespace(**{**vars(obs.notifications[0]), "state": "pending"})
    assert checks(replace(obs, notifications=[stuck, *obs.notifications[1:]])) == ["notification undelivered"]
    repeated = replace(obs, notified=[*obs.notified, obs.notified[0]])
    assert checks(repeated) == ["notification repeated"]
    window = {1: [SimpleNamespace(error="outcome unknown: the scheduler stopped while sending")]}
    assert check_all(replace(repeated, notify_attempts=window)) == []
    # events after the cursor's end came once no scheduler ran: not expected
    assert (
        checks(replace(obs, notifications=obs.notifications[:-1], notified=obs.notified[:-1], notify_upto=50))
        == []
    )
    assert notification_counts(replace(repeated, notify_attempts=window)) == {
        "expected": 5,
        "queued": 5,
        "delivered": 5,
        "received": 6,
        "repeated": 1,
        "window": 1,
    }
