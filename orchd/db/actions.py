"""What a person does to runs, from the CLI or the web (the same call, so the same guards and the
same errors for both): create one, cancel one, retry one, backfill a range.

Contract
--------
* Each action is one transaction and a guarded transition: acting on a run that changed state
  meanwhile (a worker finished it, the reaper crashed it) fails with a one-line error and
  changes nothing.
* A backfill creates at most one run per fire time, sharing the scheduler's unique key: times
  that already have a run (scheduled, or backfilled before) are skipped, so repeating it is safe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, select

from orchd.db.base import Access
from orchd.db.schema import deployments, runs
from orchd.db.transitions import BACK_TO_QUEUE, insert_runs, new_run, transition, unscheduled_run
from orchd.errors import OrchdError
from orchd.models import Deployment, Schedule
from orchd.states import FINISHED, RunState, cancel_target

S = RunState


class RunActions(Access):
    def create_run(
        self,
        deployment: str,
        now: datetime,
        *,
        at: datetime | None = None,
        parameters: Mapping[str, Any] | None = None,
        reason: str = "created by hand",
    ) -> int:
        """Queue an ad-hoc run of a live deployment, due at ``at`` or now, with the deployment's
        parameters updated by ``parameters``; return its id.  It has no schedule, so no
        idempotency key: each call creates a run."""
        with self.write() as conn:
            dep = conn.execute(
                select(deployments).where(
                    deployments.c.name == deployment, deployments.c.archived_at.is_(None)
                )
            ).first()
            if dep is None:
                raise OrchdError(f"deployment {deployment!r} not found (see `orchd deployment ls`)")
            row = unscheduled_run(dep, at or now, now, parameters=parameters)
            (run_id,) = insert_runs(conn, [row], now=now, actor=self.actor, reason=reason)
        return run_id

    def cancel_run(self, run_id: int, now: datetime) -> RunState:
        """Cancel a run; return the state it is now in.  A waiting (SCHEDULED or PENDING) run is
        CANCELLED at once; a RUNNING one goes CANCELLING and its worker kills it within a second
        or two (or the reaper crashes it if the worker is gone).  OrchdError if it is not found,
        cannot be cancelled (finished, or being cancelled already), or changed state meanwhile."""
        reason = f"cancelled by {self.actor}"
        with self.write() as conn:
            state = conn.execute(select(runs.c.state).where(runs.c.id == run_id)).scalar()
            if state is None:
                raise OrchdError(f"run {run_id} not found")
            current = RunState(state)
            target = cancel_target(current)
            if target is None:
                raise OrchdError(f"run {run_id} is {current}: nothing to cancel")
            values = {"finished_at": now} if target == S.CANCELLED else {}
            if not transition(
                conn, [run_id], current, target, now=now, actor=self.actor, reason=reason, values=values
            ):
                raise OrchdError(f"run {run_id} changed state meanwhile; try again")
        return target

    def retry_run(self, run_id: int, now: datetime) -> int:
        """Queue a finished run again, due now, as its next attempt; return that attempt number.
        Its max_attempts grows if needed so the new attempt counts.  A run whose attempt no worker
        ever claimed (cancelled or missed while it waited) is re-queued as the same attempt:
        nothing was attempted, so nothing is counted.  OrchdError if it is not found, not
        finished (a run never executes twice at once), of a deployment removed from the config,
        or changed state meanwhile."""
        with self.write() as conn:
            row = conn.execute(
                select(
                    runs.c.state,
                    runs.c.attempt,
                    runs.c.claimed_at,
                    deployments.c.name,
                    deployments.c.archived_at,
                )
                .join(deployments, deployments.c.id == runs.c.deployment_id)
                .where(runs.c.id == run_id)
            ).first()
            if row is None:
                raise OrchdError(f"run {run_id} not found")
            if row.archived_at is not None:
                raise OrchdError(
                    f"run {run_id}: deployment {row.name!r} was removed from the config: "
                    "its runs do not run again (add it back to run it)"
                )
            current = RunState(row.state)
            if current not in FINISHED:
                raise OrchdError(f"run {run_id} is {current}: only a finished run can be retried")
            attempt = row.attempt + (row.claimed_at is not None)
            moved = transition(
                conn,
                [run_id],
                current,
                S.SCHEDULED,
                now=now,
                actor=self.actor,
                reason=f"retried by {self.actor}",
                values={
                    **BACK_TO_QUEUE,
                    "due_at": now,
                    "attempt": attempt,
                    "max_attempts": case(
                        (runs.c.max_attempts >= attempt, runs.c.max_attempts), else_=attempt
                    ),
                    "finished_at": None,
                    "exit_code": None,
                    "error": None,
                    "result": None,
                },
            )
            if not moved:
                raise OrchdError(f"run {run_id} changed state meanwhile; try again")
        return int(attempt)

    def backfill(self, dep: Deployment, schedule: Schedule, times: Sequence[datetime], now: datetime) -> int:
        """Queue runs of ``dep`` for the fire times ``times`` of ``schedule`` in one short transaction;
        return how many were new (times that already have a run, scheduled or backfilled before,
        are skipped by the unique key).  The runs are due now, in fire-time order, so the misfire
        grace does not turn them MISSED at once."""
        if not times:
            return 0
        spec = dep.spec
        rows = [
            new_run(
                deployment_id=dep.id,
                pool=dep.pool,
                priority=dep.priority,
                max_attempts=spec.max_attempts,
                parameters=spec.run_parameters(schedule.spec.parameters),
                scheduled_for=at,
                due_at=now + timedelta(microseconds=position),
                now=now,
                schedule_id=schedule.id,
                schedule_key=schedule.spec.key,
            )
            for position, at in enumerate(times)
        ]
        with self.write() as conn:
            created = insert_runs(conn, rows, now=now, actor=self.actor, reason="backfill")
        return len(created)
