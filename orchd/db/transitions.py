"""Applying the state machine (``orchd.states``) to the ``runs`` table: the only code that changes
``runs.state``, always with a history row in ``run_states`` in the same transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, update

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
