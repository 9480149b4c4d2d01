"""The notification outbox: events matched to rules, written once, delivered at least once.

Contract:

* ``match_events`` reads the event log (``run_states``) after the cursor stored in
  ``event_cursors`` and, in the same transaction that moves the cursor, writes one outbox row per
  (rule, event, channel) under a unique key.  A scheduler killed mid-pass, a restart, or a second
  scheduler reading the same events inserts nothing twice (``ON CONFLICT DO NOTHING``); ids a
  transaction commits late are caught through the cursor's gaps (``orchd.notifications.advance``).
* ``match_late`` and ``match_offline_workers`` do the same for the events that are not a
  transition: a run waiting past its due time, a worker that went silent.
* ``claim_deliveries`` hands out due rows (state ``sending``, at most one per rule and channel at
  a time, so one channel that is down holds one sender, never the others); ``finish_delivery``
  records the attempt and its outcome, guarded by the attempt number.  A row left ``sending`` by
  a scheduler that died is handed out again once its attempt's deadline passed: the one window
  in which a message can arrive twice (sent, then the process died before it was recorded).
  Every message carries a stable idempotency key so a receiver can drop the repeat.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, exists, func, insert, or_, select, update

from orchd.db.base import Access, chunks
from orchd.db.schema import (
    deployments,
    event_cursors,
    notification_attempts,
    notifications,
    run_logs,
    run_states,
    runs,
    workers,
)
from orchd.models import Delivery, DeliveryAttempt, DeliveryRecord, MatchReport, RunEvent
from orchd.notifications import (
    CURSOR,
    TAIL_LINES,
    Rule,
    advance,
    event_key,
    run_payload,
)
from orchd.states import RETRYABLE, RunState

S = RunState
#: How far back LATE and WORKER_OFFLINE look (older ones were told, or predate the rules).
LOOKBACK = timedelta(hours=24)
_FAILURES = [s.value for s in RETRYABLE]
#: The attempt a dead scheduler left: the one window in which a message may arrive twice.
UNKNOWN_OUTCOME = "outcome unknown: the scheduler stopped while sending (may have arrived)"


def _attempt(
    conn: Connection,
    notification_id: int,
    attempt: int,
    started: datetime,
    finished: datetime,
    ok: bool,
    error: str | None,
) -> None:
    conn.execute(
        insert(notification_attempts).values(
            notification_id=notification_id,
            attempt=attempt,
            started_at=started,
            finished_at=finished,
            ok=ok,
            error=error,
        )
    )


class Notifications(Access):
    # ------------------------------------------------------------------------------ matching

    def match_events(
        self, rules: Sequence[Rule], now: datetime, public_url: str = "", limit: int = 500
    ) -> MatchReport:
        """Match up to ``limit`` events after the cursor against ``rules`` and queue the matches;
        move the cursor.  One write transaction, kept short by the limit (SQLite's writers wait
        for it).  The first pass ever starts at the end of the log: history from before
        notifications were configured is not told."""
        with self.read() as conn:  # an idle history costs one read, no write transaction
            seen = conn.execute(
                select(event_cursors.c.position, event_cursors.c.gaps).where(event_cursors.c.name == CURSOR)
            ).first()
            newest = conn.execute(select(func.coalesce(func.max(run_states.c.id), 0))).scalar_one()
        if seen is not None and not seen.gaps and newest <= seen.position:
            return MatchReport()
        with self.write() as conn:
            cursor = conn.execute(  # locked: two matchers at once (a leader change) take turns
                select(event_cursors.c.position, event_cursors.c.gaps)
                .where(event_cursors.c.name == CURSOR)
                .with_for_update()
            ).first()
            if cursor is None:
                start = conn.execute(select(func.coalesce(func.max(run_states.c.id), 0))).scalar_one()
                conn.execute(
                    self._insert(event_cursors)
                    .values(name=CURSOR, position=start, gaps=[], updated_at=now)
                    .on_conflict_do_nothing()
                )
                return MatchReport()
            events = self._events_after(conn, cursor.position, cursor.gaps, limit, rules)
            queued = throttled = 0
            for event in events:
                for rule in rules:
                    for name in rule.takes(event):
                        key = event_key("state" if name != "RECOVERED" else "recovered", event.id)
                        payload = run_payload(
                            event=name,
                            key=key,
                            rule=rule.name,
                            run=self._run_facts(conn, event.run_id),
                            at=event.at,
                            public_url=public_url,
                            tail=self._tail(conn, event.run_id, event.attempt),
                        )
                        payload["state"], payload["attempt"] = event.state.value, event.attempt
                        q, t = self._outbox(
                            conn, rule, name, key, event.run_id, event.deployment, payload, now
                        )
                        queued, throttled = queued + q, throttled + t
            position, gaps = advance(cursor.position, cursor.gaps, [e.id for e in events], now.timestamp())
            conn.execute(
                update(event_cursors)
                .where(event_cursors.c.name == CURSOR)
                .values(position=position, gaps=gaps, updated_at=now)
            )
        return MatchReport(events=len(events), queued=queued, throttled=throttled)

    def _events_after(
        self,
        conn: Connection,
        position: int,
        gaps: Sequence[Sequence[float]],
        limit: int,
        rules: Sequence[Rule],
    ) -> list[RunEvent]:
        later = run_states.alias()
        retried = exists().where(
            later.c.run_id == run_states.c.run_id,
            later.c.id > run_states.c.id,
            later.c.from_state == run_states.c.to_state,
            later.c.to_state == S.SCHEDULED.value,
            later.c.at == run_states.c.at,  # queued in the same transaction: the automatic retry
        )
        where = [run_states.c.id > position] + [
            run_states.c.id.between(int(low), int(high)) for low, high, _ in gaps
        ]
        rows = conn.execute(
            select(
                run_states.c.id,
                run_states.c.run_id,
                run_states.c.to_state,
                run_states.c.attempt,
                run_states.c.at,
                runs.c.max_attempts,
                runs.c.deployment_id,
                deployments.c.name,
                deployments.c.spec,
                retried.label("retried"),
            )
            .join(runs, runs.c.id == run_states.c.run_id)
            .join(deployments, deployments.c.id == runs.c.deployment_id)
            .where(or_(*where))
            .order_by(run_states.c.id)
            .limit(limit)
        ).all()
        recovered = self._recoveries(conn, rows) if any("RECOVERED" in r.config.on for r in rules) else set()
        return [
            RunEvent(
                id=r.id,
                run_id=r.run_id,
                deployment=r.name,
                tags=list((r.spec or {}).get("tags") or []),
                state=S(r.to_state),
                attempt=r.attempt,
                max_attempts=r.max_attempts,
                at=r.at,
                retried=bool(r.retried),
                recovered=r.id in recovered,
            )
            for r in rows
        ]

    def _recoveries(self, conn: Connection, rows: Sequence[Any]) -> set[int]:
        """The COMPLETED events among ``rows`` whose deployment's previous outcome (the last run to
        finish before, or the previous outcome in ``rows``) was a failure.  One query per
        deployment per batch, not per event: matching keeps pace with a busy history."""
        last: dict[int, str | None] = {}
        found = set()
        for r in rows:
            if r.to_state != S.COMPLETED.value and (r.to_state not in _FAILURES or r.retried):
                continue
            if r.deployment_id not in last:
                last[r.deployment_id] = conn.execute(
                    select(runs.c.state)
                    .where(
                        runs.c.deployment_id == r.deployment_id,
                        runs.c.id != r.run_id,
                        runs.c.finished_at < r.at,
                        runs.c.state.in_([S.COMPLETED.value, *_FAILURES]),
                    )
                    .order_by(runs.c.finished_at.desc())
                    .limit(1)
                ).scalar()
            if r.to_state == S.COMPLETED.value and last[r.deployment_id] in _FAILURES:
                found.add(r.id)
            last[r.deployment_id] = r.to_state
        return found

    def _run_facts(self, conn: Connection, run_id: int) -> dict[str, Any]:
        r = conn.execute(
            select(runs, deployments.c.name.label("deployment"), workers.c.host)
            .join(deployments, deployments.c.id == runs.c.deployment_id)
            .outerjoin(workers, workers.c.name == runs.c.worker)
            .where(runs.c.id == run_id)
        ).first()
        if r is None:
            return {"run_id": run_id}
        facts = dict(r._mapping)
        facts["run_id"] = facts.pop("id")
        return facts

    def _tail(self, conn: Connection, run_id: int, attempt: int) -> list[str]:
        lines = conn.execute(
            select(run_logs.c.line)
            .where(run_logs.c.run_id == run_id, run_logs.c.attempt == attempt)
            .order_by(run_logs.c.id.desc())
            .limit(TAIL_LINES)
        ).scalars()
        return list(reversed(list(lines)))

    def _outbox(
        self,
        conn: Connection,
        rule: Rule,
        name: str,
        key: str,
        run_id: int | None,
        deployment: str | None,
        payload: dict[str, Any],
        now: datetime,
    ) -> tuple[int, int]:
        """One outbox row per channel of ``rule`` (none if the event was queued before); held back
        as ``throttled`` when the rule's throttle sent one for this deployment lately."""
        queued = throttled = 0
        for channel in rule.channels:
            state, suppressed = "pending", 0
            if rule.config.throttle and deployment is not None:
                state, suppressed = self._throttled(conn, rule, channel, deployment, now)
            inserted = conn.execute(
                self._insert(notifications)
                .values(
                    rule=rule.name,
                    event_key=key,
                    channel=channel,
                    event=name,
                    run_id=run_id,
                    deployment=deployment,
                    state=state,
                    attempts=0,
                    max_attempts=rule.config.attempts,
                    next_attempt_at=now,
                    payload=payload,
                    suppressed=suppressed,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing()
                .returning(notifications.c.id)
            ).first()
            if inserted is not None:
                queued += state == "pending"
                throttled += state == "throttled"
        return queued, throttled

    def _throttled(
        self, conn: Connection, rule: Rule, channel: str, deployment: str, now: datetime
    ) -> tuple[str, int]:
        same = and_(
            notifications.c.rule == rule.name,
            notifications.c.deployment == deployment,
            notifications.c.channel == channel,
        )
        last = conn.execute(
            select(notifications.c.id, notifications.c.created_at)
            .where(same, notifications.c.state != "throttled")
            .order_by(notifications.c.id.desc())
            .limit(1)
        ).first()
        if last is None:
            return "pending", 0
        if last.created_at > now - timedelta(seconds=rule.config.throttle or 0):
            return "throttled", 0
        held = conn.execute(
            select(func.count()).where(
                same, notifications.c.state == "throttled", notifications.c.id > last.id
            )
        ).scalar_one()
        return "pending", int(held)

    def match_late(self, rules: Sequence[Rule], now: datetime, public_url: str = "") -> int:
        """Queue LATE for runs still SCHEDULED ``late_after`` past their due time (one per run and
        attempt); return how many were queued."""
        late_rules = [r for r in rules if "LATE" in r.config.on]
        if not late_rules:
            return 0
        shortest = min(r.config.late_after for r in late_rules)
        late = (
            select(runs.c.id, runs.c.attempt, runs.c.due_at, deployments.c.name, deployments.c.spec)
            .join(deployments, deployments.c.id == runs.c.deployment_id)
            .where(
                runs.c.state == S.SCHEDULED.value,
                runs.c.due_at <= now - timedelta(seconds=shortest),
                runs.c.due_at > now - LOOKBACK,
            )
            .order_by(runs.c.due_at)
            .limit(500)
        )
        with self.read() as conn:
            wanted = {
                (rule.name, event_key("late", r.id, r.attempt))
                for r in conn.execute(late)
                for rule in late_rules
                if (now - r.due_at).total_seconds() >= rule.config.late_after
                and rule.covers(r.name, list((r.spec or {}).get("tags") or []))
            }
            if not self._unqueued(conn, wanted):
                return 0
        queued = 0
        with self.write() as conn:
            rows = conn.execute(late).all()
            for r in rows:
                late_by = (now - r.due_at).total_seconds()
                tags = list((r.spec or {}).get("tags") or [])
                for rule in late_rules:
                    if late_by < rule.config.late_after or not rule.covers(r.name, tags):
                        continue
                    key = event_key("late", r.id, r.attempt)
                    facts = self._run_facts(conn, r.id) | {"late_by_seconds": late_by}
                    payload = run_payload(
                        event="LATE", key=key, rule=rule.name, run=facts, at=now, public_url=public_url
                    )
                    queued += self._outbox(conn, rule, "LATE", key, r.id, r.name, payload, now)[0]
        return queued

    def match_offline_workers(self, rules: Sequence[Rule], now: datetime) -> int:
        """Queue WORKER_OFFLINE for workers the scheduler marked offline (silent, not stopped)."""
        offline_rules = [r for r in rules if "WORKER_OFFLINE" in r.config.on]
        if not offline_rules:
            return 0
        offline = select(workers).where(
            workers.c.status == "offline", workers.c.last_heartbeat > now - LOOKBACK
        )
        with self.read() as conn:
            wanted = {
                (rule.name, event_key("worker_offline", w.name, w.started_at.isoformat()))
                for w in conn.execute(offline)
                for rule in offline_rules
            }
            if not self._unqueued(conn, wanted):
                return 0
        queued = 0
        with self.write() as conn:
            for w in conn.execute(offline):
                key = event_key("worker_offline", w.name, w.started_at.isoformat())
                payload = {
                    "event": "WORKER_OFFLINE",
                    "event_key": key,
                    "at": now.isoformat(),
                    "worker": w.name,
                    "host": w.host,
                    "pid": w.pid,
                    "pools": list(w.pools or []),
                    "last_heartbeat": w.last_heartbeat.isoformat(),
                }
                for rule in offline_rules:
                    queued += self._outbox(
                        conn, rule, "WORKER_OFFLINE", key, None, None, {**payload, "rule": rule.name}, now
                    )[0]
        return queued

    def _unqueued(self, conn: Connection, wanted: set[tuple[str, str]]) -> bool:
        """Whether some (rule, event key) of ``wanted`` has no outbox row yet: the periodic scans
        (LATE, offline workers) see the same events again and again, and write only for a new one."""
        keys = sorted({key for _, key in wanted})
        found: set[tuple[str, str]] = set()
        for part in chunks(keys):
            found |= {
                (r.rule, r.event_key)
                for r in conn.execute(
                    select(notifications.c.rule, notifications.c.event_key).where(
                        notifications.c.event_key.in_(list(part))
                    )
                )
            }
        return bool(wanted - found)

    def sample_event(self, rule: str, now: datetime, public_url: str = "") -> dict[str, Any]:
        """A sample FAILED event for `orchd notification test`: the latest failed run's facts if
        there is one, else made up (run id 0)."""
        with self.read() as conn:
            run_id = conn.execute(
                select(runs.c.id).where(runs.c.state.in_(_FAILURES)).order_by(runs.c.id.desc()).limit(1)
            ).scalar()
            facts: dict[str, Any] = {
                "deployment": "example",
                "run_id": 0,
                "state": "FAILED",
                "attempt": 1,
                "max_attempts": 1,
                "exit_code": 1,
                "error": "this is a test message from orchd notification test",
            }
            tail: list[str] = []
            if run_id is not None:
                facts = self._run_facts(conn, run_id)
                tail = self._tail(conn, run_id, facts["attempt"])
        key = event_key("test", int(now.timestamp() * 1000))
        return run_payload(
            event="TEST", key=key, rule=rule, run=facts, at=now, public_url=public_url, tail=tail
        )

    def record_test(
        self,
        rule: str,
        channel: str,
        payload: dict[str, Any],
        ok: bool,
        error: str | None,
        started: datetime,
        now: datetime,
    ) -> None:
        """Keep a test message in the log like any other delivery."""
        with self.write() as conn:
            row = conn.execute(
                insert(notifications)
                .values(
                    rule=rule,
                    event_key=payload["event_key"],
                    channel=channel,
                    event="TEST",
                    run_id=None,
                    deployment=payload.get("deployment"),
                    state="delivered" if ok else "failed",
                    attempts=1,
                    max_attempts=1,
                    next_attempt_at=now,
                    payload=payload,
                    suppressed=0,
                    last_error=error,
                    created_at=started,
                    updated_at=now,
                    delivered_at=now if ok else None,
                )
                .returning(notifications.c.id)
            ).scalar_one()
            _attempt(conn, row, 1, started, now, ok, error)

    # ------------------------------------------------------------------------------ delivering

    def claim_deliveries(
        self, now: datetime, busy: Collection[tuple[str, str]], limit: int, deadline: float
    ) -> list[Delivery]:
        """Hand out up to ``limit`` due messages, at most one per (rule, channel) and none of those
        in ``busy`` (being sent by this process); each is ``sending`` until ``deadline`` seconds
        from now, after which it is due again (its sender died)."""
        with self.write() as conn:
            due = conn.execute(
                select(notifications)
                .where(
                    notifications.c.state.in_(["pending", "sending"]),
                    notifications.c.next_attempt_at <= now,
                )
                .order_by(notifications.c.next_attempt_at, notifications.c.id)
                .limit(limit * 10)
                .with_for_update(skip_locked=True)
            ).all()
            taken: list[Delivery] = []
            seen = set(busy)
            for r in due:
                if (r.rule, r.channel) in seen or len(taken) >= limit:
                    continue
                seen.add((r.rule, r.channel))
                moved = conn.execute(
                    update(notifications)
                    .where(
                        notifications.c.id == r.id,
                        notifications.c.state == r.state,
                        notifications.c.attempts == r.attempts,
                    )
                    .values(
                        state="sending",
                        attempts=r.attempts + 1,
                        next_attempt_at=now + timedelta(seconds=deadline),
                        updated_at=now,
                    )
                ).rowcount
                if moved:
                    if r.state == "sending":  # its sender died with the outcome unrecorded
                        _attempt(conn, r.id, r.attempts, r.updated_at, now, False, UNKNOWN_OUTCOME)
                    taken.append(
                        Delivery(
                            id=r.id,
                            rule=r.rule,
                            channel=r.channel,
                            event_key=r.event_key,
                            event=r.event,
                            attempt=r.attempts + 1,
                            max_attempts=r.max_attempts,
                            payload=r.payload,
                            suppressed=r.suppressed,
                            repeat=r.state == "sending",
                        )
                    )
        return taken

    def finish_delivery(
        self,
        delivery: Delivery,
        *,
        ok: bool,
        error: str | None,
        started: datetime,
        now: datetime,
        retry_at: datetime | None,
    ) -> bool:
        """Record an attempt's outcome: delivered, due again at ``retry_at``, or failed (None: no
        attempt left).  False if the attempt was not this process's to record any more (its
        deadline passed and another sender took the message)."""
        if ok:
            values: dict[str, Any] = {"state": "delivered", "delivered_at": now, "last_error": None}
        elif retry_at is not None:
            values = {"state": "pending", "next_attempt_at": retry_at, "last_error": error}
        else:
            values = {"state": "failed", "last_error": error}
        with self.write() as conn:
            moved = conn.execute(
                update(notifications)
                .where(
                    notifications.c.id == delivery.id,
                    notifications.c.state == "sending",
                    notifications.c.attempts == delivery.attempt,
                )
                .values(updated_at=now, **values)
            ).rowcount
            _attempt(conn, delivery.id, delivery.attempt, started, now, ok, error)
        return bool(moved)

    # ------------------------------------------------------------------------------ reading

    def notification_cursor(self) -> int | None:
        """The last event id the outbox has read (None: no scheduler has matched yet)."""
        with self.read() as conn:
            position: int | None = conn.execute(
                select(event_cursors.c.position).where(event_cursors.c.name == CURSOR)
            ).scalar()
        return position

    def deliveries(
        self,
        *,
        failed: bool = False,
        run_id: int | None = None,
        rule: str | None = None,
        limit: int = 50,
    ) -> list[DeliveryRecord]:
        """The latest messages, newest first, with their attempts; ``failed``: those that gave up
        or whose last attempt failed."""
        stmt = select(notifications).order_by(notifications.c.id.desc()).limit(limit)
        if failed:
            stmt = stmt.where(
                or_(
                    notifications.c.state == "failed",
                    and_(notifications.c.state == "pending", notifications.c.last_error.is_not(None)),
                )
            )
        if run_id is not None:
            stmt = stmt.where(notifications.c.run_id == run_id)
        if rule is not None:
            stmt = stmt.where(notifications.c.rule == rule)
        with self.read() as conn:
            rows = conn.execute(stmt).all()
            history: dict[int, list[DeliveryAttempt]] = {}
            for ids in chunks([r.id for r in rows]):
                for a in conn.execute(
                    select(notification_attempts)
                    .where(notification_attempts.c.notification_id.in_(list(ids)))
                    .order_by(notification_attempts.c.id)
                ):
                    history.setdefault(a.notification_id, []).append(
                        DeliveryAttempt(a.attempt, a.started_at, a.finished_at, a.ok, a.error)
                    )
        return [
            DeliveryRecord(
                id=r.id,
                rule=r.rule,
                channel=r.channel,
                event=r.event,
                event_key=r.event_key,
                run_id=r.run_id,
                deployment=r.deployment,
                state=r.state,
                attempts=r.attempts,
                max_attempts=r.max_attempts,
                next_attempt_at=r.next_attempt_at,
                last_error=r.last_error,
                created_at=r.created_at,
                delivered_at=r.delivered_at,
                history=history.get(r.id, []),
            )
            for r in rows
        ]

    def prune_notifications(self, cutoff: datetime, batch: int = 1000) -> int:
        """Delete up to ``batch`` messages settled before ``cutoff`` (with their attempts)."""
        with self.write() as conn:
            old = (
                conn.execute(
                    select(notifications.c.id)
                    .where(
                        notifications.c.updated_at < cutoff,
                        notifications.c.state.in_(["delivered", "failed", "throttled"]),
                    )
                    .limit(batch)
                )
                .scalars()
                .all()
            )
            if old:
                conn.execute(
                    delete(notification_attempts).where(notification_attempts.c.notification_id.in_(old))
                )
                conn.execute(delete(notifications).where(notifications.c.id.in_(old)))
        return len(old)
