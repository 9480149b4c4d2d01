"""Self-fencing: a worker that cannot renew its leases stops its runs before they can expire.

A lease is the worker's promise that nobody else runs the run until it expires.  The worker
writes ``its clock + worker.lease_timeout`` each time it renews (a claim, then every heartbeat);
if no renewal gets through (the database is down, the host is cut off from it), the scheduler
reaps the run once that moment has passed by *its* clock, and another worker may start the retry
at once.  Without fencing the cut-off worker would still be running the original: two executions
of one run at the same time, for as long as the partition lasts.

So each run carries the monotonic time of its last successful renewal, and the worker stops it
(SIGTERM) ``fence_margin`` before its lease expires and kills it (SIGKILL) half a margin before:
the run is dead while its lease still holds, with half a margin to spare for clock skew between
the worker's host and the scheduler's.  The worker's main loop does this when it can; its
guardian process (``guardian.py``), told the kill deadline after every renewal, does it anyway if
the main loop is stuck (a call hanging on a dead network, the process frozen).

The trade-off: an outage shorter than ``lease_timeout - fence_margin`` (45 s by default) changes
nothing, runs keep running and their outcome is recorded when the database is back; a longer one
costs the runs (CRASHED, retried when attempts remain), which the reaper would have done anyway,
but now without ever running twice at once.  Runs that cannot be interrupted need a longer lease.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchd.config import WorkerConfig


@dataclass(frozen=True)
class Fence:
    lease: float
    margin: float
    kill_grace: float

    @classmethod
    def of(cls, cfg: WorkerConfig) -> Fence:
        return cls(cfg.lease_timeout, cfg.effective_fence_margin, cfg.kill_grace)

    def stop_at(self, renewed: float) -> float:
        """When a run last renewed at ``renewed`` (monotonic) gets SIGTERM."""
        return renewed + self.lease - self.margin

    def dead_by(self, renewed: float) -> float:
        """When it gets SIGKILL, from the worker or else from its guardian."""
        return renewed + self.lease - self.margin / 2

    def grace(self, renewed: float, now: float) -> float:
        """SIGTERM now: how long until SIGKILL (kill_grace, but never past ``dead_by``)."""
        return max(0.0, min(self.kill_grace, self.dead_by(renewed) - now))

    def reason(self, renewed: float, now: float) -> str:
        return (
            f"fenced: its worker could not renew the lease for {now - renewed:.1f}s "
            f"(lease {self.lease:g}s): stopped before it could expire"
        )
