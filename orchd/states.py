"""The run state machine: the states, and the one table of transitions allowed between them.

``orchd.db.transitions`` applies it, and is the only code that changes ``runs.state``: every
transition is one guarded ``UPDATE runs ... WHERE id IN (...) AND state = <expected>`` plus a
``run_states`` row per run actually moved, in the caller's transaction.  Two actors racing for
the same run (a worker finishing it, the reaper crashing it, a user cancelling it) therefore
cannot both win: the loser's UPDATE matches no row, records nothing, and learns it lost from the
returned list.  A transition the machine does not allow is refused (``check``) before any SQL.

    SCHEDULED -> PENDING (claimed, leased) -> RUNNING -> COMPLETED | FAILED | TIMED_OUT | CRASHED
    SCHEDULED -> CANCELLED | MISSED          RUNNING -> CANCELLING -> CANCELLED
    PENDING -> FAILED                        (the command could not be started at all)
    PENDING | RUNNING -> SCHEDULED           (handed back by a stopping worker, attempt not charged)
    FAILED | TIMED_OUT | CRASHED -> SCHEDULED (retry: attempt + 1, due after a backoff)
    COMPLETED | CANCELLED | MISSED -> SCHEDULED (only by `orchd run retry`)
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class RunState(StrEnum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CRASHED = "CRASHED"
    CANCELLED = "CANCELLED"
    MISSED = "MISSED"


S = RunState
TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    S.SCHEDULED: frozenset({S.PENDING, S.CANCELLED, S.MISSED}),
    S.PENDING: frozenset({S.RUNNING, S.FAILED, S.SCHEDULED, S.CRASHED, S.CANCELLED}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CRASHED, S.CANCELLING, S.SCHEDULED}),
    S.CANCELLING: frozenset({S.CANCELLED, S.CRASHED}),
    S.FAILED: frozenset({S.SCHEDULED}),
    S.TIMED_OUT: frozenset({S.SCHEDULED}),
    S.CRASHED: frozenset({S.SCHEDULED}),
    # A finished run goes back to SCHEDULED only when a person asks (`orchd run retry`).
    S.COMPLETED: frozenset({S.SCHEDULED}),
    S.CANCELLED: frozenset({S.SCHEDULED}),
    S.MISSED: frozenset({S.SCHEDULED}),
}
#: States in which a worker holds the run under a lease.
ACTIVE: frozenset[RunState] = frozenset({S.PENDING, S.RUNNING, S.CANCELLING})
#: Outcomes that are retried while attempts remain.
RETRYABLE: frozenset[RunState] = frozenset({S.FAILED, S.TIMED_OUT, S.CRASHED})
#: States a run waits or works in (what the queue gauges count; the finished ones only grow).
LIVE: tuple[str, ...] = (S.SCHEDULED.value, S.PENDING.value, S.RUNNING.value, S.CANCELLING.value)
#: States a run never leaves (FAILED/TIMED_OUT/CRASHED are final once no retry is left).
FINISHED: frozenset[RunState] = frozenset({S.COMPLETED, S.CANCELLED, S.MISSED}) | RETRYABLE


def cancel_target(state: RunState) -> RunState | None:
    """Where cancelling a run in ``state`` takes it: CANCELLED if it is waiting (nothing runs yet),
    CANCELLING if it runs (its worker stops it, then records CANCELLED); None if there is nothing
    to cancel: it finished, or it is being cancelled already (declaring it CANCELLED now would
    let a retry start it again while its process may still be dying)."""
    target = S.CANCELLING if state == S.RUNNING else S.CANCELLED
    return target if state != S.CANCELLING and target in TRANSITIONS[state] else None


class IllegalTransition(ValueError):
    """A transition the state machine does not allow (a programming error, not a lost race)."""


def check(source: RunState, target: RunState) -> None:
    if target not in TRANSITIONS[source]:
        raise IllegalTransition(f"a run cannot go from {source} to {target}")
