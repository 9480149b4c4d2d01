"""orchd's typed vocabulary: what the data layer hands to the daemons, the CLI, the web and metrics.

Every reader of the database gets one of these frozen objects, never a database row, so a reader
needs no SQL and no knowledge of column names, and a deployment's settings are read as typed
attributes whose defaults come from the config declarations (``orchd.config.model``), stated
once.  This module imports no SQLAlchemy: ``orchd.db`` builds these objects from rows (the
shape of a row is its business), and the pure core (``orchd.scheduler.plan``, the policies)
works on them without a database.

Read models are snapshots: each was read in one short transaction and may be stale the moment
it is returned.  Whoever acts on one does so through a data-layer call whose guarded UPDATE
re-checks the state (see ``orchd.states``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from orchd.config.fields import parsed_defaults
from orchd.config.model import DeploymentConfig, SchedulerConfig
from orchd.schedules import ScheduleSpec
from orchd.states import RunState

# ---------------------------------------------------------------------------------- deployments


@dataclass(frozen=True)
class DeploymentSpec:
    """A deployment's settings as stored in ``deployments.spec`` (JSON): what a worker needs to
    run it and the scheduler to plan it.  The JSON is the same as ever (no migration): one key
    per field, and a key missing from an older row reads as its config default."""

    description: str
    command: Sequence[str]
    parameters: Mapping[str, Any]
    env: Mapping[str, str]
    working_dir: str
    timeout: float | None
    retries: int
    retry_delay: float
    retry_backoff: float
    #: Resolved: the deployment's own catch-up, or scheduler.catchup when it has none.
    catchup: str
    tags: Sequence[str]
    shell: bool
    entrypoint: str
    python: str
    max_active_runs: int | None
    overlap: str
    #: Container runs only (empty: a process): the image, and the container settings, already
    #: merged with the pool's and validated (the keys of ``orchd.config.model.ContainerConfig``).
    image: str
    container: Mapping[str, Any]

    @classmethod
    def from_config(cls, dep: DeploymentConfig, default_catchup: str) -> DeploymentSpec:
        values = {name: getattr(dep, name) for name in _SPEC_FIELDS}
        return cls(**{**values, "catchup": dep.catchup or default_catchup})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeploymentSpec:
        """Unknown keys (written by a newer orchd) are ignored; missing ones take their default."""
        return cls(**{name: _plain(data.get(name, default)) for name, default in _SPEC_DEFAULTS.items()})

    def to_json(self) -> dict[str, Any]:
        """The container keys only for container runs, so the JSON (and the config hash) of every
        other deployment stays as it was before containers existed."""
        skip = () if self.image else _CONTAINER_FIELDS
        return {name: _plain(getattr(self, name)) for name in _SPEC_FIELDS if name not in skip}

    @property
    def max_attempts(self) -> int:
        """Attempts a new run gets: the first one plus ``retries``."""
        return 1 + int(self.retries)

    @property
    def active_cap(self) -> int | None:
        """How many of its runs may be active at once: max_active_runs, or 1 when an overlap policy
        is set without one; None for no limit."""
        if self.max_active_runs:
            return int(self.max_active_runs)
        return 1 if self.overlap != "allow" else None

    def run_parameters(self, *overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        """A new run's parameters: the deployment's, updated by each of ``overrides`` in turn."""
        merged = dict(self.parameters)
        for extra in overrides:
            merged.update(extra or {})
        return merged


def _plain(value: Any) -> Any:
    """JSON's own containers for the sequences and mappings a spec holds."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list | tuple):
        return list(value)
    return value


_SPEC_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DeploymentSpec))
_CONTAINER_FIELDS = ("image", "container")
_SPEC_DEFAULTS: dict[str, Any] = {
    **{name: value for name, value in parsed_defaults(DeploymentConfig).items() if name in _SPEC_FIELDS},
    "catchup": parsed_defaults(SchedulerConfig)["catchup"],
}


@dataclass(frozen=True)
class Deployment:
    id: int
    name: str
    pool: str
    priority: int
    paused: bool
    archived_at: datetime | None
    created_at: datetime
    updated_at: datetime
    spec: DeploymentSpec

    @property
    def status(self) -> str:
        """archived (removed from the config), paused, or active."""
        return "archived" if self.archived_at is not None else "paused" if self.paused else "active"


@dataclass(frozen=True)
class Schedule:
    """A schedule as stored: its row id and definition (whose key materialized runs carry), and
    its materialization cursor."""

    id: int
    deployment_id: int
    spec: ScheduleSpec
    next_fire_at: datetime | None = None
    archived_at: datetime | None = None


@dataclass
class SyncReport:
    """What applying the config changed."""

    created: int = 0
    updated: int = 0
    archived: int = 0
    schedules_added: int = 0
    schedules_removed: int = 0


# ---------------------------------------------------------------------------------- the queue


@dataclass(frozen=True)
class Run:
    """One run as the CLI, the web and scripts see it (the columns of `orchd run show`)."""

    id: int
    deployment: str
    schedule_id: int | None
    pool: str
    state: RunState
    attempt: int
    max_attempts: int
    priority: int
    scheduled_for: datetime
    due_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    worker: str | None
    pid: int | None
    parameters: Mapping[str, Any]
    error: str | None
    result: Any
    #: A triggered run: the run whose end queued it (a run chain).
    upstream_run_id: int | None = None


@dataclass(frozen=True)
class RunLink:
    """Another run as a run's page links to it: which, of what, how it stands."""

    id: int
    deployment: str
    state: RunState


@dataclass(frozen=True)
class TriggerEdge:
    """A trigger as the database has it: runs of ``upstream`` ending in one of ``states`` queue a
    run of ``downstream``."""

    upstream: str
    downstream: str
    states: Sequence[RunState]


@dataclass(frozen=True)
class RunChain:
    """A run's place in run chains: the run that triggered it and those it triggered."""

    #: The triggering run's id (kept when retention deleted that run: then ``upstream`` is None).
    upstream_run_id: int | None
    upstream: RunLink | None
    downstream: Sequence[RunLink]


@dataclass(frozen=True)
class StateChange:
    """One transition of a run, as recorded in the same transaction that made it: the event."""

    id: int
    run_id: int
    #: None for the row recording the run's creation.
    from_state: RunState | None
    to_state: RunState
    attempt: int
    at: datetime
    actor: str | None
    reason: str | None
    #: The run's deployment, where the reader asked for it (the live feed's changes of every run);
    #: None in one run's own history, whose deployment the run says.
    deployment: str | None = None


@dataclass(frozen=True)
class LogLine:
    """One line of a run's captured output; ``id`` orders lines and is the cursor to follow them."""

    id: int
    run_id: int
    attempt: int
    at: datetime
    stream: str
    line: str


@dataclass(frozen=True)
class Upstream:
    """The run whose end triggered a run (a run chain), as the triggered run's process sees it."""

    run_id: int
    #: Its stored JSON result (None: it returned none, or retention deleted it).
    result: Any


@dataclass(frozen=True)
class ClaimedRun:
    """What a worker needs to execute one run it has claimed."""

    id: int
    deployment: str
    attempt: int
    max_attempts: int
    scheduled_for: datetime
    parameters: Mapping[str, Any]
    spec: DeploymentSpec
    upstream: Upstream | None = None


@dataclass(frozen=True)
class DueSchedule:
    """A schedule whose cursor is inside the scheduler's horizon, with what its runs need."""

    id: int
    deployment_id: int
    deployment: str
    spec: ScheduleSpec
    next_fire_at: datetime
    pool: str
    priority: int
    max_attempts: int
    catchup: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class Materialization:
    """Runs to insert for one schedule and where its cursor moves next (None: exhausted)."""

    schedule: DueSchedule
    fire_times: Sequence[datetime]
    next_fire_at: datetime | None


@dataclass(frozen=True)
class Upkeep:
    """What one upkeep did, and when it will next have something to do."""

    crashed: list[int]
    missed: list[int]
    #: The earliest lease end, misfire or worker silence it saw coming (None: nothing live).
    #: Past when it found work: it may have left some for the next call (500 of each at most).
    next_due: datetime | None


@dataclass
class TickReport:
    """What one scheduler tick did."""

    schedules: int = 0
    created: int = 0
    crashed: int = 0
    missed: int = 0
    pruned: int = 0
    #: How long the tick took.
    seconds: float = 0.0


# ---------------------------------------------------------------------------------- fleet


@dataclass(frozen=True)
class Worker:
    """A worker daemon as it last reported itself."""

    name: str
    host: str
    pid: int
    pools: Sequence[str]
    concurrency: int
    running: int
    version: str
    #: online, offline (marked silent by the scheduler) or stopped; see ``status_at``.
    status: str
    started_at: datetime
    last_heartbeat: datetime

    def status_at(self, now: datetime, timeout: float) -> str:
        """online only while it heartbeats: the scheduler marks silent workers offline, but it may
        be the one that is down."""
        if self.status == "online" and self.last_heartbeat < now - timedelta(seconds=timeout):
            return "offline"
        return self.status


@dataclass(frozen=True)
class OverdueRun:
    """A run a schedule materialized that is still waiting although its fire time passed while no
    scheduler was running: what catch-up judges on taking over, like the fire times it never
    materialized."""

    id: int
    schedule_id: int
    scheduled_for: datetime
    #: The deployment's catch-up policy: none, latest or all.
    catchup: str
    #: The schedule's materialization cursor (None: exhausted), and its definition.
    cursor: datetime | None
    spec: ScheduleSpec


@dataclass(frozen=True)
class Heartbeat:
    """What a worker learns from its heartbeat: the runs it still holds, with their state (a
    CANCELLING one was asked to stop), and whether the database still knows the worker at all
    (not after `orchd db reset`: it must register again)."""

    held: Mapping[int, RunState]
    known: bool


@dataclass(frozen=True)
class SchedulerSeen:
    """A scheduler daemon as it last recorded itself: leader or standby."""

    name: str
    host: str
    pid: int
    role: str
    version: str
    started_at: datetime
    #: Written with every record (the column allows NULL only for historical reasons).
    last_tick_at: datetime


@dataclass(frozen=True)
class Pool:
    name: str
    concurrency_limit: int | None
    paused: bool
    created_at: datetime
    updated_at: datetime


# ---------------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class LastRun:
    id: int
    state: RunState
    finished_at: datetime


@dataclass(frozen=True)
class DeploymentReport:
    deployment: Deployment
    #: Active schedules.
    schedules: int
    next_run_at: datetime | None
    #: The latest finished run.
    last_run: LastRun | None


@dataclass(frozen=True)
class PoolReport:
    name: str
    concurrency_limit: int | None
    paused: bool
    due: int = 0
    upcoming: int = 0
    oldest_due: datetime | None = None
    active: int = 0
    workers: int = 0
    slots: int = 0
    #: Deployments (not archived, not paused) whose runs go to this pool.
    deployments: int = 0


@dataclass(frozen=True)
class Health:
    """Everything `orchd status` judges, read in one short read-only transaction."""

    now: datetime
    leader: SchedulerSeen | None
    #: Standby schedulers seen within the worker timeout.
    standbys: int
    pools: list[PoolReport]
    workers_online: int
    late: list[int]
    stuck: list[int]
    failures: int


# ---------------------------------------------------------------------------------- what people browse


@dataclass(frozen=True)
class RunFilter:
    """Which runs to list: what `orchd run ls` filters on, plus a time range and text in the error."""

    states: Sequence[str] = ()
    #: A deployment's name.
    deployment: str | None = None
    pool: str | None = None
    #: Scheduled at or after / before.
    since: datetime | None = None
    until: datetime | None = None
    #: In the error, case-insensitively.
    text: str | None = None


@dataclass(frozen=True)
class RunPage:
    """One page of a run list, and where the next one starts."""

    runs: list[Run]
    #: (time, id) of the last run shown, when there are more: the keyset cursor of the next page.
    next: tuple[datetime, int] | None


@dataclass(frozen=True)
class RunOutcome:
    """A finished run, as far as a strip of coloured squares and a duration sparkline need it."""

    id: int
    state: RunState
    scheduled_for: datetime
    #: None if it never started (cancelled or missed while waiting).
    started_at: datetime | None
    finished_at: datetime

    @property
    def took(self) -> float | None:
        """Seconds it ran; None if it never started."""
        return None if self.started_at is None else (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class Strip:
    """A deployment's last finished runs, newest first."""

    runs: list[RunOutcome]

    @property
    def success_rate(self) -> float | None:
        """COMPLETED among the runs that were not cancelled; None when there are none."""
        judged = [r for r in self.runs if r.state != RunState.CANCELLED]
        return sum(r.state == RunState.COMPLETED for r in judged) / len(judged) if judged else None

    @property
    def durations(self) -> list[float]:
        """How long each run that started took, oldest first (a sparkline's points)."""
        return [took for r in reversed(self.runs) if (took := r.took) is not None]


@dataclass(frozen=True)
class TimelineBar:
    """A run on the overview's timeline: from its start to its end (None: still active)."""

    id: int
    deployment: str
    state: RunState
    start: datetime
    end: datetime | None


@dataclass(frozen=True)
class Overview:
    """What happened lately: runs finished per hour by state, the runs of a recent window as
    timeline bars, and the last failures."""

    #: The start of each hour, oldest first; the last one is the current hour.
    hours: list[datetime]
    #: hour start -> final state -> runs that finished in that hour
    outcomes: Mapping[datetime, Mapping[str, int]]
    #: Active runs first, then finished ones, latest first.
    bars: list[TimelineBar]
    #: Newest first.
    failures: list[Run]


@dataclass(frozen=True)
class HeldRun:
    """A run a worker holds now (claimed, running or being cancelled)."""

    id: int
    deployment: str
    state: RunState


# ---------------------------------------------------------------------------------- notifications


@dataclass(frozen=True)
class RunEvent:
    """One entry of the event log (a ``run_states`` row) with what a notification rule filters on."""

    id: int
    run_id: int
    deployment: str
    tags: Sequence[str]
    state: RunState
    attempt: int
    max_attempts: int
    at: datetime
    #: A retry was queued in the same transaction: this failure is not the run's last word.
    retried: bool
    #: A COMPLETED run after one or more runs of its deployment that ended in failure.
    recovered: bool


@dataclass(frozen=True)
class Delivery:
    """One message of the outbox being sent: a (rule, event, channel) and its attempt number."""

    id: int
    rule: str
    channel: str
    event_key: str
    event: str
    attempt: int
    max_attempts: int
    payload: Mapping[str, Any]
    #: Messages of the same rule and deployment held back by its throttle since the last one sent.
    suppressed: int
    #: The previous attempt's outcome was never recorded (the scheduler stopped while sending):
    #: this attempt may repeat a message that arrived.
    repeat: bool

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts, restarts and schedulers: receivers drop a message they have seen."""
        return f"{self.rule}.{self.event_key}.{self.channel}"


@dataclass(frozen=True)
class DeliveryAttempt:
    attempt: int
    started_at: datetime
    finished_at: datetime
    ok: bool
    error: str | None


@dataclass(frozen=True)
class DeliveryRecord:
    """A message of the outbox as `orchd notification log` shows it, with its attempts."""

    id: int
    rule: str
    channel: str
    event: str
    event_key: str
    run_id: int | None
    deployment: str | None
    #: pending, sending, delivered, failed, or throttled (counted in the next message).
    state: str
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    history: Sequence[DeliveryAttempt]


@dataclass(frozen=True)
class MatchReport:
    """What one pass over the event log did."""

    events: int = 0
    queued: int = 0
    throttled: int = 0
