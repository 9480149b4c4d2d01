"""orchd.policy: the retry timing and the claim's admission decisions, without a database."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from orchd.models import DeploymentSpec
from orchd.policy import CANDIDATES_MIN, Candidate, admit, candidates_for, only_waiting, retry_due
from orchd.retries import JITTER, MAX_DELAY

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
OVERLAPS = ["allow", "queue", "skip", "cancel_previous"]


def spec(delay: float, backoff: float) -> DeploymentSpec:
    return DeploymentSpec.from_json({"retry_delay": delay, "retry_backoff": backoff, "retries": 3})


@given(
    delay=st.floats(0, 3600),
    backoff=st.floats(1, 10),
    attempt=st.integers(1, 50),
    seed=st.integers(0, 2**32),
)
def test_retry_waits_the_backoff_with_jitter(delay: float, backoff: float, attempt: int, seed: int) -> None:
    due, waited = retry_due(spec(delay, backoff), attempt, NOW, random.Random(seed))
    assert due == NOW + timedelta(seconds=waited)
    nominal = min(MAX_DELAY, delay * backoff ** (attempt - 1))
    assert nominal * (1 - JITTER) - 1e-6 <= waited <= nominal * (1 + JITTER) + 1e-6


def test_each_retry_waits_longer() -> None:
    fixed = spec(10, 2)
    waits = [retry_due(fixed, attempt, NOW, random.Random(1))[1] for attempt in (1, 2, 3)]
    assert waits == sorted(waits) and 9 <= waits[0] <= 11 and 36 <= waits[2] <= 44


def test_a_claim_looks_past_blocked_runs() -> None:
    assert candidates_for(1) == CANDIDATES_MIN
    assert candidates_for(100) == 400


candidate = st.builds(
    Candidate, id=st.integers(1, 10**6), pool=st.sampled_from("abc"), deployment_id=st.integers(1, 4)
)


@given(
    candidates=st.lists(candidate, max_size=30, unique_by=lambda c: c.id),
    slots=st.integers(0, 10),
    pool_limits=st.dictionaries(st.sampled_from("abc"), st.integers(1, 4)),
    deployment_limits=st.dictionaries(st.integers(1, 4), st.integers(1, 3)),
    active_in_pool=st.dictionaries(st.sampled_from("abc"), st.integers(0, 5)),
    active_in_deployment=st.dictionaries(st.integers(1, 4), st.integers(0, 4)),
    overlap=st.dictionaries(st.integers(1, 4), st.sampled_from(OVERLAPS)),
)
def test_admission_respects_every_limit(
    candidates: list[Candidate],
    slots: int,
    pool_limits: dict[str, int],
    deployment_limits: dict[int, int],
    active_in_pool: dict[str, int],
    active_in_deployment: dict[int, int],
    overlap: dict[int, str],
) -> None:
    decided = admit(
        candidates,
        slots,
        pool_limits=pool_limits,
        deployment_limits=deployment_limits,
        active_in_pool=active_in_pool,
        active_in_deployment=active_in_deployment,
        overlap=overlap,
    )
    by_id = {c.id: c for c in candidates}
    taken = [by_id[i] for i in decided.take]
    assert len(taken) <= slots
    assert decided.take == [c.id for c in candidates if c.id in set(decided.take)]  # in order
    assert not set(decided.take) & set(decided.skip)
    pools, deps = Counter(c.pool for c in taken), Counter(c.deployment_id for c in taken)
    for pool, n in pools.items():  # never beyond a limit that had room
        if pool in pool_limits:
            assert active_in_pool.get(pool, 0) + n <= max(pool_limits[pool], active_in_pool.get(pool, 0))
    for dep, n in deps.items():
        if dep in deployment_limits:
            assert active_in_deployment.get(dep, 0) + n <= deployment_limits[dep]
    for run_id in decided.skip:  # only a full deployment whose policy is skip turns a run away
        dep = by_id[run_id].deployment_id
        assert overlap.get(dep) == "skip" and dep in deployment_limits
    assert all(overlap.get(d) == "cancel_previous" and d in deployment_limits for d in decided.supersede)
    if not pool_limits and not deployment_limits:  # nothing limits: the first `slots` are taken
        assert decided.take == [c.id for c in candidates[:slots]]


def test_overlap_at_the_limit() -> None:
    runs = [Candidate(1, "p", 7), Candidate(2, "p", 7), Candidate(3, "p", 8)]

    def decide(policy: str, active: int) -> tuple[list[int], list[int], set[int]]:
        d = admit(
            runs,
            10,
            pool_limits={},
            deployment_limits={7: 1},
            active_in_pool={},
            active_in_deployment={7: active},
            overlap={7: policy},
        )
        return d.take, d.skip, d.supersede

    assert decide("queue", 0) == ([1, 3], [], set())  # the second waits for the first
    assert decide("queue", 1) == ([3], [], set())
    assert decide("skip", 1) == ([3], [1, 2], set())
    assert decide("cancel_previous", 1) == ([3], [], {7})


def test_only_runs_that_can_only_wait_are_left_out_of_a_claim() -> None:
    limits = {1: 1, 2: 1, 3: 1, 4: 2}
    active = {1: 1, 2: 1, 3: 1, 4: 1}
    overlap = {1: "queue", 2: "skip", 3: "cancel_previous", 4: "queue"}
    # 2 and 3 are full, but their runs are acted on (MISSED, or room made); 4 has a free slot
    assert only_waiting(limits, active, overlap) == {1}
    assert only_waiting({"p": 2, "q": 2}, {"p": 2, "q": 1}) == {"p"}
