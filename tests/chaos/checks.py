"""The invariants a chaos run must keep, as pure functions of what was observed.

Inputs are the database rows (runs, their state history, schedules), the ledger every run's child
wrote (a "start" and an "end" line per execution) and what the harness did (kills, the database
restart).  Each check returns violations; the harness prints them and exits non-zero on any.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from orchd.schedules import parse_schedule
from orchd.states import ACTIVE, RETRYABLE, RunState
from tests.chaos.fleet import Orphan

S = RunState
#: Transitions that end an execution (the child is gone or being killed when they are written).
_ENDINGS = {S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CRASHED, S.CANCELLED, S.SCHEDULED}


@dataclass(frozen=True)
class Job:
    """A deployment of the chaos config and what each of its attempts must end in."""

    name: str
    every: str
    seconds: float  # how long its command runs
    status: int  # its command's exit status
    retries: int
    outcome: RunState  # how every attempt ends unless its worker dies: COMPLETED, FAILED, TIMED_OUT
    timeout: str = ""
    overlap: str = "allow"
    #: Run chains: (upstream deployment, the states of its runs' ends that queue a run of this one).
    #: A job with triggers and no ``every`` runs only when triggered.
    triggers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: Where its interval counts from (ISO date-time; empty: the epoch, as every other's).
    anchor: str = ""

    @property
    def schedule(self) -> dict[str, str]:
        return {"interval": self.every, **({"anchor": self.anchor} if self.anchor else {})}


@dataclass(frozen=True)
class Violation:
    """One broken invariant: ``check`` names it (the short test matches known orchd bugs on it)."""

    check: str
    detail: str


@dataclass
class Execution:
    """One execution of a run's command, from the ledger; ``end`` is None when it wrote no end line."""

    run_id: int
    attempt: int
    pid: int
    worker_pid: int
    start: float
    end: float | None = None
    status: str | None = None


@dataclass(frozen=True)
class NotifyRule:
    """The chaos config's notification rule: a command appending each message's idempotency key to
    a ledger of its own."""

    name: str
    on: frozenset[str]
    deployments: frozenset[str]


@dataclass(frozen=True)
class Observed:
    """Everything the checks look at, gathered once the fleet is drained and stopped."""

    jobs: Sequence[Job]
    runs: Sequence[Any]  # rows: id, deployment, schedule_key, scheduled_for, due_at, state, attempt, ...
    history: Mapping[int, Sequence[Any]]  # run id -> run_states rows in order
    schedules: Sequence[Any]  # rows: deployment, key, created_at
    executions: Sequence[Execution]
    worker_kills: Mapping[int, float]  # worker pid -> time it was SIGKILLed and gone
    outages: Sequence[tuple[float, float]]  # database down (stop, back up)
    window: tuple[datetime, datetime]  # chaos start and end
    drained_at: datetime  # no run was due or active at this moment
    lease: float
    orphans: Sequence[Orphan]
    notify_rule: NotifyRule | None = None
    #: The outbox rows (rule, event_key, channel, state, last_error, id) and each one's attempts.
    notifications: Sequence[Any] = ()
    notify_attempts: Mapping[int, Sequence[Any]] = field(default_factory=dict)
    #: The idempotency keys the rule's command received, in order (repeats included).
    notified: Sequence[str] = ()
    #: Where the outbox's cursor ended: later events came after the schedulers were stopped.
    notify_upto: int | None = None


def read_ledger(path: Path) -> tuple[list[Execution], list[Violation]]:
    """Pair each execution's start and end lines (keyed by run, attempt and the child's pid)."""
    executions: dict[tuple[int, int, int], Execution] = {}
    problems = []
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        parts = line.split()
        try:
            kind, run_id, attempt, pid = parts[0], int(parts[1]), int(parts[2]), int(parts[3])
            value, at = parts[4], float(parts[5])
        except (IndexError, ValueError):
            problems.append(Violation("ledger", f"unreadable line {line!r}"))
            continue
        key = (run_id, attempt, pid)
        if kind == "start" and key not in executions:
            executions[key] = Execution(run_id, attempt, pid, int(value), at)
        elif kind == "end" and key in executions and executions[key].end is None:
            executions[key].end, executions[key].status = at, value
        else:
            problems.append(Violation("ledger", f"unexpected line {line!r}"))
    return sorted(executions.values(), key=lambda e: e.start), problems


def check_all(obs: Observed) -> list[Violation]:
    return [
        *check_settled(obs),
        *check_unique(obs),
        *check_fire_times(obs),
        *check_executions(obs),
        *check_retries(obs),
        *check_orphans(obs),
        *check_triggers(obs),
        *check_notifications(obs),
    ]


def check_settled(obs: Observed) -> list[Violation]:
    """Every run is finished or scheduled for later: nothing stuck, nothing due left behind."""
    found = []
    executed = {(e.run_id, e.attempt) for e in obs.executions}
    for r in obs.runs:
        state = S(r.state)
        if state in ACTIVE:
            detail = (
                f"run {r.id} ({r.deployment}) is {state} after the drain: worker {r.worker}, "
                f"claimed {_iso(r.claimed_at)}, lease until {_iso(r.lease_expires_at)}, "
                f"attempt {r.attempt}/{r.max_attempts}"
            )
            check = "stuck"
            if state == S.PENDING and r.lease_expires_at - r.claimed_at > timedelta(seconds=2 * obs.lease):
                # Its lease was extended long after a claim that never became RUNNING: the claiming
                # worker heartbeats a run it does not (or no longer) execute.
                check = "stuck claim"
                ran = (r.id, r.attempt) in executed
                detail += (
                    "; its command ran (ledger) but RUNNING was never recorded" if ran else "; never started"
                )
            found.append(Violation(check, detail + _history_text(obs, r.id)))
        elif state == S.SCHEDULED and r.due_at <= obs.drained_at:
            found.append(
                Violation(
                    "left behind",
                    f"run {r.id} ({r.deployment}) still SCHEDULED, due {_iso(r.due_at)}, "
                    f"before the drain ended at {_iso(obs.drained_at)}",
                )
            )
    return found


def check_unique(obs: Observed) -> list[Violation]:
    keys = Counter((r.deployment, r.schedule_key, r.scheduled_for) for r in obs.runs if r.schedule_key)
    return [
        Violation("duplicate", f"{dep} {key} {_iso(at)} materialized {n} times")
        for (dep, key, at), n in keys.items()
        if n > 1
    ]


def check_fire_times(obs: Observed, margin: float = 1.0) -> list[Violation]:
    """Each fire time of each schedule inside the chaos window has a run (in any state: a run the
    overlap policy skipped is recorded MISSED), and no run has a time its schedule never fires."""
    found = []
    created = {(s.deployment, s.key): s.created_at for s in obs.schedules}
    times: dict[tuple[str, str | None], set[datetime]] = defaultdict(set)
    for r in obs.runs:  # once: a scale run audits 10,000 schedules against tens of thousands of runs
        times[r.deployment, r.schedule_key].add(r.scheduled_for)
    for job in (j for j in obs.jobs if j.every):
        spec = parse_schedule(job.schedule)
        since = created.get((job.name, spec.key))
        if since is None:
            found.append(Violation("skipped", f"{job.name}: schedule {spec.key} was never created"))
            continue
        start = max(since, obs.window[0]) + timedelta(seconds=margin)
        expected = spec.fire_times(start, obs.window[1] - timedelta(seconds=margin), 1_000_000)
        have = times[job.name, spec.key]
        missing = [t for t in expected if t not in have]
        if missing:
            shown = ", ".join(_iso(t) for t in missing[:10])
            found.append(
                Violation(
                    "skipped",
                    f"{job.name}: {len(missing)} of {len(expected)} fire times have no run: {shown}",
                )
            )
        stray = sorted(t for t in have if spec.next_at_or_after(t) != t)
        if stray:
            found.append(
                Violation("fire time", f"{job.name}: runs at times the schedule never fires: {stray[:5]}")
            )
    return found


def check_executions(obs: Observed) -> list[Violation]:
    """No run executed twice at once, nor more often than it was claimed, nor without being recorded
    RUNNING (its outcome could not be recorded either); max_active_runs held."""
    found = []
    runs = {r.id: r for r in obs.runs}
    by_run: dict[int, list[Execution]] = defaultdict(list)
    for e in obs.executions:
        if e.run_id not in runs:
            found.append(Violation("ledger", f"execution of unknown run {e.run_id} (pid {e.pid})"))
            continue
        if e.end is None:
            e = replace(e, end=_end_bound(e, obs))
            if e.end is None:
                found.append(
                    Violation(
                        "unended",
                        f"run {e.run_id} attempt {e.attempt} (pid {e.pid}, worker pid {e.worker_pid}) "
                        f"wrote no end line, its worker was not killed and no transition ended it",
                    )
                )
                continue
        by_run[e.run_id].append(e)
    for run_id, executions in by_run.items():
        found += _overlaps(executions, f"run {run_id}", obs)
        claims = Counter(h.attempt for h in obs.history.get(run_id, ()) if h.to_state == S.PENDING)
        for attempt, n in Counter(e.attempt for e in executions).items():
            if n > claims[attempt]:
                found.append(
                    Violation(
                        "double execution",
                        f"run {run_id} attempt {attempt} executed {n} times but claimed {claims[attempt]}"
                        + _history_text(obs, run_id),
                    )
                )
        # A worker spawns the child, then records RUNNING with its pid: killed in between, the child
        # dies with it and the run is reaped from PENDING.  A child that ran to its end line, though,
        # was executed by a worker that lived on and could not record the run's outcome (unless the
        # database was away all that time: see _cut_off).
        started = {h.attempt for h in obs.history.get(run_id, ()) if h.to_state == S.RUNNING}
        for e in executions:
            if e.attempt not in started and e.status is not None and not _no_chance(e, obs):
                found.append(
                    Violation(
                        "unrecorded start",
                        f"run {run_id} attempt {e.attempt} executed to its end (pid {e.pid}, worker "
                        f"{e.worker_pid}, exit {e.status}) but was never recorded RUNNING"
                        + _history_text(obs, run_id),
                    )
                )
    for job in obs.jobs:
        if job.overlap != "allow":
            serial = [e for rid, es in by_run.items() if runs[rid].deployment == job.name for e in es]
            found += _overlaps(sorted(serial, key=lambda e: e.start), f"{job.name} (max_active_runs 1)", obs)
    return found


def _no_chance(e: Execution, obs: Observed) -> bool:
    """Its worker had no chance to record the start before its SIGKILL: it was killed right after
    spawning a child that ends at once, or the database was down (or just back, the worker still
    reconnecting) from the execution's start to the kill.  The reaper then retries the run, after
    the fact: at least once, never twice at once."""
    killed = obs.worker_kills.get(e.worker_pid)
    if killed is None:
        return False
    back = obs.lease + 5  # as unexplained_crashes: reconnecting takes a while on a busy machine
    return killed - e.start <= obs.lease or any(
        e.start <= up + back and stop <= killed <= up + back for stop, up in obs.outages
    )


def _end_bound(e: Execution, obs: Observed) -> float | None:
    """When an execution without an end line was over at the latest: its worker's kill, or the
    end its worker recorded first (a worker records an end only once the child is gone: one fenced
    by the guardian's SIGKILL writes no end line, and its worker lives on), else the transition
    that ended its attempt."""
    if e.worker_pid in obs.worker_kills:
        recorded = [
            float(h.at.timestamp())
            for h in obs.history.get(e.run_id, ())
            if h.attempt == e.attempt
            and h.from_state in ACTIVE
            and S(h.to_state) in _ENDINGS
            and (h.actor or "").rsplit("-", 1)[-1] == str(e.worker_pid)
            and h.at.timestamp() >= e.start
        ]
        return min([obs.worker_kills[e.worker_pid], *recorded])
    for h in obs.history.get(e.run_id, ()):
        if (
            h.attempt == e.attempt
            and h.from_state in ACTIVE
            and S(h.to_state) in _ENDINGS
            and h.at.timestamp() >= e.start
        ):
            return float(h.at.timestamp())
    return None


def _overlaps(executions: Sequence[Execution], what: str, obs: Observed) -> list[Violation]:
    found = []
    ordered = sorted(executions, key=lambda e: e.start)
    for a, b in pairwise(ordered):
        assert a.end is not None
        if b.start < a.end:
            how = "its end line" if a.status else "a kill or a transition"
            found.append(
                Violation(
                    "overlap",
                    f"{what}: run {b.run_id} attempt {b.attempt} (pid {b.pid}, worker {b.worker_pid}) "
                    f"started {a.end - b.start:.3f}s before run {a.run_id} attempt {a.attempt} (pid {a.pid}, "
                    f"worker {a.worker_pid}, ended by {how}) was over" + _history_text(obs, a.run_id),
                )
            )
    return found


def check_orphans(obs: Observed) -> list[Violation]:
    """Nothing of a run outlives its SIGKILLed worker: the reaper re-queues the run once the lease
    expires, and a survivor would then run alongside the retry (the ledger cannot see it: the shell
    that writes the end line is the process that did die)."""
    found = []
    for o in obs.orphans:
        lived = f"lived {o.died_at - o.killed_at:.1f}s" if o.died_at else "was still running at the audit"
        detail = (
            f"pid {o.pid} `{o.cmdline}` of run {o.run_id} attempt {o.attempt} {lived} after its worker "
            f"(pid {o.worker_pid}) was SIGKILLed"
        )
        retries = [
            e
            for e in obs.executions
            if e.run_id == o.run_id and e.attempt > o.attempt and (o.died_at is None or e.start < o.died_at)
        ]
        for e in retries:
            detail += (
                f"; attempt {e.attempt} started {e.start - o.killed_at:.1f}s after the kill, while it still "
                "ran: the run executed twice at once"
            )
        found.append(Violation("orphan", detail))
    return found


def check_retries(obs: Observed) -> list[Violation]:
    """Attempts follow the policy: one retry per failed attempt while attempts remain, each attempt
    ends as the job's command dictates (or CRASHED), and a run ends failed only when out of attempts."""
    found = []
    jobs = {j.name: j for j in obs.jobs}
    for r in obs.runs:
        job = jobs[r.deployment]
        steps = obs.history.get(r.id, ())
        state = S(r.state)
        if r.max_attempts != 1 + job.retries or r.attempt > r.max_attempts:
            found.append(
                Violation("retries", f"run {r.id} ({job.name}) attempt {r.attempt}/{r.max_attempts}")
            )
        retries = [h for h in steps if h.from_state in RETRYABLE and h.to_state == S.SCHEDULED]
        if len(retries) != r.attempt - 1 or [h.attempt for h in retries] != list(range(2, r.attempt + 1)):
            found.append(
                Violation(
                    "retries",
                    f"run {r.id} ({job.name}) is at attempt {r.attempt} after {len(retries)} retries"
                    + _history_text(obs, r.id),
                )
            )
        outcomes = [
            S(h.to_state)
            for h in steps
            if h.from_state in ACTIVE and S(h.to_state) in _ENDINGS - {S.SCHEDULED}
        ]
        wrong = [o for o in outcomes if o not in (job.outcome, S.CRASHED)]
        if wrong:
            found.append(
                Violation(
                    "outcome",
                    f"run {r.id} ({job.name}) had attempts ending {', '.join(wrong)}; its command always "
                    f"ends {job.outcome}" + _history_text(obs, r.id),
                )
            )
        if state in RETRYABLE and r.attempt != r.max_attempts:
            found.append(
                Violation(
                    "retries",
                    f"run {r.id} ({job.name}) ended {state} with attempts left" + _history_text(obs, r.id),
                )
            )
        if state not in (S.SCHEDULED, S.MISSED, S.CANCELLED) and outcomes and outcomes[-1] != state:
            found.append(
                Violation(
                    "outcome", f"run {r.id} ({job.name}) is {state} but its last attempt ended {outcomes[-1]}"
                )
            )
        if state in (S.MISSED, S.CANCELLED) and not _skipped_by_policy(job, steps):
            found.append(
                Violation("outcome", f"run {r.id} ({job.name}) is {state}" + _history_text(obs, r.id))
            )
    return found


def check_triggers(obs: Observed) -> list[Violation]:
    """Run chains: every upstream run that ended for good (after the drain a retryable state is
    final: a retry still owed is check_retries' violation) in a state a trigger names has exactly
    one run of the triggered deployment, and every triggered run follows such an end (none fired
    by an attempt that was retried, none by a state no trigger names)."""
    found = []
    by_id = {r.id: r for r in obs.runs}
    triggered = Counter((r.upstream_run_id, r.deployment) for r in obs.runs if r.upstream_run_id is not None)
    for job in obs.jobs:
        for after, states in job.triggers:
            for r in obs.runs:
                if r.deployment == after and r.state in states and triggered[r.id, job.name] != 1:
                    found.append(
                        Violation(
                            "trigger",
                            f"run {r.id} ({after}) ended {r.state}: {triggered[r.id, job.name]} runs of "
                            f"{job.name} follow it, expected 1" + _history_text(obs, r.id),
                        )
                    )
    jobs = {j.name: j for j in obs.jobs}
    for r in obs.runs:
        if r.upstream_run_id is None:
            continue
        up = by_id.get(r.upstream_run_id)
        job = jobs[r.deployment]
        if up is None or not any(up.deployment == a and up.state in states for a, states in job.triggers):
            what = "an unknown run" if up is None else f"{up.deployment} ending {up.state}"
            found.append(
                Violation(
                    "trigger",
                    f"run {r.id} ({r.deployment}) was triggered by run {r.upstream_run_id}, "
                    f"{what}, which no trigger names" + _history_text(obs, r.upstream_run_id),
                )
            )
    return found


def _skipped_by_policy(job: Job, steps: Iterable[Any]) -> bool:
    """MISSED because overlap = skip saw the deployment busy (misfire_grace is too long to apply)."""
    return job.overlap == "skip" and any(
        h.to_state == S.MISSED and "overlap" in (h.reason or "") for h in steps
    )


def unexplained_crashes(obs: Observed) -> list[str]:
    """CRASHED attempts whose worker the harness did not kill, outside a database outage: not a
    violation by themselves (a worker starved of CPU past its lease is crashed by design) but worth
    reading when anything else looks wrong."""
    notes = []
    for run_id, steps in obs.history.items():
        claimant = ""
        for h in steps:
            if h.to_state == S.PENDING:
                claimant = h.actor or ""
            if h.to_state != S.CRASHED:
                continue
            pid = int(claimant.rsplit("-", 1)[1]) if claimant.rsplit("-", 1)[-1].isdigit() else -1
            at = h.at.timestamp()
            near_outage = any(stop - 1 <= at <= up + obs.lease + 5 for stop, up in obs.outages)
            if pid not in obs.worker_kills and not near_outage:
                notes.append(
                    f"run {run_id} attempt {h.attempt} CRASHED at {_iso(h.at)} (claimed by {claimant})"
                )
    return notes


def _history_text(obs: Observed, run_id: int) -> str:
    steps = obs.history.get(run_id, ())
    return "; history: " + " | ".join(
        f"{_iso(h.at)} {h.from_state or '-'}->{h.to_state} a{h.attempt} by {h.actor}"
        + (f" ({h.reason})" if h.reason else "")
        for h in steps
    )


def _iso(at: datetime | None) -> str:
    return at.isoformat(timespec="milliseconds") if at is not None else "-"


#: What the outbox records for an attempt a killed scheduler left (orchd.db.notifications).
UNKNOWN_OUTCOME = "outcome unknown"


def expected_notifications(obs: Observed) -> set[str]:
    """The event keys the rule must have told, from the history alone: each transition of one of
    its deployments into one of its states, a failure only when no retry was queued with it, up to
    where the outbox's cursor stopped (later events came once no scheduler ran)."""
    rule = obs.notify_rule
    expected: set[str] = set()
    if rule is None:
        return expected
    for run in obs.runs:
        if run.deployment not in rule.deployments:
            continue
        steps = list(obs.history.get(run.id, []))
        for i, h in enumerate(steps):
            if h.to_state not in rule.on or (obs.notify_upto is not None and h.id > obs.notify_upto):
                continue
            retried = any(
                later.from_state == h.to_state and later.to_state == S.SCHEDULED.value and later.at == h.at
                for later in steps[i + 1 :]
            )
            if not (S(h.to_state) in RETRYABLE and retried):
                expected.add(f"state:{h.id}")
    return expected


def notification_counts(obs: Observed) -> dict[str, int]:
    """Figures for the summary: matches expected and queued, delivered, received, repeated, and
    attempts left unrecorded by a killed scheduler (the window)."""
    received = Counter(obs.notified)
    return {
        "expected": len(expected_notifications(obs)),
        "queued": len(obs.notifications),
        "delivered": sum(n.state == "delivered" for n in obs.notifications),
        "received": len(obs.notified),
        "repeated": sum(c - 1 for c in received.values()),
        "window": sum(
            1
            for attempts in obs.notify_attempts.values()
            for a in attempts
            if (a.error or "").startswith(UNKNOWN_OUTCOME)
        ),
    }


def check_notifications(obs: Observed) -> list[Violation]:
    """Every event the rule asks for is matched once (no loss, no double, nothing it did not ask
    for), delivered, received by its command; a message received twice had an attempt whose
    outcome a killed scheduler never recorded (the documented window), else it is a violation."""
    rule = obs.notify_rule
    if rule is None:
        return []
    found = []
    expected = expected_notifications(obs)
    queued = Counter(n.event_key for n in obs.notifications)
    for key in sorted(expected - set(queued)):
        found.append(Violation("notification lost", f"{rule.name}: event {key} was never queued"))
    for key in sorted(set(queued) - expected):
        found.append(Violation("notification stray", f"{rule.name}: event {key} queued but not asked for"))
    for key, n in sorted(queued.items()):
        if n > 1:
            found.append(Violation("notification doubled", f"{rule.name}: event {key} queued {n} times"))
    received = Counter(obs.notified)
    for n in obs.notifications:
        key = f"{n.rule}.{n.event_key}.{n.channel}"
        if n.state != "delivered":
            found.append(Violation("notification undelivered", f"{key}: {n.state} ({n.last_error})"))
        elif not received[key]:
            found.append(Violation("notification lost", f"{key}: recorded delivered, never received"))
        window = sum((a.error or "").startswith(UNKNOWN_OUTCOME) for a in obs.notify_attempts.get(n.id, []))
        if received[key] - 1 > window:
            found.append(
                Violation(
                    "notification repeated",
                    f"{key}: received {received[key]} times, {window} attempts in the window",
                )
            )
    return found
