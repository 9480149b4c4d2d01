"""What is deployed: deployments, their schedules and the pools, kept equal to the config, and the
operator's switches on them (pause a deployment, create, pause or limit a pool).

Contract
--------
* ``sync`` is idempotent: applying an unchanged config writes nothing and creates no run; a
  deployment or schedule is matched by its name or definition, never by a row id, so
  re-applying a config (a restart, SIGHUP, `orchd deployment apply` from another host) never
  re-fires a schedule.  Deployments and schedules that leave the config are archived, never
  deleted; their runs that nobody has seen yet are dropped.
* Pausing a deployment drops the runs it planned ahead and moves its cursors back, in one
  transaction, so nothing it planned starts while it is paused and nothing is lost on resume.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, insert, select, update

from orchd.config import Config
from orchd.config.model import DeploymentConfig
from orchd.db.base import chunks
from orchd.db.reports import Reports
from orchd.db.schema import deployments, pools, runs, schedules, triggers
from orchd.db.transitions import transition
from orchd.errors import OrchdError
from orchd.models import DeploymentSpec, SyncReport
from orchd.schedules import ScheduleSpec
from orchd.states import RunState

S = RunState
_BATCH = 2000
#: Deployments whose schedule rows one statement of a sync reads.
_DEPLOYMENTS_READ = 500


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class Deployments(Reports):
    """Deployments, schedules and pools (its switches name them, so it reads them too)."""

    def sync(self, config: Config, now: datetime, only: Collection[str] | None = None) -> SyncReport:
        """Make the database match the config, in one transaction: create and update deployments,
        schedules and declared pools, archive what left the config (its future runs are dropped,
        its due ones CANCELLED with the reason).  An unchanged config changes nothing: no write,
        no new run.  Safe to race with another sync (the unique keys on names and schedule keys
        decide) and with a running scheduler (it re-reads schedules).  Statements are batched
        (one SELECT per table, executemany for changes), so 100,000 schedules sync quickly.

        ``only``: apply just these deployments (and their schedules), archive nothing: what a
        command applies on the side, e.g. `run create` of a deployment the config just gained."""
        report = SyncReport()
        chosen = [d for d in config.deployments if only is None or d.name in only]
        with self.write() as conn:
            self._sync_pools(conn, config, now)
            columns = (
                deployments.c.id,
                deployments.c.name,
                deployments.c.config_hash,
                deployments.c.archived_at,
            )
            existing = {r.name: r for r in conn.execute(select(*columns))}
            ids: dict[str, int] = {}
            for part in chunks(chosen, _BATCH):  # each row carries its deployment's spec as JSON
                new, changed = [], []
                for dep in part:
                    spec = DeploymentSpec.from_config(dep, config.scheduler.catchup).to_json()
                    values = {
                        "pool": dep.pool,
                        "spec": spec,
                        "priority": dep.priority,
                        "config_hash": _hash([spec, dep.pool, dep.priority]),
                    }
                    row = existing.get(dep.name)
                    if row is None:
                        new.append({"name": dep.name, "created_at": now, "updated_at": now, **values})
                        continue
                    ids[dep.name] = row.id
                    if row.config_hash != values["config_hash"] or row.archived_at is not None:
                        changed.append({"did": row.id, **values})
                if new:
                    stmt = insert(deployments).returning(deployments.c.id, deployments.c.name)
                    ids.update({r.name: r.id for r in conn.execute(stmt, new)})
                if changed:
                    conn.execute(
                        update(deployments)
                        .where(deployments.c.id == bindparam("did"))
                        .values(archived_at=None, updated_at=now),
                        changed,
                    )
                report.created, report.updated = report.created + len(new), report.updated + len(changed)
            gone = [
                r.id
                for name, r in existing.items()
                if only is None and name not in ids and r.archived_at is None
            ]
            for chunk in chunks(gone):
                conn.execute(
                    update(deployments)
                    .where(deployments.c.id.in_(chunk))
                    .values(archived_at=now, updated_at=now)
                )
            report.archived = len(gone)
            wanted = {ids[d.name]: d.schedules for d in chosen}
            self._sync_schedules(conn, wanted, now, report, every=only is None)
            known = {name: r.id for name, r in existing.items()} | ids
            self._sync_triggers(conn, chosen, known, every=only is None)
            # after its schedules' future runs are dropped (a revived deployment fires them again)
            for chunk in chunks(gone):
                self._cancel_waiting(conn, chunk, now)
        return report

    def live_deployments(self) -> int:
        """How many deployments are in force (not archived): fewer than the config has means the
        database lost them (a reset), and the config must be applied again."""
        with self.read() as conn:
            return int(
                conn.execute(select(func.count()).where(deployments.c.archived_at.is_(None))).scalar_one()
            )

    def _cancel_waiting(self, conn: Connection, deployment_ids: Sequence[int], now: datetime) -> None:
        """The one rule for runs of a deployment that left the config: none starts any more.  Its
        waiting runs, ad-hoc ones and retries included, are CANCELLED with the reason (its
        schedules' future runs are dropped with the schedules); running ones finish, unretried."""
        waiting = conn.execute(
            select(runs.c.id).where(
                runs.c.deployment_id.in_(deployment_ids), runs.c.state == S.SCHEDULED.value
            )
        ).scalars()
        transition(
            conn,
            list(waiting),
            S.SCHEDULED,
            S.CANCELLED,
            now=now,
            actor=self.actor,
            reason="its deployment was removed from the config",
            values={"finished_at": now},
        )

    def _sync_triggers(
        self, conn: Connection, chosen: Sequence[DeploymentConfig], ids: Mapping[str, int], every: bool
    ) -> None:
        """The ``triggers`` rows of the ``chosen`` deployments (with ``every``, of all: those of a
        deployment that left the config go), changed by difference so an unchanged config writes
        nothing.  An upstream the database does not know yet (a partial apply) is left out until
        the next full sync."""
        wanted = {
            (ids[t.after], state, ids[d.name])
            for d in chosen
            for t in d.triggers
            if t.after in ids
            for state in t.on
        }
        current_rows = select(triggers.c.upstream_id, triggers.c.state, triggers.c.downstream_id)
        if not every:
            current_rows = current_rows.where(triggers.c.downstream_id.in_([ids[d.name] for d in chosen]))
        current = {tuple(r) for r in conn.execute(current_rows)}
        for up, state, down in current - wanted:
            conn.execute(
                delete(triggers).where(
                    triggers.c.upstream_id == up, triggers.c.state == state, triggers.c.downstream_id == down
                )
            )
        if added := wanted - current:
            conn.execute(
                insert(triggers),
                [{"upstream_id": up, "state": state, "downstream_id": down} for up, state, down in added],
            )

    def _sync_pools(self, conn: Connection, config: Config, now: datetime) -> None:
        declared = {p.name: p for p in config.pools}
        for pool in declared.values():
            stmt = self._insert(pools).values(
                name=pool.name,
                concurrency_limit=pool.concurrency_limit,
                paused=pool.paused,
                created_at=now,
                updated_at=now,
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[pools.c.name],
                    set_={
                        "concurrency_limit": pool.concurrency_limit,
                        "paused": pool.paused,
                        "updated_at": now,
                    },
                )
            )
        implicit = {d.pool for d in config.deployments} | set(config.worker.pools)
        for name in sorted(implicit - declared.keys()):
            conn.execute(
                self._insert(pools).values(name=name, created_at=now, updated_at=now).on_conflict_do_nothing()
            )

    def _sync_schedules(
        self,
        conn: Connection,
        wanted: Mapping[int, Sequence[ScheduleSpec]],
        now: datetime,
        report: SyncReport,
        every: bool = True,
    ) -> None:
        """Schedules of every deployment (archived ones want none), or with ``every`` false of those
        in ``wanted`` only: add, re-activate, deactivate, archive — keyed by the schedule's
        definition, never by its row id."""
        dep_ids = list(wanted)
        if every:  # and the deployments that left the config, while they have live schedules
            live = select(schedules.c.deployment_id).where(schedules.c.archived_at.is_(None)).distinct()
            dep_ids += [i for i in conn.execute(live).scalars() if i not in wanted]
        new: list[dict[str, Any]] = []
        gone: list[int] = []
        deactivated: list[int] = []
        added = 0
        for dep_id, rows in self._schedule_rows(conn, dep_ids):
            specs = {spec.key: spec for spec in wanted.get(dep_id, ())}
            for key, spec in specs.items():
                row = rows.get(key)
                if row is None:
                    if len(new) >= _BATCH:  # bounded memory however many schedules there are
                        conn.execute(insert(schedules), new)
                        added += len(new)
                        new = []
                    new.append(
                        {
                            "deployment_id": dep_id,
                            "key": key,
                            "kind": spec.kind,
                            "expr": spec.expr,
                            "timezone": spec.timezone,
                            "anchor": spec.anchor,
                            "parameters": dict(spec.parameters),
                            "jitter": spec.jitter,
                            "active": spec.active,
                            "next_fire_at": spec.next_at_or_after(now),
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
                elif row.active != spec.active or row.archived_at is not None:
                    values: dict[str, Any] = {"active": spec.active, "archived_at": None, "updated_at": now}
                    if spec.active:  # revived: no catch-up for the time it was switched off
                        values["next_fire_at"] = spec.next_at_or_after(now)
                    else:
                        deactivated.append(row.id)
                    conn.execute(update(schedules).where(schedules.c.id == row.id).values(**values))
            gone += [r.id for key, r in rows.items() if key not in specs and r.archived_at is None]
        if new:
            conn.execute(insert(schedules), new)
            added += len(new)
        for chunk in chunks(gone):
            conn.execute(
                update(schedules).where(schedules.c.id.in_(chunk)).values(archived_at=now, updated_at=now)
            )
        self._drop_unstarted(conn, deactivated, now, "schedule deactivated")
        self._drop_unstarted(conn, gone, now, "schedule removed from config")
        report.schedules_added, report.schedules_removed = added, len(gone)

    def _schedule_rows(
        self, conn: Connection, dep_ids: Sequence[int]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """Each deployment's schedule rows by key, read a few hundred deployments at a time: all the
        rows of 100,000 schedules at once took 45 MB."""
        for chunk in chunks(dep_ids, _DEPLOYMENTS_READ):
            current: dict[int, dict[str, Any]] = {}
            columns = schedules.c.id, schedules.c.deployment_id, schedules.c.key, schedules.c.active
            for r in conn.execute(
                select(*columns, schedules.c.archived_at).where(schedules.c.deployment_id.in_(chunk))
            ):
                current.setdefault(r.deployment_id, {})[r.key] = r
            for dep_id in chunk:
                yield dep_id, current.get(dep_id, {})

    def _drop_unstarted(
        self, conn: Connection, schedule_ids: Sequence[int], now: datetime, reason: str
    ) -> None:
        """Future runs of a schedule that no longer applies are deleted (they never existed for anyone);
        runs already due but not claimed are CANCELLED so the record shows why they did not run."""
        for chunk in chunks(schedule_ids):
            self._drop_unstarted_chunk(conn, chunk, now, reason)

    def _drop_unstarted_chunk(
        self, conn: Connection, schedule_ids: Sequence[int], now: datetime, reason: str
    ) -> None:
        of_schedules = and_(runs.c.schedule_id.in_(schedule_ids), runs.c.state == S.SCHEDULED.value)
        conn.execute(delete(runs).where(of_schedules, runs.c.scheduled_for > now))
        due = conn.execute(select(runs.c.id).where(of_schedules)).scalars().all()
        transition(
            conn,
            due,
            S.SCHEDULED,
            S.CANCELLED,
            now=now,
            actor=self.actor,
            reason=reason,
            values={"finished_at": now},
        )

    def set_deployment_paused(self, name: str, paused: bool, now: datetime) -> tuple[bool, int]:
        """Pause or resume a live deployment; returns (changed, future runs dropped).  NotFound for
        an unknown name (with a suggestion), OrchdError for an archived one.

        A paused deployment is not materialized (the scheduler skips it), and the runs it had
        already materialized ahead of time are dropped with their schedule cursors moved back to
        the first of them, so nothing it planned starts while it is paused.  On resume the
        scheduler continues from those cursors: the fire times of the pause count as missed and
        the deployment's catch-up policy decides about them, as after any downtime.
        """
        row = self.deployment(name)
        if row.archived_at is not None:
            raise OrchdError(f"deployment {name!r} is archived: it was removed from the config")
        with self.write() as conn:
            flipped = conn.execute(
                update(deployments)
                .where(deployments.c.id == row.id, deployments.c.paused.is_(not paused))
                .values(paused=paused, updated_at=now)
            ).rowcount
            if not flipped:
                return False, 0
            if not paused:
                return True, 0
            planned = and_(
                runs.c.deployment_id == row.id,
                runs.c.schedule_id.is_not(None),
                runs.c.state == S.SCHEDULED.value,
                runs.c.scheduled_for > now,
            )
            firsts = conn.execute(
                select(runs.c.schedule_id, func.min(runs.c.scheduled_for))
                .where(planned)
                .group_by(runs.c.schedule_id)
            ).all()
            dropped = conn.execute(delete(runs).where(planned)).rowcount
            for schedule_id, first in firsts:
                conn.execute(
                    update(schedules)
                    .where(schedules.c.id == schedule_id)
                    .values(next_fire_at=first, updated_at=now)
                )
        return True, int(dropped)

    def create_pool(self, name: str, limit: int | None, paused: bool, now: datetime) -> None:
        """Create a pool; OrchdError if one of that name exists (whoever raced to create it won)."""
        stmt = self._insert(pools).values(
            name=name, concurrency_limit=limit, paused=paused, created_at=now, updated_at=now
        )
        with self.write() as conn:
            if conn.execute(stmt.on_conflict_do_nothing().returning(pools.c.name)).first() is None:
                raise OrchdError(f"pool {name!r} already exists (see `orchd pool ls`)")

    def update_pool(self, name: str, now: datetime, **values: Any) -> None:
        """Set ``paused`` and/or ``concurrency_limit`` of an existing pool (NotFound otherwise).  The
        next claim honours it; runs already claimed are not taken back."""
        with self.write() as conn:
            changed = conn.execute(
                update(pools).where(pools.c.name == name).values(updated_at=now, **values)
            ).rowcount
        if not changed:
            self.pool(name)  # raises NotFound, with a suggestion
