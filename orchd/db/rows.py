"""Rows to read models: the one place that knows how a table's columns become an ``orchd.models``
object, so no row (and no column name) leaves the data layer."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from sqlalchemy import Row

from orchd.db.schema import deployments, runs
from orchd.models import (
    Deployment,
    DeploymentSpec,
    HeldRun,
    LogLine,
    Pool,
    Run,
    RunLink,
    RunOutcome,
    Schedule,
    SchedulerSeen,
    StateChange,
    TimelineBar,
    Worker,
)
from orchd.schedules import ScheduleSpec
from orchd.states import RunState

T = TypeVar("T")

#: The columns a ``Run`` is read from (runs joined with deployments for the name).
RUN_COLUMNS = (
    runs.c.id,
    deployments.c.name.label("deployment"),
    runs.c.schedule_id,
    runs.c.pool,
    runs.c.state,
    runs.c.attempt,
    runs.c.max_attempts,
    runs.c.priority,
    runs.c.scheduled_for,
    runs.c.due_at,
    runs.c.started_at,
    runs.c.finished_at,
    runs.c.exit_code,
    runs.c.worker,
    runs.c.pid,
    runs.c.parameters,
    runs.c.error,
    runs.c.result,
    runs.c.upstream_run_id,
)


def _pick(cls: type[T], row: Row[Any], **converted: Any) -> T:
    """``cls`` from the row's columns of the same names (extra columns are ignored, so a column
    added to a table does not break its readers); ``converted`` overrides some of them."""
    mapping = row._mapping
    return cls(**{name: converted[name] if name in converted else mapping[name] for name in _names(cls)})


#: each read model's field names, by class
_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    """The field names of a read model (looked up once: a page maps thousands of rows)."""
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def run(row: Row[Any]) -> Run:
    return _pick(Run, row, state=RunState(row.state))


def state_change(row: Row[Any]) -> StateChange:
    """From a ``run_states`` row, with the deployment's name where the select joined it."""
    source = RunState(row.from_state) if row.from_state else None
    deployment = row._mapping.get("deployment")
    return _pick(StateChange, row, from_state=source, to_state=RunState(row.to_state), deployment=deployment)


def run_outcome(row: Row[Any]) -> RunOutcome:
    return _pick(RunOutcome, row, state=RunState(row.state))


def timeline_bar(row: Row[Any], deployment: str) -> TimelineBar:
    """From a run that started; an active one has no end yet."""
    end = row._mapping.get("finished_at")
    return TimelineBar(row.id, deployment, RunState(row.state), row.started_at, end)


def held_run(row: Row[Any], deployment: str) -> HeldRun:
    return HeldRun(row.id, deployment, RunState(row.state))


def run_link(row: Row[Any]) -> RunLink:
    return _pick(RunLink, row, state=RunState(row.state))


def log_line(row: Row[Any]) -> LogLine:
    return _pick(LogLine, row)


def worker(row: Row[Any]) -> Worker:
    return _pick(Worker, row)


def scheduler_seen(row: Row[Any]) -> SchedulerSeen:
    return _pick(SchedulerSeen, row)


def pool(row: Row[Any]) -> Pool:
    return _pick(Pool, row)


def deployment(row: Row[Any]) -> Deployment:
    """From a full ``deployments`` row."""
    return _pick(Deployment, row, spec=DeploymentSpec.from_json(row.spec))


def schedule_spec(row: Row[Any]) -> ScheduleSpec:
    """The definition of a ``schedules`` row (or of a select that has its columns)."""
    return ScheduleSpec(row.kind, row.expr, row.timezone, row.anchor, row.active, row.parameters, row.jitter)


def schedule(row: Row[Any]) -> Schedule:
    return Schedule(row.id, row.deployment_id, schedule_spec(row), row.next_fire_at, row.archived_at)
