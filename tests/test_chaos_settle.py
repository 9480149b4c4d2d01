"""The drain's wait (tests/chaos/settle.py) on made-up counts and a made-up clock: a slow drain that
keeps moving is waited for however long it takes, a stuck one is reported, and so is one that
only goes round in circles.  The chaos and scale harnesses' drain checks are only as good as this."""

from __future__ import annotations

from collections.abc import Iterable

from tests.chaos.settle import Settled, wait_settled


def settle(counts: Iterable[int | None], stall: float, step: float) -> tuple[Settled, int]:
    """Wait on ``counts`` (one per look, the last repeated), the clock moving ``step`` seconds per
    look; the outcome and how many times the fleet was tended."""
    seen = list(counts)
    now, looks, tended = 0.0, 0, 0

    def outstanding() -> int | None:
        nonlocal looks
        looks += 1
        return seen[min(looks, len(seen)) - 1]

    def sleep(seconds: float) -> None:
        nonlocal now
        now += step

    def tend() -> None:
        nonlocal tended
        tended += 1

    return wait_settled(outstanding, stall, tend=tend, clock=lambda: now, sleep=sleep), tended


def test_a_slow_drain_is_waited_for_as_long_as_it_moves() -> None:
    # 5,000 runs, 50 finishing every 30 s look: 50 minutes in all, never 60 s without progress
    settled, tended = settle(range(5000, -1, -50), stall=60, step=30)
    assert settled.done and settled.left == 0
    assert settled.waited == 100 * 30
    assert tended == 101


def test_a_queue_that_stands_still_is_stuck() -> None:
    settled, _ = settle([7, 5, 5], stall=60, step=1)
    assert not settled.done
    assert settled.left == 5 and settled.still >= 60


def test_going_up_and_down_without_a_new_low_is_not_progress() -> None:
    settled, _ = settle([4, 5, 4, 6, 4, 5] * 100, stall=10, step=1)
    assert not settled.done
    assert settled.waited < 20  # the first low (4) was the last progress


def test_an_unanswered_look_is_no_progress_and_no_failure_by_itself() -> None:
    settled, _ = settle([None, None, 3, None, 2, 0], stall=10, step=1)
    assert settled.done
    settled, _ = settle([None], stall=10, step=1)
    assert not settled.done and settled.left is None


def test_done_at_once() -> None:
    settled, tended = settle([0], stall=10, step=1)
    assert settled == Settled(True, 0, 0.0, 0.0)
    assert tended == 1
