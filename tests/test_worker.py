"""The worker in-process on both databases: outcomes, captured output, retries, timeouts, the
output cap, the run environment, and claims under contention (each run executed once)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event

from orchd.config import Config, load_config
from orchd.db.engine import make_engine
from orchd.db.store import Store
from orchd.observer import Observer
from orchd.worker.daemon import Ahead, Contention, Worker
from orchd.worker.process import Pumps
from tests.conftest import MakeConfig
from tests.helpers import claims_per_run, history, state_of, states_count, wait_for

NOW = datetime.now(UTC)


def _deploy(make_config: MakeConfig, store: Store, body: str) -> Config:
    config = make_config(body)
    store.sync(config, datetime.now(UTC))
    return config


def _burst(config: Config, store: Store, concurrency: int = 4, name: str = "w") -> None:
    Worker(config, store, ["default"], concurrency, name=name, burst=True).run(threading.Event())


def test_success_failure_and_captured_output(store: Store, make_config: MakeConfig) -> None:
    config = _deploy(
        make_config,
        store,
        """
    [[deployments]]
    name = "ok"
    command = ["sh", "-c", "echo hello; echo to-stderr >&2"]
    [[deployments]]
    name = "bad"
    command = ["sh", "-c", "echo partial; exit 3"]
    """,
    )
    ok, bad = store.create_run("ok", NOW), store.create_run("bad", NOW)
    _burst(config, store)
    ok_row, bad_row = store.get_run(ok), store.get_run(bad)
    assert ok_row is not None and bad_row is not None
    assert (ok_row.state, ok_row.exit_code) == ("COMPLETED", 0)
    assert (bad_row.state, bad_row.exit_code, bad_row.error) == ("FAILED", 3, "exit code 3")
    assert {(r.stream, r.line) for r in store.run_logs(ok)} == {("stdout", "hello"), ("stderr", "to-stderr")}
    assert [r.line for r in store.run_logs(bad)] == ["partial"]
    assert history(store, ok) == [
        (None, "SCHEDULED"),
        ("SCHEDULED", "PENDING"),
        ("PENDING", "RUNNING"),
        ("RUNNING", "COMPLETED"),
    ]


def test_a_command_that_cannot_start_fails_with_a_reason(store: Store, make_config: MakeConfig) -> None:
    config = _deploy(make_config, store, '[[deployments]]\nname = "x"\ncommand = ["/nonexistent/cmd"]\n')
    run_id = store.create_run("x", NOW)
    _burst(config, store)
    row = store.get_run(run_id)
    assert row is not None and row.state == "FAILED"
    assert "cannot start '/nonexistent/cmd'" in row.error


def test_retries_are_recorded_attempt_by_attempt(store: Store, make_config: MakeConfig) -> None:
    config = _deploy(
        make_config,
        store,
        """
    [[deployments]]
    name = "flaky"
    command = ["sh", "-c", "exit 1"]
    retries = 2
    retry_delay = "0s"
    """,
    )
    run_id = store.create_run("flaky", NOW)
    _burst(config, store)
    row = store.get_run(run_id)
    assert row is not None and (row.state, row.attempt, row.max_attempts) == ("FAILED", 3, 3)
    steps = history(store, run_id)
    assert steps.count(("RUNNING", "FAILED")) == 3
    assert steps.count(("FAILED", "SCHEDULED")) == 2
    assert [h.attempt for h in store.run_history(run_id) if h.to_state == "RUNNING"] == [1, 2, 3]


def test_timeout_kills_a_child_that_ignores_sigterm(store: Store, make_config: MakeConfig) -> None:
    config = _deploy(
        make_config,
        store,
        """
    [worker]
    kill_grace = "500ms"
    [[deployments]]
    name = "stuck"
    command = ["sh", "-c", "trap '' TERM; echo started; sleep 30 & wait; sleep 30"]
    timeout = "1s"
    """,
    )
    run_id = store.create_run("stuck", NOW)
    _burst(config, store)
    row = store.get_run(run_id)
    assert row is not None and row.state == "TIMED_OUT"
    assert row.error.startswith("timed out after")
    assert [r.line for r in store.run_logs(run_id)] == ["started"]


def test_output_is_capped_keeping_head_and_tail(store: Store, make_config: MakeConfig) -> None:
    script = (
        "i=0; while [ $i -lt 20000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done"
    )
    config = _deploy(
        make_config,
        store,
        f"""
    [worker]
    log_max_bytes = 20000
    [[deployments]]
    name = "chatty"
    command = ["sh", "-c", "{script}"]
    """,
    )
    run_id = store.create_run("chatty", NOW)
    _burst(config, store)
    lines = [r.line for r in store.run_logs(run_id)]
    assert lines[0].startswith("line-0-")
    assert lines[-1].startswith("line-19999-")
    assert sum(len(line) + 1 for line in lines) < 21000
    marker = [line for line in lines if line.startswith("[orchd:")]
    assert len(marker) == 1 and "dropped" in marker[0]


def test_run_environment(
    store: Store, make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHD_DATABASE_URL", "postgresql://user:secret@db/orchd")  # must not leak into runs
    (tmp_path / "wd").mkdir()  # a working_dir must exist: never created, so a typo is not hidden
    config = _deploy(
        make_config,
        store,
        f"""
    [[deployments]]
    name = "env"
    command = ["sh", "-c", "env | grep -E '^(ORCHD_|GREETING=)' | sort; pwd"]
    parameters = {{ size = 3 }}
    env = {{ GREETING = "hi" }}
    working_dir = "{tmp_path / "wd"}"
    """,
    )
    run_id = store.create_run("env", NOW, parameters={"color": "red"})
    _burst(config, store)
    out = dict(r.line.split("=", 1) for r in store.run_logs(run_id) if "=" in r.line)
    assert out["ORCHD_RUN_ID"] == str(run_id)
    assert out["ORCHD_DEPLOYMENT"] == "env"
    assert out["ORCHD_ATTEMPT"] == "1"
    assert datetime.fromisoformat(out["ORCHD_SCHEDULED_FOR"]).tzinfo is not None
    assert json.loads(out["ORCHD_PARAMETERS"]) == {"size": 3, "color": "red"}
    assert out["GREETING"] == "hi"
    assert "ORCHD_DATABASE_URL" not in out
    assert store.run_logs(run_id)[-1].line == str(tmp_path / "wd")


def test_claims_under_contention_execute_each_run_once(
    store: Store, make_config: MakeConfig, db_url: str
) -> None:
    config = _deploy(make_config, store, '[[deployments]]\nname = "t"\ncommand = ["true"]\n')
    ids = [store.create_run("t", NOW) for _ in range(120)]
    engines = [
        make_engine(load_config("/dev/null", env={"ORCHD_DATABASE_URL": db_url}).database) for _ in range(4)
    ]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            _burst(config, Store(engines[i], f"w{i}"), concurrency=4, name=f"w{i}")
        except BaseException as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert states_count(store) == {"COMPLETED": 120}
    assert claims_per_run(store) == dict.fromkeys(ids, 1)
    workers = {store.get_run(i).worker for i in ids}  # type: ignore[union-attr]
    assert len(workers) > 1
    for e in engines:
        e.dispose()


def test_retry_delays_grow_by_the_backoff(store: Store, make_config: MakeConfig) -> None:
    config = _deploy(
        make_config,
        store,
        """
    [[deployments]]
    name = "flaky"
    command = ["false"]
    retries = 2
    retry_delay = "300ms"
    retry_backoff = 3.0
    """,
    )
    run_id = store.create_run("flaky", NOW)
    _burst_until_done(config, store, run_id)
    retries = [h for h in store.run_history(run_id) if h.to_state == "SCHEDULED" and h.from_state]
    delays = [float(h.reason.split(" in ")[1].rstrip("s")) for h in retries]
    assert len(delays) == 2
    assert 0.2 <= delays[0] <= 0.4 and 0.8 <= delays[1] <= 1.0  # 0.3 s, then x3, +-10% jitter, 1 decimal
    starts = [h.at for h in store.run_history(run_id) if h.to_state == "RUNNING"]
    assert (starts[1] - starts[0]).total_seconds() >= 0.26
    assert (starts[2] - starts[1]).total_seconds() >= 0.8


def _burst_until_done(config: Config, store: Store, run_id: int) -> None:
    """Burst workers until the run is final: a burst worker leaves a retry that is not yet due."""
    deadline = datetime.now(UTC).timestamp() + 30
    while store.get_run(run_id).state not in ("COMPLETED", "FAILED"):  # type: ignore[union-attr]
        assert datetime.now(UTC).timestamp() < deadline, "the run did not finish"
        _burst(config, store)
        threading.Event().wait(0.05)


def test_a_worker_that_keeps_losing_the_race_for_due_runs_backs_off_at_random() -> None:
    """Contention: each claim that finds nothing although a run it knew of was due (others took
    it) holds the next claim at a due time back by a random while under a maximum that doubles
    up to 4 s; a claim that gets runs starts over; an empty claim that expected nothing (after a
    freed slot, a wake-up) changes nothing."""
    contention = Contention()
    contention.claimed(0, False, 100.0)
    assert contention.not_before == 0.0
    maxima = []
    for _ in range(8):
        contention.claimed(0, True, 100.0)
        maxima.append(contention.backoff.delay)
        assert 100.0 <= contention.not_before <= 100.0 + contention.backoff.delay
    assert maxima == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 4.0, 4.0]
    contention.claimed(3, False, 200.0)
    assert (contention.not_before, contention.backoff.delay) == (0.0, 0.0)


def test_a_run_due_by_the_last_claim_does_not_hide_the_runs_due_after_it(
    store: Store, make_config: MakeConfig
) -> None:
    """A run due by a worker's last claim that the claim did not give it (another worker's claim
    held it, or a limit is full) hid the runs due after it: the worker slept until its poll, past
    them, and in a fleet most runs started when a wake-up happened to come (seconds late)."""
    _deploy(make_config, store, '[[deployments]]\nname = "d"\ncommand = ["true"]\n')
    store.create_run("d", NOW, at=NOW)
    store.create_run("d", NOW, at=NOW + timedelta(seconds=5))
    assert store.next_due_at(["default"], after=NOW) == NOW + timedelta(seconds=5)
    assert store.next_due_at(["default"], after=NOW - timedelta(seconds=1)) == NOW
    assert store.next_due_at(["default"], after=NOW + timedelta(seconds=5)) is None


def test_a_run_claimed_ahead_of_its_due_time_starts_when_it_comes_due(
    store: Store, make_config: MakeConfig
) -> None:
    """A worker claims a run it knows of a claim's duration before it is due (Ahead), so the run
    is PENDING when it comes due, and starts then: never before, by the run's own clock.  The
    claims here start the most allowed ahead (20 ms), far more than the claim takes."""
    config = _deploy(make_config, store, '[[deployments]]\nname = "d"\ncommand = ["date", "+%s.%N"]\n')
    first = datetime.now(UTC) + timedelta(seconds=1)
    due = [first + timedelta(seconds=0.15 * i) for i in range(6)]
    ids = [store.create_run("d", NOW, at=at) for at in due]
    worker = Worker(config, store, ["default"], 4, name="w", _ahead=Ahead(claim=1.0))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: all(state_of(store, i) == "COMPLETED" for i in ids), 20)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    for run_id, at in zip(ids, due, strict=True):
        row = store.get_run(run_id)
        assert row is not None and row.started_at is not None
        began = datetime.fromtimestamp(float(store.run_logs(run_id)[0].line), UTC)
        assert began >= at, (
            f"run {run_id} began {(at - began).total_seconds() * 1000:.1f} ms before it was due"
        )
        assert row.started_at >= at


@dataclass
class Claims(Observer):
    """The runs each claim of a worker got, in order."""

    got: list[int] = field(default_factory=list)

    def claimed(self, runs: int, seconds: float) -> None:
        self.got.append(runs)


def test_a_claim_that_leaves_slots_free_is_not_followed_by_another_that_finds_nothing(
    store: Store, make_config: MakeConfig
) -> None:
    """A claim that got runs and left slots free took every due run it could see: the worker
    waits for the next known due time (or a wake-up) instead of claiming again at once, which
    found nothing and was a write transaction for each run a fleet starts (a hundred workers:
    a sixth of their claims)."""
    config = _deploy(make_config, store, '[[deployments]]\nname = "d"\ncommand = ["sleep", "1"]\n')
    at = datetime.now(UTC) + timedelta(seconds=0.5)
    ids = [store.create_run("d", NOW, at=at) for _ in range(3)]
    claims = Claims()
    worker = Worker(config, store, ["default"], 8, name="w", observer=claims)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: all(state_of(store, i) == "RUNNING" for i in ids), 10)
        time.sleep(0.3)  # a follow-up claim came within a few milliseconds
        during = list(claims.got)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert during[-1] == 3 and during.count(3) == 1, during


def test_the_runs_that_ended_well_are_recorded_in_the_claim_that_refills_their_slots(
    store: Store, make_config: MakeConfig
) -> None:
    """complete_and_claim: one transaction records a worker's plainly completed runs and claims
    new ones (the worker's loop does this whenever slots freed); a run the worker no longer
    holds is not recorded."""
    _deploy(make_config, store, '[[deployments]]\nname = "d"\ncommand = ["true"]\n')
    now = datetime.now(UTC)
    first = [store.create_run("d", now) for _ in range(3)]
    lease = now + timedelta(minutes=1)
    claimed = store.claim("w", ["default"], 3, now, lease)
    store.start_many({r.id: 1000 + r.id for r in claimed}, "w", now)
    store.cancel_run(first[2], now)  # no longer plainly RUNNING under w
    fresh = store.create_run("d", now)
    begins: list[object] = []
    count = begins.append
    event.listen(store.engine, "begin", count)
    try:
        done, claimed = store.complete_and_claim(first, "w", ["default"], 2, now, lease)
    finally:
        event.remove(store.engine, "begin", count)
    assert sorted(done) == first[:2]
    assert [r.id for r in claimed] == [fresh]
    assert len(begins) == 1
    assert [state_of(store, i) for i in (*first, fresh)] == [
        "COMPLETED",
        "COMPLETED",
        "CANCELLING",
        "PENDING",
    ]


def test_the_output_pumps_are_kept_from_run_to_run_and_a_run_never_waits_for_another() -> None:
    """Pumps: a job (a run's output pump) runs on an idle thread, or on a new one when all are
    busy: a run whose output never ends does not hold up the next run's; once idle, the threads
    serve the next runs instead of new ones (a thread per run cost each spawn a wait)."""
    pumps = Pumps()
    gate, ran = threading.Event(), []
    pumps.submit(lambda: (gate.wait(10), ran.append("long")))
    pumps.submit(lambda: ran.append("short"))
    wait_for(lambda: ran == ["short"], 5)
    gate.set()
    wait_for(lambda: sorted(ran) == ["long", "short"] and pumps._idle == 2, 5)
    for _ in range(10):
        done = threading.Event()
        pumps.submit(done.set)
        assert done.wait(5)
        wait_for(lambda: pumps._idle == 2, 5)
    assert pumps._started == 2
