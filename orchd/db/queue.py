"""The work queue as the workers use it: claim due runs, start and finish them, keep their leases,
hand them back, store their output, and notice wake-ups.

Contract (what a worker may rely on, whatever races and restarts happen around it)
---------------------------------------------------------------------------------
* A run is handed out by ``claim`` to one worker at a time, for one attempt: the claim and the
  PENDING state it writes are one transaction, and claimers skip rows another claimer holds.
* A claimed run is held under a lease.  ``heartbeat`` extends the leases of the runs the worker
  names; a run whose lease expires (its worker died, hung, or lost the database for longer than
  the lease) is CRASHED by the scheduler's upkeep and retried if attempts remain.  A worker that
  learns from ``heartbeat`` or ``start_many`` that a run is no longer its own must stop it.
* Every write about a run (start, finish, release) is a guarded transition: it happens only if
  the run is still in the state the writer expects, so a late writer (a worker whose run was
  reaped or cancelled meanwhile) changes nothing and learns so from the return value.
* A retryable outcome with attempts left is sent back to SCHEDULED in the same transaction that
  records it, due after the deployment's backoff: a run is never left FAILED with a retry owed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    Row,
    Select,
    Text,
    bindparam,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    update,
)

from orchd import __version__
from orchd.db.base import Access, chunks
from orchd.db.schema import RUNS_ACTIVE, deployments, pools, run_logs, runs, workers
from orchd.db.transitions import BACK_TO_QUEUE, notify, retry_remains, transition
from orchd.models import ClaimedRun, DeploymentSpec, Heartbeat, Upstream
from orchd.policy import Candidate, admit, candidates_for, only_waiting, retry_due
from orchd.states import ACTIVE, RETRYABLE, RunState

S = RunState


class Queue(Access):
    #: SQLite's PRAGMA data_version when ``changed`` last looked.
    _data_version = -1

    def register_worker(
        self, name: str, host: str, pid: int, pool_names: Sequence[str], concurrency: int, now: datetime
    ) -> None:
        """Record a worker as online (creating its pools if they are new).  A worker restarted under
        the same name takes over its row; runs its predecessor held are not given back to it: they
        expire and are reaped, since only the process that spawned a run can vouch for it."""
        values = {
            "host": host,
            "pid": pid,
            "pools": list(pool_names),
            "concurrency": concurrency,
            "running": 0,
            "version": __version__,
            "status": "online",
            "started_at": now,
            "last_heartbeat": now,
        }
        with self.write() as conn:
            conn.execute(
                self._insert(pools)
                .values([{"name": p, "created_at": now, "updated_at": now} for p in pool_names])
                .on_conflict_do_nothing()
            )
            stmt = self._insert(workers).values(name=name, **values)
            conn.execute(stmt.on_conflict_do_update(index_elements=[workers.c.name], set_=values))

    def worker_stopped(self, name: str, now: datetime) -> None:
        """Record a clean stop (`orchd worker ls` shows it stopped, not offline)."""
        with self.write() as conn:
            conn.execute(
                update(workers)
                .where(workers.c.name == name)
                .values(status="stopped", running=0, last_heartbeat=now)
            )

    def heartbeat(
        self, worker: str, now: datetime, lease_until: datetime, run_ids: Sequence[int]
    ) -> Heartbeat:
        """Extend to ``lease_until``, in one statement, the leases of the runs among ``run_ids`` that
        ``worker`` still holds (PENDING, RUNNING or CANCELLING under its name), record it online,
        and return those runs with their state (CANCELLING: a person asked to cancel it), and
        whether the worker's own row was there to record (not after `orchd db reset`).

        ``run_ids`` is what the worker has in memory, not every row carrying its name, so a run it
        lost track of, or one a dead predecessor of the same name held, is not extended: it
        expires and is reaped.  A run of ``run_ids`` missing from the answer was taken away (its
        lease expired and it was reaped, or it was cancelled while PENDING) and must be stopped."""
        with self.write() as conn:
            held: list[Row[Any]] = []
            for chunk in chunks(run_ids):
                held += conn.execute(
                    update(runs)
                    .where(
                        runs.c.id.in_(chunk),
                        runs.c.worker == worker,
                        runs.c.state.in_([s.value for s in ACTIVE]),
                    )
                    .values(lease_expires_at=lease_until)
                    .returning(runs.c.id, runs.c.state)
                ).all()
            recorded = conn.execute(
                update(workers)
                .where(workers.c.name == worker)
                .values(last_heartbeat=now, running=len(run_ids), status="online")
            )
        return Heartbeat({r.id: RunState(r.state) for r in held}, known=recorded.rowcount > 0)

    def claim(
        self,
        worker: str,
        pool_names: Sequence[str],
        limit: int,
        now: datetime,
        lease_until: datetime,
        due_by: datetime | None = None,
    ) -> list[ClaimedRun]:
        """Take up to ``limit`` due runs for ``worker``: SCHEDULED, due by ``due_by`` (default
        ``now``; a worker that claims a few milliseconds ahead of a run's due time passes it, and
        starts the run when it comes due), of one of ``pool_names``, pool not paused; highest
        priority first, then the longest due.  Each is PENDING under ``worker`` with a lease until
        ``lease_until`` before this returns.

        Guarantees, with any number of workers on any number of hosts:

        * a run is returned to one caller only, for one attempt: ``FOR UPDATE SKIP LOCKED`` on
          PostgreSQL (claimers skip each other's rows instead of waiting), the ``BEGIN IMMEDIATE``
          write lock on SQLite;
        * a pool's ``concurrency_limit`` and a deployment's ``max_active_runs`` hold across all
          claimers: the rows of the limited pools and deployments are locked for the few
          milliseconds of the claim, so two claimers cannot both take the last free slot;
        * in the same transaction, a due run that its deployment's overlap policy turns away is
          MISSED (``skip``), or the deployment's active runs are asked to cancel so it can start
          next (``cancel_previous``); ``queue`` leaves it waiting.

        Which candidates are taken, skipped or make room is ``orchd.policy.admit``'s decision (and
        how many are looked at, ``candidates_for``'s); this reads the facts under the locks and
        applies the answer.  If the caller dies after this returns, its runs stay PENDING until
        their lease expires and the scheduler's upkeep crashes and retries them: a claimed run
        is never lost."""
        if limit <= 0:
            return []
        return self.complete_and_claim((), worker, pool_names, limit, now, lease_until, due_by)[1]

    def complete_and_claim(
        self,
        completed: Sequence[int],
        worker: str,
        pool_names: Sequence[str],
        limit: int,
        now: datetime,
        lease_until: datetime,
        due_by: datetime | None = None,
    ) -> tuple[list[int], list[ClaimedRun]]:
        """complete_many and claim in one transaction: the worker records the runs that ended
        well and claims as many new ones in one write (a transaction fewer per turn of its loop,
        which at full speed is most of what it does).  Returns the runs recorded COMPLETED and
        the runs claimed."""
        if self._postgres and not completed and limit > 0 and self._none_free(pool_names, due_by or now):
            return [], []
        with self.write() as conn:
            done = self._complete_in(conn, completed, worker, now)
            if limit <= 0:
                return done, []
            look: dict[str, Any] = {
                "pools": list(pool_names),
                "full_deployments": [],
                "now": due_by or now,
                "limit": candidates_for(limit),
            }
            candidates = conn.execute(_candidates(), look).all()
            if not candidates:  # most claims of a fleet (another took the run): one statement
                return done, []
            # the limits' read only when a limit may turn a candidate away
            limited = any(c.concurrency_limit or spec_of(c.spec).active_cap for c in candidates)
            full_pools, full_deployments = self._only_waiting(conn, pool_names) if limited else (set(), set())
            if any(c.pool in full_pools or c.deployment_id in full_deployments for c in candidates):
                # their backlog may fill the look-ahead and hide the runs that could start
                look["pools"] = [p for p in pool_names if p not in full_pools]
                look["full_deployments"] = list(full_deployments)
                candidates = conn.execute(_candidates(), look).all()
                if not candidates:
                    return done, []
            pool_caps = {c.pool: c.concurrency_limit for c in candidates if c.concurrency_limit}
            if pool_caps:  # only limited pools serialise their claimers, on their row: re-read it locked
                locked = conn.execute(
                    select(pools.c.name, pools.c.concurrency_limit)
                    .where(pools.c.name.in_(list(pool_caps)))
                    .order_by(pools.c.name)
                    .with_for_update()
                ).all()
                pool_caps = {r.name: r.concurrency_limit for r in locked if r.concurrency_limit}
            specs = {c.deployment_id: spec_of(c.spec) for c in candidates}
            dep_caps = {d: cap for d, spec in specs.items() if (cap := spec.active_cap)}
            if dep_caps:
                conn.execute(
                    select(deployments.c.id)
                    .where(deployments.c.id.in_(list(dep_caps)))
                    .order_by(deployments.c.id)
                    .with_for_update()
                ).all()
            decided = admit(
                [Candidate(c.id, c.pool, c.deployment_id) for c in candidates],
                limit,
                pool_limits=pool_caps,
                deployment_limits=dep_caps,
                active_in_pool=self._active_counts(conn, runs.c.pool, list(pool_caps)),
                active_in_deployment=self._active_counts(conn, runs.c.deployment_id, list(dep_caps)),
                overlap={d: spec.overlap for d, spec in specs.items()},
            )
            transition(
                conn,
                decided.skip,
                S.SCHEDULED,
                S.MISSED,
                now=now,
                actor=worker,
                values={"finished_at": now},
                reason="skipped: the deployment's max_active_runs are still active (overlap = skip)",
            )
            self._supersede(conn, decided.supersede, worker, now)
            moved = transition(
                conn,
                decided.take,
                S.SCHEDULED,
                S.PENDING,
                now=now,
                actor=worker,
                reason="claimed",
                values={"worker": worker, "claimed_at": now, "lease_expires_at": lease_until},
            )
            ours = set(moved)
            return done, [
                ClaimedRun(
                    c.id,
                    c.deployment,
                    c.attempt,
                    c.max_attempts,
                    c.scheduled_for,
                    json.loads(c.parameters),
                    specs[c.deployment_id],
                    None if c.upstream_run_id is None else Upstream(c.upstream_run_id, c.upstream_result),
                )
                for c in candidates
                if c.id in ours
            ]

    def _none_free(self, pool_names: Sequence[str], due_by: datetime) -> bool:
        """PostgreSQL: is no run of these pools due by ``due_by`` and free (not held by a claim in
        flight: SKIP LOCKED)?  One statement outside a transaction, asked before a claim that has
        nothing to record: most claims of a fleet are workers arriving at a due time whose run
        another worker's claim took, and each was a transaction of three round trips (BEGIN, the
        look, COMMIT) that found nothing; this is one.  A "yes" is only a hint (the claim looks
        again, under its locks); the look's row lock lasts only the statement."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return conn.execute(_free_due(), {"pools": list(pool_names), "now": due_by}).first() is None

    def _only_waiting(self, conn: Connection, pool_names: Sequence[str]) -> tuple[set[str], set[int]]:
        """The pools and deployments whose due runs a claim can only leave waiting now (at their
        limit, ``policy.only_waiting``), from the active runs of these pools (_limited_active).

        Only active runs that a limit may count are read: those of a pool with a concurrency
        limit, and those of a deployment whose spec may cap its active runs (the spec decides,
        below).  Reading every active run and every active deployment's spec took three round
        trips and grew with the fleet: at a hundred busy workers, half of each claim's time.
        Read only when the claim found candidates (most claims of a fleet find none) and a limit
        may turn one of them away."""
        active = conn.execute(_limited_active(self._postgres), {"pools": list(pool_names)}).all()
        if not active:
            return set(), set()
        in_pool: Counter[str] = Counter()
        in_deployment: Counter[int] = Counter()
        for r in active:
            in_pool[r.pool] += r.n
            in_deployment[r.deployment_id] += r.n
        pool_limits = {r.pool: r.concurrency_limit for r in active if r.concurrency_limit is not None}
        specs = {r.deployment_id: spec_of(r.spec) for r in active}
        deployment_limits = {d: cap for d, spec in specs.items() if (cap := spec.active_cap)}
        overlap = {d: spec.overlap for d, spec in specs.items()}
        return (
            only_waiting(pool_limits, in_pool),
            only_waiting(deployment_limits, in_deployment, overlap),
        )

    @staticmethod
    def _active_counts(conn: Connection, column: Any, keys: Sequence[Any]) -> Counter[Any]:
        counts: Counter[Any] = Counter()
        if keys:
            counts.update(
                dict(
                    conn.execute(
                        select(column, func.count())
                        .where(column.in_(list(keys)), RUNS_ACTIVE)  # literal: SQLite's partial indexes
                        .group_by(column)
                    ).all()
                )
            )
        return counts

    def _supersede(self, conn: Connection, deployment_ids: Iterable[int], actor: str, now: datetime) -> None:
        """overlap = cancel_previous: the active runs of these deployments are cancelled so the due one
        can start (it waits in the queue until they are gone)."""
        ids = list(deployment_ids)
        if not ids:
            return
        reason = "superseded by a newer run (overlap = cancel_previous)"
        active = conn.execute(
            select(runs.c.id, runs.c.state).where(
                runs.c.deployment_id.in_(ids), runs.c.state.in_([S.PENDING.value, S.RUNNING.value])
            )
        ).all()
        for state, target in ((S.RUNNING, S.CANCELLING), (S.PENDING, S.CANCELLED)):
            transition(
                conn,
                [r.id for r in active if r.state == state],
                state,
                target,
                now=now,
                actor=actor,
                reason=reason,
            )

    def start_many(self, pids: Mapping[int, int], worker: str, now: datetime) -> list[int]:
        """PENDING -> RUNNING, with its pid, for runs whose processes were just spawned (run id ->
        pid), in one transaction; returns those moved.  A run cancelled or reaped since its claim
        is not, and its process must be stopped: it is no longer the worker's to run."""
        if not pids:
            return []
        with self.write() as conn:
            return transition(
                conn,
                list(pids),
                S.PENDING,
                S.RUNNING,
                now=now,
                actor=worker,
                holder=worker,
                values={"started_at": now, "pid": case(dict(pids), value=runs.c.id)},
            )

    def complete_many(self, run_ids: Sequence[int], worker: str, now: datetime) -> list[int]:
        """RUNNING -> COMPLETED (exit code 0, no result) for several runs in one transaction: the
        common case, batched so a busy worker spends its time running runs, not recording them."""
        if not run_ids:
            return []
        with self.write() as conn:
            return self._complete_in(conn, run_ids, worker, now)

    def _complete_in(self, conn: Connection, run_ids: Sequence[int], worker: str, now: datetime) -> list[int]:
        return transition(
            conn,
            run_ids,
            S.RUNNING,
            S.COMPLETED,
            now=now,
            actor=worker,
            holder=worker,
            values={"finished_at": now, "exit_code": 0, "lease_expires_at": None},
        )

    def finish(
        self,
        run_id: int,
        worker: str,
        outcome: RunState,
        now: datetime,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        result: object = None,
        source: RunState = S.RUNNING,
    ) -> RunState | None:
        """Record a run's outcome (``source`` -> ``outcome``) with its exit code, error and result;
        return the state it ends in, or None when the run was no longer in ``source`` under this
        worker's watch (reaped or cancelled meanwhile: nothing is written).  A retryable outcome
        with attempts left ends in SCHEDULED: the retry is queued in the same transaction."""
        with self.write() as conn:
            moved = transition(
                conn,
                [run_id],
                source,
                outcome,
                now=now,
                actor=worker,
                holder=worker,
                reason=error,
                values={
                    "finished_at": now,
                    "exit_code": exit_code,
                    "error": error,
                    "result": result,
                    "lease_expires_at": None,
                },
            )
            if not moved:
                return None
            return S.SCHEDULED if requeue_failed(conn, moved, outcome, now, worker) else outcome

    def release(self, run_ids: Sequence[int], worker: str, now: datetime, reason: str) -> list[int]:
        """Hand PENDING or RUNNING runs back to the queue, due now, without charging an attempt (a
        stopping worker whose shutdown grace ran out); returns those handed back.  A run that
        moved on meanwhile (finished, reaped) is left alone."""
        back = {**BACK_TO_QUEUE, "due_at": now}
        with self.write() as conn:
            released = [
                rid
                for state in (S.PENDING, S.RUNNING)
                for rid in transition(
                    conn,
                    run_ids,
                    state,
                    S.SCHEDULED,
                    now=now,
                    actor=worker,
                    reason=reason,
                    values=back,
                    holder=worker,
                )
            ]
            if released:  # the other workers of their pools take them at once
                pools_of = conn.execute(select(runs.c.pool).where(runs.c.id.in_(released))).scalars()
                notify(conn, ((pool, now) for pool in pools_of), now)
            return released

    def cancel_requested(self, worker: str) -> list[int]:
        """Runs of ``worker`` a user asked to cancel (CANCELLING)."""
        with self.read() as conn:
            return list(
                conn.execute(
                    select(runs.c.id).where(runs.c.worker == worker, runs.c.state == S.CANCELLING.value)
                ).scalars()
            )

    def append_logs(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Store lines of run output (run_id, attempt, at, stream, line) in one statement.  A worker
        stores a run's output before its outcome, so a reader that sees the run finished and then
        reads its output has all of it."""
        if rows:
            with self.write() as conn:
                conn.execute(run_logs.insert(), list(rows))

    @property
    def polled(self) -> bool:
        """Must an idle worker poll ``changed`` to notice new work?  SQLite: as a backstop to
        wake-up datagrams.  PostgreSQL: no, NOTIFY wakes it (or its poll_interval, without LISTEN)."""
        return not self._postgres

    def changed(self) -> bool:
        """SQLite: has another connection (the scheduler, the CLI, another worker) committed since we
        last asked?  PRAGMA data_version answers from shared memory, so polling it costs no I/O.
        PostgreSQL workers are woken by NOTIFY instead: always False."""
        if not self.polled:
            return False
        with self.engine.connect() as conn:
            version = int(conn.exec_driver_sql("PRAGMA data_version").scalar_one())
        changed, self._data_version = version != self._data_version, version
        return changed

    def next_due_at(self, pool_names: Sequence[str], after: datetime | None = None) -> datetime | None:
        """When the earliest SCHEDULED run of these pools (due after ``after``) is due (may be
        past), or None.  A worker passes the time of its last claim: a run due by then that the
        claim did not give it is another's (a claim of another worker held it) or waits for a
        limit, and must not hide the runs due after it (the worker slept until its poll, past
        them)."""
        later = () if after is None else (runs.c.due_at > after,)
        with self.read() as conn:
            value: datetime | None = conn.execute(
                select(func.min(runs.c.due_at)).where(
                    runs.c.state == S.SCHEDULED.value, runs.c.pool.in_(list(pool_names)), *later
                )
            ).scalar()
        return value


@lru_cache(maxsize=2)
def _limited_active(grouped: bool) -> Select[Any]:
    """Queue._only_waiting's one read (bound: ``pools``): the active runs of these pools that a
    limit may count, with each one's pool limit and deployment spec (as text, for spec_of).
    ``grouped`` (PostgreSQL): counted per pool and deployment before the join, so that the
    spec's conditions (JSON, parsed at each use) are evaluated once per deployment, not once per
    active run (a burst with 800 runs active: 15-65 ms a claim, every claim).  SQLite reads the
    runs one by one (``n`` = 1 each): grouping there, once the database is analyzed, its
    planner walked a whole index of the history in group order (0.5 s at a million runs,
    holding the write lock).  The specs come in the same round trip.  Built once per shape,
    like _candidates; the pools are rendered as literals (SQLite's partial index)."""
    counted = select(
        runs.c.pool, runs.c.deployment_id, (func.count() if grouped else literal(1)).label("n")
    ).where(RUNS_ACTIVE, runs.c.pool.in_(bindparam("pools", expanding=True, literal_execute=True)))
    if grouped:
        counted = counted.group_by(runs.c.pool, runs.c.deployment_id)
    active = counted.subquery("active")
    policy = deployments.c.spec["overlap"].as_string()
    return (
        select(
            active.c.pool,
            active.c.deployment_id,
            active.c.n,
            pools.c.concurrency_limit,
            cast(deployments.c.spec, Text).label("spec"),
        )
        .join_from(active, deployments, deployments.c.id == active.c.deployment_id)
        .outerjoin(pools, pools.c.name == active.c.pool)
        .where(
            or_(
                pools.c.concurrency_limit.is_not(None),
                deployments.c.spec["max_active_runs"].as_integer().is_not(None),
                policy.is_(None),
                policy != "allow",
            )
        )
    )


@lru_cache(maxsize=1)
def _free_due() -> Select[Any]:
    """Queue._none_free's look (bound: ``pools``, ``now``): one due run no claim holds."""
    return select(runs.c.id).where(*_due()).limit(1).with_for_update(skip_locked=True)


def _due() -> tuple[ColumnElement[bool], ...]:
    """A run a claim may take by its state and time (bound: ``pools``, ``now``): the same for
    the claim's candidates and the look before it (Queue._none_free), which must never find none
    where the claim would find some."""
    return (
        runs.c.state == S.SCHEDULED.value,
        runs.c.pool.in_(bindparam("pools", expanding=True)),
        runs.c.due_at <= bindparam("now", type_=runs.c.due_at.type),
    )


@lru_cache(maxsize=1)
def _candidates() -> Select[Any]:
    """The claim's one statement that picks the candidates with everything needed to run them
    (bound: ``pools``, ``full_deployments``, ``now``, ``limit``), built once: building it and its
    cache key cost a tenth of a claim.  Paused pools are left out by the join, and limited pools
    show their limit.  The JSON comes as text: a claim reads several candidates per slot, and
    decoding every one's parameters and its deployment's spec was a fifth of the claim's time;
    specs are decoded once per distinct text (spec_of), parameters for the runs taken."""
    upstream = runs.alias("upstream")
    return (
        select(
            runs.c.id,
            runs.c.deployment_id,
            runs.c.pool,
            runs.c.attempt,
            runs.c.max_attempts,
            runs.c.scheduled_for,
            cast(runs.c.parameters, Text).label("parameters"),
            runs.c.upstream_run_id,
            upstream.c.result.label("upstream_result"),
            deployments.c.name.label("deployment"),
            cast(deployments.c.spec, Text).label("spec"),
            pools.c.concurrency_limit,
        )
        .join(deployments, deployments.c.id == runs.c.deployment_id)
        .outerjoin(pools, pools.c.name == runs.c.pool)
        .outerjoin(upstream, upstream.c.id == runs.c.upstream_run_id)
        .where(
            *_due(),
            or_(pools.c.paused.is_(None), pools.c.paused.is_(False)),
            runs.c.deployment_id.not_in(bindparam("full_deployments", expanding=True)),
            deployments.c.archived_at.is_(None),  # removed from the config: never started
        )
        .order_by(runs.c.priority.desc(), runs.c.due_at)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True, of=runs)
    )


@lru_cache(maxsize=1024)
def spec_of(text: str) -> DeploymentSpec:
    """A deployment's spec from its JSON text, decoded once per distinct text (a spec is
    immutable, and a claim meets the same few deployments over and over)."""
    return DeploymentSpec.from_json(json.loads(text))


def requeue_failed(
    conn: Connection, run_ids: Sequence[int], state: RunState, now: datetime, actor: str
) -> list[int]:
    """Send runs that just ended in ``state`` back to SCHEDULED (attempt + 1, due when
    ``orchd.policy.retry_due`` says) when it is a retryable outcome and attempts remain; return
    those sent.  Their pools' workers are woken: the retry of a run its worker lost (reaped,
    fenced) is for another worker, which must not wait for its poll to see it."""
    if not run_ids or state not in RETRYABLE:
        return []
    rows = conn.execute(
        select(runs.c.id, runs.c.pool, runs.c.attempt, runs.c.max_attempts, deployments.c.spec)
        .join(deployments, deployments.c.id == runs.c.deployment_id)
        .where(runs.c.id.in_(list(run_ids)), retry_remains())
    ).all()
    retried, queued = [], []
    for r in rows:
        due_at, delay = retry_due(DeploymentSpec.from_json(r.spec), r.attempt, now)
        queued.append((r.pool, due_at))
        retried += transition(
            conn,
            [r.id],
            state,
            S.SCHEDULED,
            now=now,
            actor=actor,
            reason=f"retry {r.attempt + 1}/{r.max_attempts} in {delay:.1f}s",
            values={
                **BACK_TO_QUEUE,
                "attempt": runs.c.attempt + 1,
                "due_at": due_at,
                "finished_at": None,
                "exit_code": None,
            },
        )
    notify(conn, (q for r, q in zip(rows, queued, strict=True) if r.id in retried), now)
    return retried
