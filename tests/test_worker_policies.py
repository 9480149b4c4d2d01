"""Limits and policies on both databases: pool concurrency limits and max_active_runs under
racing workers, overlap skip / queue / cancel_previous, cancellation, entrypoint runs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from orchd.config import Config, load_config
from orchd.db.engine import make_engine
from orchd.db.store import Store
from orchd.states import RunState
from orchd.worker.daemon import Worker
from tests.conftest import MakeConfig
from tests.helpers import history, states_count, wait_for


def _now() -> datetime:
    return datetime.now(UTC)


def _max_overlap(ledger: Path) -> int:
    """Most runs alive at once, from the start/end lines the runs wrote themselves."""
    events = []
    for line in ledger.read_text().split("\n"):
        if line:
            kind, stamp = line.split()
            events.append((float(stamp), 1 if kind == "start" else -1))
    alive = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        alive += delta
        peak = max(peak, alive)
    return peak


def _race(config: Config, db_url: str, workers: int, concurrency: int) -> None:
    engines = [
        make_engine(load_config("/dev/null", env={"ORCHD_DATABASE_URL": db_url}).database)
        for _ in range(workers)
    ]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            Worker(
                config, Store(engines[i], f"w{i}"), ["default"], concurrency, name=f"w{i}", burst=True
            ).run(threading.Event())
        except BaseException as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert errors == []
    for e in engines:
        e.dispose()


LEDGER_CMD = 'echo "start $(date +%s.%N)" >> {ledger}; sleep 0.2; echo "end $(date +%s.%N)" >> {ledger}'


def test_pool_limit_holds_across_racing_workers(
    store: Store, make_config: MakeConfig, db_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    config = make_config(f"""
    [[pools]]
    name = "default"
    concurrency_limit = 2
    [[deployments]]
    name = "a"
    command = ["sh", "-c", '{LEDGER_CMD.format(ledger=ledger)}']
    [[deployments]]
    name = "b"
    command = ["sh", "-c", '{LEDGER_CMD.format(ledger=ledger)}']
    """)
    store.sync(config, _now())
    for i in range(16):
        store.create_run("ab"[i % 2], _now())
    _race(config, db_url, workers=4, concurrency=4)
    assert states_count(store) == {"COMPLETED": 16}
    assert _max_overlap(ledger) == 2


def test_max_active_runs_holds_across_racing_workers(
    store: Store, make_config: MakeConfig, db_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    config = make_config(f"""
    [[deployments]]
    name = "one-at-a-time"
    max_active_runs = 1
    overlap = "queue"
    command = ["sh", "-c", '{LEDGER_CMD.format(ledger=ledger)}']
    """)
    store.sync(config, _now())
    for _ in range(6):
        store.create_run("one-at-a-time", _now())
    _race(config, db_url, workers=4, concurrency=4)
    assert states_count(store) == {"COMPLETED": 6}
    assert _max_overlap(ledger) == 1


def test_overlap_skip_records_the_skipped_run(store: Store, make_config: MakeConfig) -> None:
    config = make_config("""
    [[deployments]]
    name = "solo"
    overlap = "skip"
    command = ["sleep", "0.5"]
    """)
    store.sync(config, _now())
    first, second = store.create_run("solo", _now()), store.create_run("solo", _now())
    Worker(config, store, ["default"], 4, name="w", burst=True).run(threading.Event())
    states = {first: store.get_run(first).state, second: store.get_run(second).state}  # type: ignore[union-attr]
    assert sorted(states.values()) == ["COMPLETED", "MISSED"]
    missed = next(rid for rid, state in states.items() if state == "MISSED")
    assert "overlap = skip" in (store.run_history(missed)[-1].reason or "")


def test_overlap_cancel_previous_replaces_the_running_one(
    store: Store, make_config: MakeConfig, worker_store: Store
) -> None:
    config = make_config("""
    [worker]
    shutdown_grace = "1s"
    kill_grace = "1s"
    [[deployments]]
    name = "latest-wins"
    overlap = "cancel_previous"
    command = ["sleep", "30"]
    """)
    store.sync(config, _now())
    old = store.create_run("latest-wins", _now())
    stop = threading.Event()
    worker = Worker(config, worker_store, ["default"], 4, name="w")
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: store.get_run(old).state == "RUNNING", what="the first run")  # type: ignore[union-attr]
        new = store.create_run("latest-wins", _now())
        wait_for(lambda: store.get_run(new).state == "RUNNING", timeout=15, what="the new run")  # type: ignore[union-attr]
        assert store.get_run(old).state == "CANCELLED"  # type: ignore[union-attr]
        assert ("CANCELLING", "CANCELLED") in history(store, old)
    finally:
        stop.set()
        thread.join(timeout=30)


def test_cancel_a_running_run_kills_it_quickly(
    store: Store, make_config: MakeConfig, worker_store: Store
) -> None:
    config = make_config("""
    [worker]
    shutdown_grace = "1s"
    kill_grace = "1s"
    [[deployments]]
    name = "long"
    command = ["sh", "-c", "trap '' TERM; sleep 60 & wait; sleep 60"]
    """)
    store.sync(config, _now())
    run_id = store.create_run("long", _now())
    waiting = store.create_run("long", _now() + timedelta(hours=1))
    stop = threading.Event()
    thread = threading.Thread(target=Worker(config, worker_store, ["default"], 4, name="w").run, args=(stop,))
    thread.start()
    try:
        row = wait_for(lambda: (r := store.get_run(run_id)) and r.state == "RUNNING" and r, what="RUNNING")
        assert store.cancel_run(waiting, _now()) == RunState.CANCELLED  # a waiting run: at once
        assert store.cancel_run(run_id, _now()) == RunState.CANCELLING
        # its process ignores SIGTERM: CANCELLED means the SIGKILL after the grace came (about two
        # seconds on a quiet machine; a figure, not a pass/fail: the wait is only a hang guard)
        wait_for(lambda: store.get_run(run_id).state == "CANCELLED", timeout=60, what="CANCELLED")  # type: ignore[union-attr]
        steps = store.run_history(run_id)
        assert [(s.from_state, s.to_state) for s in steps[-2:]] == [
            ("RUNNING", "CANCELLING"),
            ("CANCELLING", "CANCELLED"),
        ]
        print(f"\ncancelled {(steps[-1].at - steps[-2].at).total_seconds():.2f}s after the request")
        assert row.pid
    finally:
        stop.set()
        thread.join(timeout=30)
    assert store.get_run(waiting).state == "CANCELLED"  # type: ignore[union-attr]


def test_retry_a_finished_run_by_hand(store: Store, make_config: MakeConfig) -> None:
    config = make_config('[[deployments]]\nname = "x"\ncommand = ["true"]\n')
    store.sync(config, _now())
    run_id = store.create_run("x", _now())
    Worker(config, store, ["default"], 1, name="w", burst=True).run(threading.Event())
    assert store.retry_run(run_id, _now()) == 2
    Worker(config, store, ["default"], 1, name="w", burst=True).run(threading.Event())
    row = store.get_run(run_id)
    assert row is not None and (row.state, row.attempt, row.max_attempts) == ("COMPLETED", 2, 2)


def test_entrypoint_result_and_exception(store: Store, make_config: MakeConfig, tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "tasks.py").write_text(
        "def add(a, b):\n    print('adding')\n    return {'sum': a + b}\n\n"
        "def boom(**_):\n    raise RuntimeError('kaput')\n"
    )
    config = make_config(f"""
    [[deployments]]
    name = "add"
    entrypoint = "tasks:add"
    working_dir = "{tmp_path / "jobs"}"
    parameters = {{ a = 2, b = 3 }}
    [[deployments]]
    name = "boom"
    entrypoint = "tasks:boom"
    working_dir = "{tmp_path / "jobs"}"
    """)
    store.sync(config, _now())
    ok, bad = store.create_run("add", _now()), store.create_run("boom", _now(), parameters={"x": 1})
    Worker(config, store, ["default"], 2, name="w", burst=True).run(threading.Event())
    good = store.get_run(ok)
    assert good is not None and (good.state, good.result) == ("COMPLETED", {"sum": 5})
    assert [r.line for r in store.run_logs(ok)] == ["adding"]
    failed = store.get_run(bad)
    assert failed is not None and failed.state == "FAILED" and failed.result is None
    assert (failed.error, failed.exit_code) == ("RuntimeError: kaput", 1)  # not just "exit code 1"
    output = "\n".join(r.line for r in store.run_logs(bad))
    assert "Traceback" in output and "RuntimeError: kaput" in output
