"""The queue's decisions, as pure functions: when a failed run is retried, and which due runs a
claim takes, turns away or makes room for.

The data layer reads the facts (a run's attempt, the active runs of a pool), asks here, and
applies the answer in its transaction; nothing here reads a database or a clock (``now`` is a
parameter), so every rule is tested on its own, like the schedule math (tests/test_policy.py).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from orchd.models import DeploymentSpec
from orchd.retries import retry_delay

K = TypeVar("K")
#: A claim looks at this many due runs per free slot (at least ``CANDIDATES_MIN``): some of the
#: first are turned away by a full pool or deployment limit, and the claim should still fill its
#: slots from the runs behind them instead of waiting for the next poll.  Bounded, so a claim
#: stays one short indexed read however long the queue.
CANDIDATES_PER_SLOT = 4
CANDIDATES_MIN = 50


def retry_due(
    spec: DeploymentSpec, attempt: int, now: datetime, rng: random.Random | None = None
) -> tuple[datetime, float]:
    """When attempt ``attempt + 1`` may start after attempt ``attempt`` failed at ``now``, and the
    wait in seconds: ``retry_delay`` times ``retry_backoff`` per earlier retry, with jitter
    (``orchd.retries.retry_delay``).  Whether a retry is owed at all is the run's (attempts left)."""
    delay = retry_delay(spec.retry_delay, spec.retry_backoff, attempt, rng)
    return now + timedelta(seconds=delay), delay


def candidates_for(slots: int) -> int:
    """How many due runs a claim with ``slots`` free slots reads (see ``CANDIDATES_PER_SLOT``)."""
    return max(slots * CANDIDATES_PER_SLOT, CANDIDATES_MIN)


def only_waiting(
    limits: Mapping[K, int], active: Mapping[K, int], overlap: Mapping[K, str] | None = None
) -> set[K]:
    """The pools (or deployments) at their limit whose due runs can only wait: no overlap policy
    (``skip``, ``cancel_previous``) acts on them.  A claim that finds their runs among its
    candidates reads them again without them, so a long backlog behind a full deployment or pool
    cannot fill the look-ahead and hide the runs that could start (head-of-line blocking);
    ``admit`` still checks every limit under the locks."""
    return {
        key
        for key, limit in limits.items()
        if active.get(key, 0) >= limit and (overlap or {}).get(key, "allow") in ("allow", "queue")
    }


@dataclass(frozen=True)
class Candidate:
    """A due run a claim may take, as admission sees it."""

    id: int
    pool: str
    deployment_id: int


@dataclass
class Admission:
    """What a claim does with its candidates."""

    #: Runs to claim, in the candidates' order (priority, then due time).
    take: list[int] = field(default_factory=list)
    #: Runs to mark MISSED: their deployment is at its limit and its overlap policy is "skip".
    skip: list[int] = field(default_factory=list)
    #: Deployments whose active runs are to be cancelled so a waiting one can start next
    #: (at their limit, overlap "cancel_previous").
    supersede: set[int] = field(default_factory=set)


def admit(
    candidates: Sequence[Candidate],
    slots: int,
    *,
    pool_limits: Mapping[str, int],
    deployment_limits: Mapping[int, int],
    active_in_pool: Mapping[str, int],
    active_in_deployment: Mapping[int, int],
    overlap: Mapping[int, str],
) -> Admission:
    """Walk the candidates in order and take each while ``slots`` remain, unless its pool is at
    its concurrency limit (it waits: another run of the pool will end) or its deployment is at its
    limit of active runs, in which case the deployment's ``overlap`` decides: ``queue`` (and
    ``allow``, which has no limit unless max_active_runs is set) leaves it waiting, ``skip``
    turns it away, ``cancel_previous`` asks the active ones to go.  Pools and deployments missing
    from the limits have none; the active counts include the runs taken here."""
    decided = Admission()
    in_pool: Counter[str] = Counter(active_in_pool)
    in_deployment: Counter[int] = Counter(active_in_deployment)
    for c in candidates:
        if len(decided.take) >= slots:
            break
        if c.pool in pool_limits and in_pool[c.pool] >= pool_limits[c.pool]:
            continue
        limit = deployment_limits.get(c.deployment_id)
        if limit is not None and in_deployment[c.deployment_id] >= limit:
            policy = overlap.get(c.deployment_id, "allow")
            if policy == "skip":
                decided.skip.append(c.id)
            elif policy == "cancel_previous":
                decided.supersede.add(c.deployment_id)
            continue
        decided.take.append(c.id)
        in_pool[c.pool] += 1
        in_deployment[c.deployment_id] += 1
    return decided
