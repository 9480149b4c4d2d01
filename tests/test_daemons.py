"""The daemons as real processes: the quick start, scheduler + two workers on one database,
graceful stop, a SIGKILLed worker leaving no child behind, and bad config refused with 78."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import select

from orchd.config import load_config
from orchd.db.schema import runs
from orchd.db.store import Store
from orchd.errors import DatabaseUnavailable
from tests.helpers import BIN, claims_per_run, daemons, pid_alive, run_cli, store_for, wait_for, write_config
from tests.web_support import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _completed(store: Store) -> list[int]:
    try:
        return [r.id for r in store.list_runs(states=["COMPLETED"], limit=1000)]
    except DatabaseUnavailable:  # the daemon has not created the schema yet
        return []


def quick_start(tmp_path: Path) -> Path:
    """A copy of the repository's quick-start config at the same place in ``tmp_path``."""
    (tmp_path / "etc/orchd").mkdir(parents=True)
    return Path(shutil.copy(ROOT / "etc/orchd/quickstart.toml", tmp_path / "etc/orchd/quickstart.toml"))


def test_quick_start_orchd_up(tmp_path: Path) -> None:
    """What `make run` does, in a temp dir: runs complete and are on the dashboard it names,
    Ctrl-C stops it with status 0; the SQLite file is ./.state/orchd.db, and other commands find
    it from any directory."""
    config = quick_start(tmp_path)
    port = free_port()
    with daemons(tmp_path) as group:
        up = group.start(
            "orchd", "up", "--config", "etc/orchd/quickstart.toml", cwd=tmp_path,
            env={"ORCHD_WEB_LISTEN": f"127.0.0.1:{port}"},
        )  # fmt: skip
        wait_for(lambda: (tmp_path / ".state/orchd.db").exists(), what="the SQLite file")
        store = store_for(f"sqlite:///{tmp_path / '.state/orchd.db'}")
        done = wait_for(lambda: _completed(store), timeout=30, what="a COMPLETED run")
        wait_for(lambda: f"dashboard: http://127.0.0.1:{port}/" in group.output(), what="the dashboard URL")
        shown = httpx2.get(f"http://127.0.0.1:{port}/api/runs?state=COMPLETED", timeout=10).json()["runs"]
        assert set(done) <= {r["id"] for r in shown}
        assert group.stop(up, signal.SIGINT) == 0
        assert "hello from run" in group.output()
        listing = run_cli(["run", "ls", "--config", str(config), "--json"], cwd=config.parent)
        assert listing.returncode == 0, listing.stderr
        assert '"state": "COMPLETED"' in listing.stdout


def test_scheduler_and_two_workers_run_each_due_run_once(tmp_path: Path, db_url: str) -> None:
    config = write_config(
        tmp_path / "orchd.toml",
        db_url,
        """
    [scheduler]
    loop_interval = "200ms"
    horizon = "30s"
    [worker]
    heartbeat = "1s"
    poll_interval = "500ms"
    [[deployments]]
    name = "fast"
    command = ["true"]
    schedules = [{ interval = "1s" }]
    [[deployments]]
    name = "also"
    command = ["sh", "-c", "echo $ORCHD_RUN_ID"]
    schedules = [{ cron = "* * * * * *" }]
    """,
    )
    store = store_for(db_url)
    with daemons(tmp_path) as group:
        sched = group.start("orchd-scheduler", "--config", str(config))
        workers = [
            group.start("orchd-worker", "--config", str(config), "--pool", "default", "--name", f"w{i}")
            for i in range(2)
        ]
        wait_for(lambda: len(_completed(store)) >= 12, timeout=60, what="12 completed runs")
        for proc in workers:
            assert group.stop(proc) == 0
        assert group.stop(sched) == 0
    with store.read() as conn:
        rows = conn.execute(select(runs.c.deployment_id, runs.c.schedule_key, runs.c.scheduled_for)).all()
    assert [k for k, n in Counter(rows).items() if n > 1] == []
    claims = claims_per_run(store)
    assert claims and set(claims.values()) == {1}
    done = {r.id: r for r in store.list_runs(limit=1000) if r.state != "SCHEDULED"}
    assert {r.state for r in done.values()} == {"COMPLETED"}
    assert {r.worker for r in done.values()} <= {"w0", "w1"}


def test_sigterm_lets_a_running_run_finish(tmp_path: Path, db_url: str) -> None:
    config = write_config(
        tmp_path / "orchd.toml",
        db_url,
        """
    [worker]
    shutdown_grace = "20s"
    [[deployments]]
    name = "slow"
    command = ["sh", "-c", "sleep 1; echo done"]
    """,
    )
    store = store_for(db_url)
    store.sync(load_config(config), datetime.now(UTC))
    run_id = store.create_run("slow", datetime.now(UTC))
    with daemons(tmp_path) as group:
        worker = group.start("orchd-worker", "--config", str(config))
        wait_for(lambda: store.get_run(run_id).state == "RUNNING", what="the run to start")  # type: ignore[union-attr]
        assert group.stop(worker) == 0
    row = store.get_run(run_id)
    assert row is not None and row.state == "COMPLETED"


def test_sigkilled_worker_leaves_no_process_of_its_runs(tmp_path: Path, db_url: str) -> None:
    """The worker's guardian kills the run's process group: its child and the grandchild it started."""
    grandchild_file = tmp_path / "grandchild.pid"
    config = write_config(
        tmp_path / "orchd.toml",
        db_url,
        f"""
    [[deployments]]
    name = "long"
    command = ["sh", "-c", "sleep 60 & echo $! > {grandchild_file}; wait"]
    """,
    )
    store = store_for(db_url)
    store.sync(load_config(config), datetime.now(UTC))
    run_id = store.create_run("long", datetime.now(UTC))
    with daemons(tmp_path) as group:
        worker = group.start("orchd-worker", "--config", str(config))
        row = wait_for(lambda: (r := store.get_run(run_id)) and r.state == "RUNNING" and r, what="RUNNING")
        grandchild = int(
            wait_for(
                lambda: grandchild_file.exists() and grandchild_file.read_text().strip(),
                what="the grandchild",
            )
        )
        assert pid_alive(row.pid) and pid_alive(grandchild)
        worker.kill()
        worker.wait(timeout=10)
        wait_for(lambda: not pid_alive(row.pid), timeout=10, what="the run's child to die")
        wait_for(lambda: not pid_alive(grandchild), timeout=10, what="the run's grandchild to die")


def test_bad_config_exits_78_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "orchd.toml"
    path.write_text("[worker]\nconcurency = 4\n")
    for command in ("orchd-scheduler", "orchd-worker"):
        result = run_cli(["--config", str(path)], command=command)
        assert result.returncode == 78
        assert result.stderr.strip() == (
            f"orchd: error: {path}:2: worker.concurency: unknown key (did you mean 'concurrency'?)"
        )


def test_scheduler_once(tmp_path: Path, db_url: str) -> None:
    config = write_config(
        tmp_path / "orchd.toml",
        db_url,
        """
    [[deployments]]
    name = "x"
    command = ["true"]
    schedules = [{ interval = "1m" }]
    """,
    )
    result = run_cli(["--config", str(config), "--once"], command="orchd-scheduler")
    assert result.returncode == 0, result.stderr
    assert "runs created" in result.stdout
    assert len(store_for(db_url).list_runs()) == 10


def test_a_burst_of_signals_still_stops_cleanly(tmp_path: Path) -> None:
    """Ctrl-C pressed again and again (or SIGTERM after SIGINT) must not deadlock the shutdown:
    signal handlers take no lock."""
    config = quick_start(tmp_path)
    with daemons(tmp_path) as group:
        up = group.start("orchd", "up", "--config", str(config), cwd=tmp_path)
        wait_for(lambda: "worker started" in group.output(), what="orchd up")
        for sig in [signal.SIGINT] * 20 + [signal.SIGTERM] * 5:
            up.send_signal(sig)
        assert up.wait(timeout=30) == 0


def test_runs_start_with_no_signal_ignored_or_blocked(tmp_path: Path, db_url: str) -> None:
    """A worker started in the background by a shell inherits SIGINT and SIGQUIT ignored (and a
    supervisor may block signals): both survive exec, and its runs used to shrug off a kill -INT."""
    config = write_config(
        tmp_path / "orchd.toml",
        db_url,
        """
    [[deployments]]
    name = "masks"
    command = ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]
    """,
    )
    store = store_for(db_url)
    store.sync(load_config(config), datetime.now(UTC))
    run_id = store.create_run("masks", datetime.now(UTC))
    as_if_backgrounded = (
        "import os, signal, sys\n"
        "for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1):\n"
        "    signal.signal(sig, signal.SIG_IGN)\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGTERM})\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    worker = str(BIN / "orchd-worker")
    with daemons(tmp_path) as group:
        proc = group.spawn(
            [sys.executable, "-c", as_if_backgrounded, worker, "--config", str(config), "--burst"], "w"
        )
        assert proc.wait(timeout=60) == 0, group.output()
    row = store.get_run(run_id)
    assert row is not None and row.state == "COMPLETED", group.output()
    masks = {r.line.split(":")[0]: int(r.line.split(":")[1], 16) for r in store.run_logs(run_id)}
    # signal N is bit N-1; 32 and 33 are glibc's own, which nothing can give back their default, so
    # a test run that inherited them ignored (as CI's may) passes that on whatever the daemon does
    glibc_own = (1 << 31) | (1 << 32)
    assert {name: mask & ~glibc_own for name, mask in masks.items()} == {"SigIgn": 0, "SigBlk": 0}


def test_a_worker_keeps_its_start_up_out_of_the_collectors_full_passes(tmp_path: Path, db_url: str) -> None:
    """runtime.freeze_startup: what start-up built is frozen before the loop begins (a full pass
    of the cyclic collector walked it all, in the middle of a claim)."""
    config = write_config(
        tmp_path / "orchd.toml", db_url, '[[deployments]]\nname = "x"\ncommand = ["true"]\n'
    )
    store = store_for(db_url)
    store.sync(load_config(config), datetime.now(UTC))
    store.create_run("x", datetime.now(UTC))
    script = (
        "import gc, sys\n"
        "from orchd.cli.daemons import worker_main\n"
        f"worker_main(['--config', {str(config)!r}, '--burst'], standalone_mode=False)\n"
        "print(gc.get_freeze_count())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 10_000
    assert [r.state for r in store.list_runs()] == ["COMPLETED"]
