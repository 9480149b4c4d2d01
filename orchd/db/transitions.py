"""Runs entering the queue and moving through the state machine (``orchd.states``): the only code
that inserts runs or changes ``runs.state``, always with a history row in ``run_states`` in the
same transaction, so the history is complete and is the event stream notifications, triggers and
the web's live feed read.

Run chains (a deployment's ``triggers``) fire here too, in the transaction that records the
upstream run's end, whoever records it: its worker (COMPLETED, FAILED, TIMED_OUT, CANCELLED),
the scheduler's reaper (CRASHED), a misfire or an overlap skip (MISSED), a person (CANCELLED).
So a chain link is as durable as the end it follows: both are committed or neither is, a crash
in between cannot lose or double it, and a downstream run is due the moment the upstream's end
is visible.  A retryable end with a retry still to come is not an end: it fires nothing, the
retry's own end will.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    Select,
    and_,
    bindparam,
    insert,
    literal,
    not_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.dml import ReturningUpdate

from orchd.db import wake
from orchd.db.base import CHANNEL
from orchd.db.schema import deployments, run_states, runs, triggers
from orchd.models import DeploymentSpec
from orchd.states import FINISHED, RETRYABLE, RunState, check

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
    values = values or {}
    postgres = conn.dialect.name == "postgresql"  # there the move and its history are one statement
    params: dict[str, Any] = {"now": now, "actor": actor, "reason": reason}
    stmt: Any
    if any(isinstance(v, ClauseElement) for v in values.values()):  # built for this call
        held = () if holder is None else (runs.c.worker == holder,)
        stmt = (
            update(runs)
            .where(runs.c.id.in_(list(run_ids)), runs.c.state == source.value, *held)
            .values(state=target.value, updated_at=now, **values)
            .returning(runs.c.id, runs.c.attempt)
        )
        stmt = _recorded(stmt, source, target) if postgres else stmt
    else:  # the common case, a statement built once (see _moving)
        keys = tuple(sorted(values))
        params |= {"ids": list(run_ids), "holder": holder, **{f"v_{k}": v for k, v in values.items()}}
        stmt = (_moving_recorded if postgres else _moving)(source, target, holder is not None, keys)
    if postgres:
        ids = list(conn.execute(stmt, params).scalars())
    else:
        moved = conn.execute(stmt, params).all()
        ids = [row.id for row in moved]
        if moved:
            conn.execute(
                _HISTORY,
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
    if ids and target in FINISHED:
        fire_triggers(conn, ids, target, now=now, actor=actor)
    return ids


def retry_remains(deployment: FromClause = deployments) -> ColumnElement[bool]:
    """Whether a run (``runs``, joined to its ``deployment``) that ends retryable is retried: it has
    attempts left and its deployment is still in the config.  One rule for the retry itself
    (``queue.requeue_failed``) and for the triggers that must wait for the retry's end."""
    return and_(runs.c.attempt < runs.c.max_attempts, deployment.c.archived_at.is_(None))


def fire_triggers(
    conn: Connection, run_ids: Sequence[int], state: RunState, *, now: datetime, actor: str
) -> None:
    """Queue, in the caller's transaction, one run of each deployment whose ``triggers`` follow
    the runs ``run_ids`` that just ended in ``state`` for good; due now, carrying the upstream
    run's id.  The unique key (upstream run, downstream deployment) makes this idempotent: a
    run that ends again (retried by hand) queues nothing more.  A paused downstream deployment
    gets its run too, MISSED at once with the reason, so a chain's history has no holes; an
    archived one gets none (its triggers left with it)."""
    for match in conn.execute(_triggered(state), {"ids": list(run_ids)}).all():
        row = unscheduled_run(match, now, now, upstream_run_id=match.upstream_run_id)
        cause = f"run {match.upstream_run_id} of {match.upstream} ended {state.value}"
        created = insert_runs(conn, [row], now=now, actor=actor, reason=f"triggered: {cause}")
        if match.paused:
            transition(
                conn,
                created,
                S.SCHEDULED,
                S.MISSED,
                now=now,
                actor=actor,
                reason=f"deployment {match.name} is paused (triggered: {cause})",
                values={"finished_at": now},
            )


@lru_cache(maxsize=len(RunState))
def _triggered(state: RunState) -> Select[Any]:
    """fire_triggers' read (the runs as ``ids``), built once per state: it runs in every
    transition to a final state, and building its joins cost a tenth of a completed run."""
    upstream_dep = deployments.alias("upstream_deployment")
    stmt = (
        select(
            runs.c.id.label("upstream_run_id"),
            upstream_dep.c.name.label("upstream"),
            deployments.c.id,
            deployments.c.name,
            deployments.c.pool,
            deployments.c.priority,
            deployments.c.spec,
            deployments.c.paused,
        )
        .join(upstream_dep, upstream_dep.c.id == runs.c.deployment_id)
        .join(triggers, and_(triggers.c.upstream_id == runs.c.deployment_id, triggers.c.state == state.value))
        .join(deployments, deployments.c.id == triggers.c.downstream_id)
        .where(runs.c.id.in_(bindparam("ids", expanding=True)), deployments.c.archived_at.is_(None))
        .order_by(runs.c.id, deployments.c.id)
    )
    if state in RETRYABLE:
        stmt = stmt.where(not_(retry_remains(upstream_dep)))
    return stmt


#: Statements the queue runs thousands of times a second are built once: building one with
#: SQLAlchemy and computing its cache key cost more than running it (about 40% of a claim).
_HISTORY = insert(run_states)


@lru_cache(maxsize=128)
def _moving(source: RunState, target: RunState, held: bool, keys: tuple[str, ...]) -> ReturningUpdate[Any]:
    """transition's UPDATE for plain values of these ``keys`` (bound as ``v_<key>``), the run ids
    as ``ids``, the time as ``now``, the holder as ``holder`` when ``held``."""
    where = [runs.c.id.in_(bindparam("ids", expanding=True)), runs.c.state == source.value]
    if held:
        where.append(runs.c.worker == bindparam("holder", type_=runs.c.worker.type))
    sets = {key: bindparam(f"v_{key}", type_=runs.c[key].type) for key in keys}
    return (
        update(runs)
        .where(*where)
        .values(state=target.value, updated_at=bindparam("now", type_=runs.c.updated_at.type), **sets)
        .returning(runs.c.id, runs.c.attempt)
    )


@lru_cache(maxsize=128)
def _moving_recorded(source: RunState, target: RunState, held: bool, keys: tuple[str, ...]) -> Any:
    """_moving and its history rows in one PostgreSQL statement (_recorded), built once."""
    return _recorded(_moving(source, target, held, keys), source, target)


def _recorded(moving: ReturningUpdate[Any], source: RunState, target: RunState) -> Any:
    """``moving`` and the history rows of the runs it moved, in one PostgreSQL statement (a CTE:
    the UPDATE's RETURNING feeds the INSERT), bound as ``moving`` plus ``now``, ``actor`` and
    ``reason``; returns the ids moved.  A transition is a statement fewer, and the history of a
    batch is one INSERT instead of a row each (a claim's and a start's round trips fewer by a
    third)."""
    moved = moving.cte("moved")
    history = select(
        moved.c.id,
        literal(source.value, run_states.c.from_state.type),
        literal(target.value, run_states.c.to_state.type),
        moved.c.attempt,
        bindparam("now", type_=run_states.c.at.type),
        bindparam("actor", type_=run_states.c.actor.type),
        bindparam("reason", type_=run_states.c.reason.type),
    )
    columns = ["run_id", "from_state", "to_state", "attempt", "at", "actor", "reason"]
    return insert(run_states).from_select(columns, history).returning(run_states.c.run_id)


def record_created(
    conn: Connection, rows: Sequence[tuple[int, int]], *, now: datetime, actor: str, reason: str
) -> None:
    """History entry for runs just inserted as SCHEDULED: (run id, attempt) pairs."""
    if rows:
        conn.execute(
            _HISTORY,
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
    upstream_run_id: int | None = None,
) -> dict[str, Any]:
    """The row of a run entering the queue: SCHEDULED, first attempt.  Runs of a schedule carry its
    id and key (the key is part of their unique key, so a fire time is never queued twice), a
    triggered run its upstream run (one per upstream run and deployment); an ad-hoc run has
    none of them, so nothing absorbs it as a repeat."""
    return {
        "deployment_id": deployment_id,
        "schedule_id": schedule_id,
        "schedule_key": schedule_key,
        "upstream_run_id": upstream_run_id,
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


def unscheduled_run(
    deployment: Any,
    when: datetime,
    now: datetime,
    *,
    parameters: Mapping[str, Any] | None = None,
    upstream_run_id: int | None = None,
) -> dict[str, Any]:
    """The row of a run of no schedule (ad hoc, or triggered by ``upstream_run_id``) of
    ``deployment`` (its row: id, pool, priority, spec) due at ``when``: the deployment's attempts,
    its parameters updated by ``parameters``."""
    spec = DeploymentSpec.from_json(deployment.spec)
    return new_run(
        deployment_id=deployment.id,
        pool=deployment.pool,
        priority=deployment.priority,
        max_attempts=spec.max_attempts,
        parameters=spec.run_parameters(parameters),
        scheduled_for=when,
        due_at=when,
        now=now,
        upstream_run_id=upstream_run_id,
    )


def insert_runs(
    conn: Connection, rows: Sequence[Mapping[str, Any]], *, now: datetime, actor: str, reason: str
) -> list[int]:
    """Queue new runs (``new_run`` rows) in the caller's transaction; return the ids of those
    inserted.  The one way a run comes into being, so each has its creation in ``run_states``
    and the workers of its pool are woken (PostgreSQL).  A row whose (deployment, schedule key,
    scheduled_for) already exists is skipped without error: repeats of a tick, a restarted or a
    second scheduler, a backfill over scheduled times all leave one run per fire time; so is a
    triggered run whose (upstream run, deployment) exists."""
    if not rows:
        return []
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(runs).on_conflict_do_nothing().returning(runs.c.id, runs.c.attempt)
    inserted = [(r.id, r.attempt) for r in conn.execute(stmt, list(rows))]
    record_created(conn, inserted, now=now, actor=actor, reason=reason)
    if inserted:
        notify(conn, ((row["pool"], row["due_at"]) for row in rows), now)
    return [run_id for run_id, _ in inserted]


def notify(conn: Connection, queued: Iterable[tuple[str, datetime]], now: datetime) -> None:
    """Wake the workers of the pools runs were queued in, (pool, due_at) each, when the
    transaction commits, so a woken worker finds the run: NOTIFY on PostgreSQL, a datagram to
    each worker's socket on SQLite (``orchd.db.wake``).

    A NOTIFY says when the pool's earliest queued run comes due if that is after ``now``
    (``wake.payload``): its workers set their timer instead of claiming at once.  A scheduler
    materializes runs ahead, so nearly every tick queues runs due later, and each tick woke every
    idle worker of the fleet into an empty claim and a look for the next due time (a hundred
    workers: two hundred transactions a second for nothing)."""
    earliest: dict[str, datetime] = {}
    for pool, due_at in queued:
        earliest[pool] = min(due_at, earliest.get(pool, due_at))
    if conn.dialect.name != "postgresql":
        wake.later(conn, earliest)
        return
    for pool in sorted(earliest):
        message = wake.payload(pool, earliest[pool], now)
        conn.execute(text("SELECT pg_notify(:channel, :pool)"), {"channel": CHANNEL, "pool": message})
