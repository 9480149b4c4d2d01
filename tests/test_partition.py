"""A worker host cut off from the database (its namespace's veth link down), as a switch port or a
cable fails: a short cut changes nothing; one longer than the lease costs the runs, which are
CRASHED and retried on another host, and the original never runs at the same time as its retry
(self-fencing: the cut-off worker stops them before their lease can expire).  Proved with a
ledger every execution writes, audited by the chaos suite's checks."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from orchd.config import load_config
from orchd.db.schema import runs, workers
from orchd.db.store import Store
from orchd.states import RunState
from tests import netns
from tests.chaos.checks import Job, Observed, check_executions, read_ledger
from tests.chaos.harness import database_rows
from tests.helpers import BIN, daemons, store_for, wait_for
from tests.pg import PgServer

pytestmark = pytest.mark.slow
S = RunState
LEASE = 6.0  # fence margin 1.5 s (a quarter): SIGTERM 4.5 s after the last renewal, SIGKILL at 5.25 s
RUNS = 3
#: Attempt 1 would run a minute (it overlaps its retry unless it is stopped); a retry ends at once.
JOB = """\
echo "start $ORCHD_RUN_ID $ORCHD_ATTEMPT $$ $PPID $(date +%s.%N)" >> "$0"
trap 'echo "end $ORCHD_RUN_ID $ORCHD_ATTEMPT $$ term $(date +%s.%N)" >> "$0"; exit 143' TERM
if [ "$ORCHD_ATTEMPT" = 1 ]; then sleep 60 & wait $!; fi
echo "end $ORCHD_RUN_ID $ORCHD_ATTEMPT $$ 0 $(date +%s.%N)" >> "$0"
"""


@pytest.fixture
def db_url(pg_server: PgServer, pg_template: str) -> Iterator[str]:
    """A PostgreSQL database only: hosts reach it over the network."""
    name = pg_server.create_database(template=pg_template)
    yield pg_server.url_for(name)
    pg_server.drop_database(name)


@pytest.fixture
def two_hosts() -> Iterator[list[netns.Host]]:
    netns.require()
    with netns.hosts(2) as made:
        yield made


def _config(path: Path, url: str, ledger: Path) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""\
            [database]
            url = "{url}"
            [scheduler]
            loop_interval = "200ms"
            [worker]
            heartbeat = "500ms"
            lease_timeout = "{LEASE:g}s"
            kill_grace = "1s"
            concurrency = {RUNS}
            [[deployments]]
            name = "long"
            command = ["sh", "-c", {json.dumps(JOB)}, "{ledger}"]
            retries = 1
            retry_delay = "0s"
            """
        )
    )
    return path


def _held_until(store: Store, run_ids: list[int]) -> datetime:
    with store.read() as conn:
        leases = conn.execute(select(runs.c.lease_expires_at).where(runs.c.id.in_(run_ids))).scalars().all()
    return min(leases)


def _observed(store: Store, ledger: Path, lease: float) -> tuple[Observed, list[Any]]:
    executions, problems = read_ledger(ledger)
    assert problems == []
    rows, history, _ = database_rows(store.engine)
    now = datetime.now(UTC)
    job = Job("long", "1h", 60, 0, retries=1, outcome=S.COMPLETED)
    observed = Observed(
        jobs=[job],
        runs=rows,
        history=history,
        schedules=[],
        executions=executions,
        worker_kills={},
        outages=[],
        window=(now, now),
        drained_at=now,
        lease=lease,
        orphans=[],
    )
    return observed, rows


def test_a_worker_cut_off_past_its_lease_stops_its_runs_before_their_retry(
    tmp_path: Path, two_hosts: list[netns.Host], db_url: str
) -> None:
    cut_host, other_host = two_hosts
    port = make_url(db_url).port
    assert port is not None
    relay = netns.Forwarder([cut_host.gateway, other_host.gateway], port).start()
    ledger = tmp_path / "ledger"
    ledger.touch()
    direct = _config(tmp_path / "orchd.toml", db_url, ledger)
    through = {
        host.name: _config(
            tmp_path / f"{host.name}.toml",
            make_url(db_url).set(host=host.gateway, port=relay.port).render_as_string(hide_password=False),
            ledger,
        )
        for host in two_hosts
    }
    store = store_for(db_url)
    try:
        with daemons(tmp_path) as group:

            def worker(host: netns.Host, name: str) -> Any:
                argv = [str(BIN / "orchd-worker"), "--config", str(through[host.name]), "--name", name]
                return group.spawn(host.command(argv), f"worker-{name}")

            cut = worker(cut_host, "cut")
            store.sync(load_config(direct), datetime.now(UTC))
            made = [store.create_run("long", datetime.now(UTC)) for _ in range(RUNS)]
            wait_for(lambda: _on(store, made, "cut", S.RUNNING), timeout=30, what="the runs RUNNING on 'cut'")
            group.start("orchd-scheduler", "--config", str(direct))
            other = worker(other_host, "other")
            wait_for(lambda: _online(store, "other"), timeout=30, what="worker 'other'")

            # A short cut, well inside the lease: nothing happens to the runs.
            cut_host.cut()
            time.sleep(1.5)
            cut_host.heal()
            healed = datetime.now(UTC)
            wait_for(
                lambda: _held_until(store, made) > healed + timedelta(seconds=LEASE - 1),
                timeout=30,
                what="the leases renewed after the short cut",
            )
            assert _on(store, made, "cut", S.RUNNING)

            # A cut longer than the lease: CRASHED, retried on 'other', never both at once.
            cut_host.cut()
            try:
                wait_for(
                    lambda: _finished_on(store, made, "other"), timeout=60, what="the retries done on 'other'"
                )
            finally:
                cut_host.heal()
            back = datetime.now(UTC)
            wait_for(lambda: _seen_since(store, "cut", back), timeout=60, what="'cut' to heartbeat again")
            for proc in (cut, other):
                assert group.stop(proc) == 0
            output = group.output()
    finally:
        relay.stop()
    observed, rows = _observed(store, ledger, LEASE)
    assert check_executions(observed) == []
    assert sorted(r.id for r in rows) == sorted(made)
    for row in rows:
        steps = [(h.from_state, h.to_state, h.attempt) for h in observed.history[row.id]]
        assert (row.state, row.attempt, row.worker) == ("COMPLETED", 2, "other"), steps
        assert ("RUNNING", "CRASHED", 1) in steps, steps
        # nothing 'cut' recorded touched the retry
        assert all(h.attempt == 1 for h in observed.history[row.id] if h.actor == "cut"), steps
    first = {e.run_id: e for e in observed.executions if e.attempt == 1}
    assert set(first) == set(made) and all(e.status in ("term", None) for e in first.values())
    assert "Traceback" not in output


def _on(store: Store, run_ids: list[int], worker: str, state: RunState) -> bool:
    with store.read() as conn:
        rows = conn.execute(select(runs.c.state, runs.c.worker).where(runs.c.id.in_(run_ids))).all()
    return len(rows) == len(run_ids) and all((r.state, r.worker) == (state.value, worker) for r in rows)


def _finished_on(store: Store, run_ids: list[int], worker: str) -> bool:
    return _on(store, run_ids, worker, S.COMPLETED)


def _online(store: Store, name: str) -> bool:
    with store.read() as conn:
        return conn.execute(select(workers.c.status).where(workers.c.name == name)).scalar() == "online"


def _seen_since(store: Store, name: str, since: datetime) -> bool:
    with store.read() as conn:
        seen = conn.execute(select(workers.c.last_heartbeat).where(workers.c.name == name)).scalar()
    return seen is not None and seen > since
