"""Run chains (`make bench`, step "triggers"): how soon a triggered run starts after the run it
follows ended.  The downstream run is created in the transaction that records the upstream's end,
so the figure is that commit, the wake-up of a worker (NOTIFY on PostgreSQL, the file's change
on SQLite), its claim, the spawn and the start's record.

Real parts: an orchd-worker process serving both deployments of the chain, ad-hoc upstream runs
created one at a time (so each measures an idle worker's reaction, not a queue), times taken
from the database (upstream ``finished_at`` and downstream ``started_at`` are both the recording
process's clock; one host, one clock).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from orchd.db.schema import runs
from orchd.db.store import Store
from tests import test_triggers
from tests.bench.common import (
    Databases,
    Figure,
    daemons,
    percentile,
    start,
    store_for,
    wait_until,
    write_config,
)

CHAIN = "[worker]\nconcurrency = 4\n" + test_triggers.CHAIN


def _downstream_started(store: Store, upstream: int) -> bool:
    with store.read() as conn:
        return (
            conn.execute(
                select(runs.c.started_at).where(
                    runs.c.upstream_run_id == upstream, runs.c.state == "COMPLETED"
                )
            ).scalar()
            is not None
        )


def _latencies(store: Store, upstreams: list[int]) -> list[float]:
    """Milliseconds from each upstream run's recorded end to its downstream run's recorded start."""
    up = runs.alias("up")
    with store.read() as conn:
        rows = conn.execute(
            select(up.c.finished_at, runs.c.started_at)
            .join(up, up.c.id == runs.c.upstream_run_id)
            .where(up.c.id.in_(upstreams))
        ).all()
    return [(r.started_at - r.finished_at).total_seconds() * 1000 for r in rows]


def bench_triggers(dbs: Databases, backend: str, tmp: Path, repeats: int, chains: int) -> list[Figure]:
    p50s, p99s, every = [], [], []
    for _ in range(repeats):
        url = dbs.new(backend)
        path = tmp / f"triggers-{backend}.toml"
        config = write_config(path, url, CHAIN)
        store = store_for(url)
        store.sync(config, datetime.now(UTC))
        with daemons(tmp) as procs:
            start(procs, tmp, "orchd-worker", "--config", str(path))
            upstreams = []
            for _ in range(chains):
                upstream = store.create_run("extract", datetime.now(UTC))
                upstreams.append(upstream)
                wait_until(lambda: _downstream_started(store, upstream), 30, "the downstream run")  # noqa: B023
                time.sleep(0.05)  # an idle worker again, not one still recording
        found = _latencies(store, upstreams)
        assert len(found) == chains, f"{len(found)} of {chains} chains have a downstream run"
        every += found
        p50s.append(percentile(found, 50))
        p99s.append(percentile(found, 99))
        store.engine.dispose()
    return [
        Figure(
            "trigger latency p50 (upstream end -> downstream start)",
            backend,
            "ms",
            p50s,
            "<= 50 ms" if backend == "postgresql" else "",
            (lambda v: v <= 50) if backend == "postgresql" else None,
        ),
        Figure("trigger latency p99 (upstream end -> downstream start)", backend, "ms", p99s),
        Figure("trigger latency max", backend, "ms", [max(every)]),
    ]
