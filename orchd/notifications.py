"""Notification rules, pure: which events a rule takes, what a message says, and how the event
log's cursor moves past ids a transaction may still commit.

The event log is ``run_states`` (one row per transition, written with it).  The data layer
(``orchd.db.notifications``) reads it after a cursor, asks this module which rules match, and
writes each (rule, event, channel) into the outbox under a unique key; the scheduler's
dispatcher (``orchd.scheduler.notifications``) sends what the outbox holds through
``orchd.channels``.  Nothing here reads a clock or a database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from orchd.config.model import NotificationConfig
from orchd.durations import format_duration
from orchd.models import RunEvent
from orchd.states import RETRYABLE

#: The outbox's consumer name in ``event_cursors``.
CURSOR = "notifications"
#: Lines of a run's output a message carries.
TAIL_LINES = 20
#: A gap in the event ids (a transaction that had taken the ids but not committed when the log
#: was read) is looked at again until this old; then it is a rolled-back transaction's, dropped.
GAP_GRACE = 300.0
#: At most this many gaps are remembered (the oldest go first).
MAX_GAPS = 200


@dataclass(frozen=True)
class Rule:
    """A rule of the config and the ids of its channels (one outbox row per channel)."""

    config: NotificationConfig
    #: channel id -> what it sends to ("webhook", "command", or an Apprise URL)
    channels: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    def covers(self, deployment: str | None, tags: Sequence[str]) -> bool:
        """The rule is about this deployment: named (or globbed), tagged, or the rule names none.
        Events of no deployment (WORKER_OFFLINE) concern every rule that asks for them."""
        cfg = self.config
        if deployment is None or not (cfg.deployments or cfg.tags):
            return True
        return any(fnmatchcase(deployment, glob) for glob in cfg.deployments) or bool(
            set(cfg.tags) & set(tags)
        )

    def takes(self, event: RunEvent) -> list[str]:
        """The event names of ``event`` this rule is on: its state (a failure only when final, if
        the rule says final_only) and RECOVERED."""
        cfg = self.config
        if not self.covers(event.deployment, event.tags):
            return []
        names: list[str] = []
        if event.state.value in cfg.on and not (
            cfg.final_only and event.state in RETRYABLE and event.retried
        ):
            names.append(event.state.value)
        if event.recovered and "RECOVERED" in cfg.on:
            names.append("RECOVERED")
        return names


def channel_ids(cfg: NotificationConfig, urls: Iterable[str]) -> dict[str, str]:
    """Each channel of a rule under a stable id: "webhook", "command", and "apprise-" plus a hash of
    each URL (a secret in it never shows, and reordering the list changes nothing)."""
    found: dict[str, str] = {}
    for url in urls:
        found["apprise-" + hashlib.sha256(url.encode()).hexdigest()[:12]] = url
    if cfg.webhook:
        found["webhook"] = cfg.webhook
    if cfg.command:
        found["command"] = "command"
    return found


def retry_delay(attempt: int) -> float:
    """Seconds before the attempt after ``attempt`` (1-based): 5 s, 15 s, 45 s, ... at most an hour."""
    return float(min(3600, 5 * 3 ** min(attempt - 1, 10)))


def run_link(public_url: str, run_id: int | None) -> str | None:
    return f"{public_url}runs/{run_id}" if public_url and run_id is not None else None


def event_key(kind: str, *parts: object) -> str:
    """The stable name of an event: a state change by its log id; LATE by run and attempt (a
    retry can be late again); WORKER_OFFLINE by worker and the start it went silent in."""
    return ":".join([kind.lower(), *map(str, parts)])


# ---------------------------------------------------------------------------------- messages


def _duration(payload: Mapping[str, Any]) -> str | None:
    seconds = payload.get("duration_seconds")
    return None if seconds is None else format_duration(float(seconds))


def render(payload: Mapping[str, Any], suppressed: int = 0) -> tuple[str, str]:
    """The title and body of a message: what a person needs at 3 a.m., most important first."""
    event = payload["event"]
    if event == "WORKER_OFFLINE":
        title = f"orchd: worker {payload.get('worker')} offline"
        lines = [
            f"Worker {payload.get('worker')} on {payload.get('host')} stopped heartbeating "
            f"(last heartbeat {payload.get('last_heartbeat')}).",
            f"Pools: {', '.join(payload.get('pools') or [])}",
        ]
    else:
        attempt = f"attempt {payload.get('attempt')}/{payload.get('max_attempts')}"
        title = f"orchd: {payload.get('deployment')} {event} ({attempt})"
        lines = [f"Deployment: {payload.get('deployment')}", f"Run: {payload.get('run_id')}"]
        lines.append(
            f"State: {payload.get('state')}" + (f" ({event})" if event != payload.get("state") else "")
        )
        lines.append(f"Attempt: {payload.get('attempt')}/{payload.get('max_attempts')}")
        for label, key in (("Exit code", "exit_code"), ("Host", "host"), ("Scheduled for", "scheduled_for")):
            if payload.get(key) is not None:
                lines.append(f"{label}: {payload[key]}")
        if (took := _duration(payload)) is not None:
            lines.append(f"Duration: {took}")
        if payload.get("late_by_seconds") is not None:
            lines.append(f"Late by: {format_duration(float(payload['late_by_seconds']))}, no worker took it")
        if payload.get("error"):
            lines.append(f"Error: {payload['error']}")
        if payload.get("url"):
            lines.append(f"Link: {payload['url']}")
        if tail := payload.get("output_tail"):
            lines += ["", f"Last {len(tail)} lines of output:", *tail]
    if suppressed:
        title += f" (+{suppressed} more)"
        lines.insert(0, f"+{suppressed} more held back by the rule's throttle since the last message.")
    return title, "\n".join(lines)


def run_payload(
    *,
    event: str,
    key: str,
    rule: str,
    run: Mapping[str, Any],
    at: datetime,
    public_url: str,
    tail: Sequence[str] = (),
) -> dict[str, Any]:
    """The event as JSON (the webhook's body, a command's stdin): the run's facts at match time.
    ``run`` holds deployment, run_id, state, attempt, max_attempts, exit_code, error, host,
    worker, scheduled_for, started_at, finished_at (datetimes or None)."""
    started, finished = run.get("started_at"), run.get("finished_at")
    duration = (finished - started).total_seconds() if started and finished else None
    error = run.get("error")
    return {
        "event": event,
        "event_key": key,
        "rule": rule,
        "at": at.isoformat(),
        "deployment": run.get("deployment"),
        "run_id": run.get("run_id"),
        "state": run.get("state"),
        "attempt": run.get("attempt"),
        "max_attempts": run.get("max_attempts"),
        "exit_code": run.get("exit_code"),
        "duration_seconds": duration,
        # the error line: the first, a traceback's last is in the output tail
        "error": error.splitlines()[0] if error else None,
        "host": run.get("host"),
        "worker": run.get("worker"),
        "scheduled_for": _iso(run.get("scheduled_for")),
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "late_by_seconds": run.get("late_by_seconds"),
        "url": run_link(public_url, run.get("run_id")),
        "output_tail": list(tail[-TAIL_LINES:]),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# ---------------------------------------------------------------------------------- the cursor

#: A gap in the ids read: [low, high, first seen (epoch seconds)].
Gap = list[float]


def advance(position: int, gaps: Sequence[Gap], read: Sequence[int], now: float) -> tuple[int, list[Gap]]:
    """The cursor after a pass that read the event ids ``read`` (sorted): those above
    ``position`` and any inside ``gaps``.

    PostgreSQL hands out ids when rows are inserted, not when they commit, so a transaction that
    commits late shows ids below others already read.  Every id skipped between two read is a
    gap, looked at again (and the events found there matched) until ``GAP_GRACE`` has passed:
    then it is a rolled-back transaction's and dropped.  The outbox's unique key makes reading
    an event twice harmless; skipping one is what this prevents."""
    kept: list[Gap] = []
    found = sorted(read)
    for low, high, seen in gaps:
        if now - seen > GAP_GRACE:
            continue
        inside = [i for i in found if low <= i <= high]
        start = int(low)
        for i in inside:  # split the gap around what arrived
            if i > start:
                kept.append([start, i - 1, seen])
            start = i + 1
        if start <= high:
            kept.append([start, int(high), seen])
    previous = position
    for i in (i for i in found if i > position):
        if i > previous + 1:
            kept.append([previous + 1, i - 1, now])
        previous = i
    kept.sort(key=lambda gap: gap[0])
    return previous, kept[-MAX_GAPS:]
