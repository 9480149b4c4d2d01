"""The state machine: allowed transitions recorded, illegal ones refused untouched, races won once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from orchd.config import load_config
from orchd.db.engine import make_engine
from orchd.db.schema import run_states, runs
from orchd.db.store import Store
from orchd.db.transitions import transition
from orchd.errors import OrchdError
from orchd.states import TRANSITIONS, IllegalTransition, RunState
from tests.conftest import MakeConfig

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ALL = list(RunState)


def _run_in(store: Store, make_config: MakeConfig, state: RunState) -> int:
    store.sync(make_config('[[deployments]]\nname = "job"\ncommand = ["true"]\n'), NOW)
    run_id = store.create_run("job", NOW)
    with store.engine.begin() as conn:
        conn.execute(runs.update().where(runs.c.id == run_id).values(state=state.value))
    return run_id


def _history_len(store: Store, run_id: int) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).where(run_states.c.run_id == run_id)).scalar_one())


@pytest.mark.parametrize("source", ALL)
def test_every_allowed_transition_is_applied_and_recorded(
    store: Store, make_config: MakeConfig, source: RunState
) -> None:
    for target in sorted(TRANSITIONS[source]):
        run_id = _run_in(store, make_config, source)
        before = _history_len(store, run_id)
        with store.engine.begin() as conn:
            moved = transition(conn, [run_id], source, target, now=NOW, actor="t", reason="because")
        assert moved == [run_id]
        assert _history_len(store, run_id) == before + 1
        last = store.run_history(run_id)[-1]
        assert (last.from_state, last.to_state, last.actor, last.reason) == (source, target, "t", "because")


@pytest.mark.parametrize("source", ALL)
def test_illegal_transitions_are_refused_and_change_nothing(
    store: Store, make_config: MakeConfig, source: RunState
) -> None:
    run_id = _run_in(store, make_config, source)
    before = _history_len(store, run_id)
    for target in set(ALL) - TRANSITIONS[source]:
        with store.engine.begin() as conn, pytest.raises(IllegalTransition):
            transition(conn, [run_id], source, target, now=NOW, actor="t")
    with store.read() as conn:
        assert conn.execute(select(runs.c.state).where(runs.c.id == run_id)).scalar_one() == source
    assert _history_len(store, run_id) == before


def test_a_guard_that_does_not_match_moves_nothing(store: Store, make_config: MakeConfig) -> None:
    run_id = _run_in(store, make_config, RunState.COMPLETED)
    before = _history_len(store, run_id)
    with store.engine.begin() as conn:
        assert transition(conn, [run_id], RunState.RUNNING, RunState.FAILED, now=NOW, actor="t") == []
    assert _history_len(store, run_id) == before


@pytest.mark.parametrize("source", ALL)
def test_a_cancel_stops_what_waits_or_runs_and_nothing_else(
    store: Store, make_config: MakeConfig, source: RunState
) -> None:
    """Waiting runs are CANCELLED, a running one CANCELLING (its worker stops it); a finished run,
    or one being cancelled already, is refused untouched."""
    run_id = _run_in(store, make_config, source)
    expected = {
        RunState.SCHEDULED: "CANCELLED",
        RunState.PENDING: "CANCELLED",
        RunState.RUNNING: "CANCELLING",
    }
    if source in expected:
        assert store.cancel_run(run_id, NOW) == expected[source]
        return
    before = _history_len(store, run_id)
    with pytest.raises(OrchdError, match=f"run {run_id} is {source}: nothing to cancel"):
        store.cancel_run(run_id, NOW)
    assert _history_len(store, run_id) == before


def test_racing_actors_only_one_wins(store: Store, make_config: MakeConfig, db_url: str) -> None:
    """Eight connections try to claim the same run at once: exactly one succeeds."""
    run_id = _run_in(store, make_config, RunState.SCHEDULED)
    engines = [
        make_engine(load_config("/dev/null", env={"ORCHD_DATABASE_URL": db_url}).database) for _ in range(8)
    ]
    start = threading.Barrier(len(engines))
    won: list[list[int]] = []

    def attempt(engine) -> None:  # type: ignore[no-untyped-def]
        start.wait(timeout=10)
        with engine.begin() as conn:
            won.append(transition(conn, [run_id], RunState.SCHEDULED, RunState.PENDING, now=NOW, actor="w"))

    threads = [threading.Thread(target=attempt, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(won) == [[]] * 7 + [[run_id]]
    assert [h.to_state for h in store.run_history(run_id)].count("PENDING") == 1
    for e in engines:
        e.dispose()
