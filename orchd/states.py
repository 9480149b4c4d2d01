"""The run state machine: the only place that changes ``runs.state``.

Every transition is one guarded ``UPDATE runs ... WHERE id IN (...) AND state = <expected>``
plus a ``run_states`` row per run actually moved, in the caller's transaction.  Two actors racing
for the same run (a worker finishing it, the reaper crashing it, a user cancelling it) therefore
cannot both win: the loser's UPDATE matches no row, records nothing, and learns it lost from the
returned list.  A transition the machine does not allow is refused before any SQL is sent.

    SCHEDULED -> PENDING (claimed, leased) -> RUNNING -> COMPLETED | FAILED | TIMED_OUT | CRASHED
    SCHEDULED -> CANCELLED | MISSED          RUNNING -> CANCELLING -> CANCELLED
    PENDING -> FAILED                        (the command could not be started at all)
    PENDING | RUNNING -> SCHEDULED           (handed back by a stopping worker, attempt not charged)
    FAILED | TIMED_OUT | CRASHED -> SCHEDULED (retry: attempt + 1, due after a backoff)
    COMPLETED | CANCELLED | MISSED -> SCHEDULED (only by `orchd run retry`)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, insert, update

from orchd.db.schema import run_states, runs


class RunState(StrEnum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CRASHED = "CRASHED"
    CANCELLED = "CANCELLED"
    MISSED = "MISSED"


S = RunState
TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    S.SCHEDULED: frozenset({S.PENDING, S.CANCELLED, S.MISSED}),
    S.PENDING: frozenset({S.RUNNING, S.FAILED, S.SCHEDULED, S.CRASHED, S.CANCELLED}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CRASHED, S.CANCELLING, S.SCHEDULED}),
    S.CANCELLING: frozenset({S.CANCELLED, S.CRASHED}),
    S.FAILED: frozenset({S.SCHEDULED}),
    S.TIMED_OUT: frozenset({S.SCHEDULED}),
    S.CRASHED: frozenset({S.SCHEDULED}),
    # A finished run goes back to SCHEDULED only when a person asks (`orchd run retry`).
    S.COMPLETED: frozenset({S.SCHEDULED}),
    S.CANCELLED: frozenset({S.SCHEDULED}),
    S.MISSED: frozenset({S.SCHEDULED}),
}
#: States in which a worker holds the run under a lease.
ACTIVE: frozenset[RunState] = frozenset({S.PENDING, S.RUNNING, S.CANCELLING})
#: Outcomes that are retried while attempts remain.
RETRYABLE: frozenset[RunState] = frozenset({S.FAILED, S.TIMED_OUT, S.CRASHED})
#: States a run never leaves (FAILED/TIMED_OUT/CRASHED are final once no retry is left).
FINISHED: frozenset[RunState] = frozenset({S.COMPLETED, S.CANCELLED, S.MISSED}) | RETRYABLE


class IllegalTransition(ValueError):
    """A transition the state machine does not allow (a programming error, not a lost race)."""


def check(source: RunState, target: RunState) -> None:
    if target not in TRANSITIONS[source]:
        raise IllegalTransition(f"a run cannot go from {source} to {target}")


def transition(
    conn: Connection,
    run_ids: Sequence[int],
    source: RunState,
    target: RunState,
    *,
    now: datetime,
    actor: str,
    reason: str | None = None,
    values: Mapping[str, Any] | None = None,
) -> list[int]:
    """Move the runs among ``run_ids`` that are in ``source`` to ``target``; return those moved.

    ``values`` are extra columns set in the same UPDATE (may be SQL expressions, e.g.
    ``runs.c.attempt + 1``).  Runs not in ``source`` any more are left alone and not returned.
    """
    check(source, target)
    if not run_ids:
        return []
    stmt = (
        update(runs)
        .where(runs.c.id.in_(list(run_ids)), runs.c.state == source.value)
        .values(state=target.value, updated_at=now, **(values or {}))
        .returning(runs.c.id, runs.c.attempt)
    )
    moved = conn.execute(stmt).all()
    if moved:
        conn.execute(
            insert(run_states),
            [
                {
                    "run_id": row.id,
                    "from_state": source.value,
                    "to_state": target.value,
                    "attempt": row.attempt,
                    "at": now,
                    "actor": actor,
                    "reason": reason,
                }
                for row in moved
            ],
        )
    return [row.id for row in moved]


def record_created(
    conn: Connection, rows: Sequence[tuple[int, int]], *, now: datetime, actor: str, reason: str
) -> None:
    """History entry for runs just inserted as SCHEDULED: (run id, attempt) pairs."""
    if rows:
        conn.execute(
            insert(run_states),
            [
                {
                    "run_id": rid,
                    "from_state": None,
                    "to_state": S.SCHEDULED.value,
                    "attempt": attempt,
                    "at": now,
                    "actor": actor,
                    "reason": reason,
                }
                for rid, attempt in rows
            ],
        )
