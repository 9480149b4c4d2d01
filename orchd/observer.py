"""What the daemons report as they work, to whoever listens: an observer injected like the clock.

The scheduler and the worker call these hooks at the points that matter (a tick done, a run
claimed, started or ended, a database error) and know nothing of what is done with them; the
Prometheus metrics (``orchd.metrics.Metrics``) are one observer, and this no-op base is the
default, so a daemon built in a test or for ``--once`` costs nothing and imports no metrics.
"""

from __future__ import annotations

from datetime import datetime

from orchd.models import ClaimedRun, TickReport
from orchd.states import RunState


class Observer:
    """Every hook does nothing; override the ones you need."""

    def database_error(self, daemon: str, reason: str) -> None:
        """A database call of ``daemon`` ("scheduler" or "worker") failed; it retries."""

    def leading(self, leader: bool) -> None:
        """The scheduler is (still, or no longer) the leader."""

    def ticked(self, report: TickReport, now: datetime) -> None:
        """The leading scheduler finished a tick."""

    def claimed(self, runs: int, seconds: float) -> None:
        """The worker claimed ``runs`` runs, in a claim that took ``seconds``."""

    def fenced(self) -> None:
        """The worker stopped a run whose lease it could not renew in time (worker/fence.py)."""

    def heartbeat(self) -> None:
        """The worker extended its leases."""

    def run_started(self, run: ClaimedRun, now: datetime) -> None:
        """A claimed run's process is running (recorded RUNNING at ``now``)."""

    def run_ended(self, deployment: str, outcome: RunState, seconds: float) -> None:
        """A run the worker executed ended with ``outcome`` after ``seconds``."""
