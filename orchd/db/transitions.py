"""Runs entering the queue and moving through the state machine (``orchd.states``): the only code
that inserts runs or changes ``runs.state``, always with a history row in ``run_states`` in the
same transaction, so the history is complete and is the event stream notifications, triggers and
the web's live feed read."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, text, update
from sqlalchemy.dialects import postgresql, sqlite

from orchd.db import wake
from orchd.db.base import CHANNEL
from orchd.db.schema import run_states, runs
from orchd.states import RunState, check

S = RunState


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
    holder: str | None = None,
) -> list[int]:
    """Move the runs among ``run_ids`` that are in ``source`` to ``target``; return those moved.

    ``values`` are extra columns set in the same UPDATE (may be SQL expressions, e.g.
    ``runs.c.attempt + 1``).  Runs not in ``source`` any more are left alone and not returned.
    ``holder``: only runs this worker holds move.  A worker's own moves pass it: a worker cut off
    from the database past its lease finds, when it comes back, its run reaped and retried, and
    maybe RUNNING again on another worker: the state alone would let it record its outcome on
    the retry.
    """
    check(source, target)
    if not run_ids:
        return []
    held = () if holder is None else (runs.c.worker == holder,)
    stmt = (
        update(runs)
        .where(runs.c.id.in_(list(run_ids)), runs.c.state == source.value, *held)
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


#: Columns cleared when a run goes back to SCHEDULED (retry, hand-back, manual retry).
BACK_TO_QUEUE: Mapping[str, Any] = {
    "worker": None,
    "pid": None,
    "claimed_at": None,
    "started_at": None,
    "lease_expires_at": None,
}


def new_run(
    *,
    deployment_id: int,
    pool: str,
    priority: int,
    max_attempts: int,
    parameters: Mapping[str, Any],
    scheduled_for: datetime,
    due_at: datetime,
    now: datetime,
    schedule_id: int | None = None,
    schedule_key: str | None = None,
) -> dict[str, Any]:
    """The row of a run entering the queue: SCHEDULED, first attempt.  Runs of a schedule carry its
    id and key (the key is part of their unique key, so a fire time is never queued twice); an
    ad-hoc run has neither, so nothing absorbs it as a repeat."""
    return {
        "deployment_id": deployment_id,
        "schedule_id": schedule_id,
        "schedule_key": schedule_key,
        "pool": pool,
        "state": S.SCHEDULED.value,
        "priority": priority,
        "scheduled_for": scheduled_for,
        "due_at": due_at,
        "attempt": 1,
        "max_attempts": max_attempts,
        "parameters": dict(parameters),
        "created_at": now,
        "updated_at": now,
    }


def insert_runs(
    conn: Connection, rows: Sequence[Mapping[str, Any]], *, now: datetime, actor: str, reason: str
) -> list[int]:
    """Queue new runs (``new_run`` rows) in the caller's transaction; return the ids of those
    inserted.  The one way a run comes into being, so each has its creation in ``run_states``
    and the workers of its pool are woken (PostgreSQL).  A row whose (deployment, schedule key,
    scheduled_for) already exists is skipped without error: repeats of a tick, a restarted or a
    second scheduler, a backfill over scheduled times all leave one run per fire time."""
    if not rows:
        return []
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(runs).on_conflict_do_nothing().returning(runs.c.id, runs.c.attempt)
    inserted = [(r.id, r.attempt) for r in conn.execute(stmt, list(rows))]
    record_created(conn, inserted, now=now, actor=actor, reason=reason)
    if inserted:
        notify(conn, (row["pool"] for row in rows))
    return [run_id for run_id, _ in inserted]


def notify(conn: Connection, pool_names: Iterable[str]) -> None:
    """Wake the workers of these pools when the transaction commits, so a woken worker finds the
    run: NOTIFY on PostgreSQL, a datagram to each worker's socket on SQLite (``orchd.db.wake``)."""
    if conn.dialect.name != "postgresql":
        wake.later(conn, pool_names)
        return
    for pool in sorted(set(pool_names)):
        conn.execute(text("SELECT pg_notify(:channel, :pool)"), {"channel": CHANNEL, "pool": pool})
