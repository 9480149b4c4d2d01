"""Self-fencing (orchd/worker/fence.py) without a network: a worker kept from writing to its SQLite
database (another process holds the write lock) is the same worker as one cut off from its
PostgreSQL.  A short outage changes nothing; a long one has the worker SIGTERM its run before the
lease it last wrote can expire, record it CRASHED ("fenced") when the database is back, and retry
it.  The guardian's deadline, the backstop for a worker stuck in a call, is tested on its own."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from orchd.config import load_config
from orchd.db import migrate
from orchd.db.schema import runs
from orchd.db.store import Store
from orchd.errors import ConfigError
from orchd.states import RunState
from orchd.worker.process import Guardian
from tests.chaos.checks import read_ledger
from tests.helpers import daemons, history, pid_alive, store_for, wait_for

S = RunState
JOB = """\
echo "start $ORCHD_RUN_ID $ORCHD_ATTEMPT $$ $PPID $(date +%s.%N)" >> "$0"
trap 'echo "end $ORCHD_RUN_ID $ORCHD_ATTEMPT $$ term $(date +%s.%N)" >> "$0"; exit 143' TERM
if [ "$ORCHD_ATTEMPT" = 1 ]; then sleep 60 & wait $!; fi
echo "end $ORCHD_RUN_ID $ORCHD_ATTEMPT $$ 0 $(date +%s.%N)" >> "$0"
"""


@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Hold the database's write lock, as a long writer would: every write of the worker fails."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@pytest.mark.slow
def test_a_worker_kept_from_its_database_fences_its_run_before_the_lease_expires(tmp_path: Path) -> None:
    db = tmp_path / "orchd.db"
    ledger = tmp_path / "ledger"
    ledger.touch()
    config = tmp_path / "orchd.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{db}"\nbusy_timeout = "50ms"\n'
        '[worker]\nheartbeat = "500ms"\nlease_timeout = "6s"\nfence_margin = "2s"\nkill_grace = "1s"\n'
        f'[[deployments]]\nname = "long"\ncommand = ["sh", "-c", {json.dumps(JOB)}, "{ledger}"]\n'
        'retries = 1\nretry_delay = "0s"\n'
    )
    store = store_for(f"sqlite:///{db}")
    migrate.upgrade(store.engine)  # a daemon never creates the file a config names
    with daemons(tmp_path) as group:
        worker = group.start("orchd-worker", "--config", str(config), "--name", "w")
        wait_for(lambda: "worker started" in group.output(), timeout=60, what="the worker")
        store.sync(load_config(config), datetime.now(UTC))
        run_id = store.create_run("long", datetime.now(UTC))
        wait_for(lambda: (r := store.get_run(run_id)) and r.state == S.RUNNING, what="the run RUNNING")

        # SIGTERM 4 s after the last renewal, SIGKILL (by the worker, else its guardian) at 5 s
        with write_lock(db):  # well inside the lease: nothing happens
            time.sleep(1.0)
        released = datetime.now(UTC)
        wait_for(lambda: _lease(store, run_id) > released, what="the lease renewed")

        with write_lock(db):
            lease = _lease(store, run_id)
            wait_for(lambda: " term " in ledger.read_text(), timeout=30, what="the fence's SIGTERM")
        executions, _ = read_ledger(ledger)
        fenced = executions[0]
        assert (fenced.attempt, fenced.status) == (1, "term")
        assert fenced.end is not None and fenced.end < lease.timestamp()  # stopped while the lease held
        done = wait_for(lambda: (r := store.get_run(run_id)) and r.state == S.COMPLETED and r, timeout=30)
        assert group.stop(worker) == 0
    assert done.attempt == 2
    steps = [(h.from_state, h.to_state, h.attempt, h.actor) for h in store.run_history(run_id)]
    assert ("RUNNING", "CRASHED", 1, "w") in steps, steps
    crash = next(h for h in store.run_history(run_id) if h.to_state == S.CRASHED)
    assert crash.reason is not None and crash.reason.startswith("fenced: its worker could not renew")
    assert history(store, run_id).count(("RUNNING", "CRASHED")) == 1


def _lease(store: Store, run_id: int) -> datetime:
    with store.read() as conn:
        value: datetime = conn.execute(
            select(runs.c.lease_expires_at).where(runs.c.id == run_id)
        ).scalar_one()
    return value


def test_the_guardian_kills_the_runs_when_no_renewal_comes_by_the_deadline() -> None:
    guardian = Guardian()
    run = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        guardian.watch(run.pid)
        for _ in range(5):  # renewed in time, again and again: the run lives
            guardian.fence(time.monotonic() + 5.0)
            time.sleep(0.1)
        assert run.poll() is None
        guardian.fence(time.monotonic() + 0.2)  # then no renewal
        assert run.wait(timeout=20) == -signal.SIGKILL
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=10)
        guardian.close()
    assert not pid_alive(run.pid)


def test_a_dead_workers_containers_are_removed_before_their_clients_are_killed(tmp_path: Path) -> None:
    """At the worker's death the guardian starts removing its containers, then kills the runs'
    groups (where a container run's engine client is) once the removal is done or after at most
    CLIENT_GRACE: a podman client SIGKILLed while it created its container left the container's
    conmon and a `runc init` behind for good (4 of 48 workers SIGKILLed in the client's first
    350 ms).  The "removal" here records the run's state as it starts (alive) and 2 s later
    (killed: the grace is 1 s, the removal is not waited for longer)."""
    seen = tmp_path / "seen"
    run = subprocess.Popen(["sleep", "60"], start_new_session=True)
    look = f"open({str(seen)!r}, 'a').write(open('/proc/{run.pid}/stat').read().split()[2])"
    remover = [sys.executable, "-c", f"import time; {look}; time.sleep(2); {look}"]
    guardian = Guardian(remover)
    try:
        guardian.watch(run.pid)
        guardian.watch("orchd-1-1-abcdef")
        began = time.monotonic()
        guardian.close()  # the worker is gone
        assert run.wait(timeout=20) == -signal.SIGKILL
        assert time.monotonic() - began >= 2.0  # the removal was waited for, up to its end
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=10)
    assert seen.read_text() in ("SZ", "RZ"), seen.read_text()  # alive at the removal, killed during it


def test_a_fence_margin_that_leaves_no_heartbeat_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "orchd.toml"
    path.write_text('[worker]\nheartbeat = "10s"\nlease_timeout = "60s"\nfence_margin = "50s"\n')
    with pytest.raises(ConfigError, match=r"orchd.toml:4: worker.fence_margin: must be shorter than"):
        load_config(path, env={})
    path.write_text('[worker]\nheartbeat = "10s"\nlease_timeout = "20s"\n')  # 5 s: a quarter
    assert load_config(path, env={}).worker.effective_fence_margin == 5.0
