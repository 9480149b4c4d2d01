"""The packaged units under a real systemd 252 (PID 1 of a throwaway systemd-nspawn container):
start, a scheduled run, the journal, kill -9 and recovery, reload, a bad config, draining stop;
the dashboard's unit: ready, its status line, its watchdog, pages and a live stream, a stop that
ends open streams.

The .deb is installed in the container with dpkg, so what runs is what a user gets: the shipped
units, the maintainer scripts' user and directories, the virtualenv under /opt/orchd.  The
database is the default SQLite file in /var/lib/orchd (the container has no network).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.systemd import deb
from tests.systemd.container import Container
from tests.systemd.deb import run_state, runs

SCHEDULER = "orchd-scheduler.service"
WORKER = "orchd-worker@docker-test-pool.service"
WEB = "orchd-web.service"
#: A client of the dashboard's live stream, run inside the container (its python3 is the host's).
STREAM_CLIENT = """
import urllib.request
with urllib.request.urlopen("http://127.0.0.1:4200/api/events/stream", timeout=120) as answer:
    print("connected", answer.status, flush=True)
    for line in answer:
        print(line.decode().rstrip(), flush=True)
print("stream ended", flush=True)
"""
CONFIG = (
    deb.QUICK
    + """\
shutdown_grace = "20s"

[[deployments]]
name = "hello"
pool = "docker-test-pool"
command = ["sh", "-c", "echo hello from run $ORCHD_RUN_ID"]
schedules = [{ interval = "2s" }]
"""
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # make deb pip-installs from PyPI


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A booted container with the package installed (both daemons are started by the first test)."""
    with deb.installed("orchd-systemd", tmp_path_factory.mktemp("share"), CONFIG) as box:
        yield box


def one_off(box: Container, name: str, command: list[str], **extra: Any) -> None:
    """A deployment with a single run due shortly, added by reloading the scheduler (a schedule
    fires only for times after it was added, hence the margin)."""
    at = (datetime.now(UTC) + timedelta(seconds=1.5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    settings = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    box.write(
        f"/etc/orchd/deployments.d/{name}.toml",
        f'[[deployments]]\nname = "{name}"\npool = "docker-test-pool"\ncommand = {json.dumps(command)}\n'
        f"{settings}schedules = [{{ at = {at} }}]\n",
    )
    box.run("systemctl", "reload", SCHEDULER)


def main_pid(box: Container, unit: str) -> int:
    return int(box.show(unit, "MainPID"))


def test_start_both_units_and_a_scheduled_run_completes(box: Container) -> None:
    box.run("systemctl", "start", SCHEDULER, WORKER, timeout=120)  # returns after READY=1
    for unit in (SCHEDULER, WORKER):
        assert box.run("systemctl", "is-active", unit).stdout.strip() == "active"
        assert box.run("ps", "-o", "user=", "-p", str(main_pid(box, unit))).stdout.strip() == "orchd"
    wait_for(lambda: box.show(SCHEDULER, "StatusText").startswith("leader, 1 deployments"), what="leader")
    assert box.show(WORKER, "StatusText").endswith("runs, pools docker-test-pool")
    done = wait_for(
        lambda: [r for r in runs(box, "hello") if r["state"] == "COMPLETED"],
        timeout=30,
        what="a COMPLETED run",
    )
    assert done[0]["exit_code"] == 0
    # PID 1 logs what it could not apply (a sandbox option, an unknown setting) as warnings
    warnings = box.journal("--boot", "--priority", "warning", "--output", "cat", "_PID=1")
    assert not [line for line in warnings.splitlines() if "orchd" in line], warnings
    assert box.show(SCHEDULER, "FragmentPath") == "/lib/systemd/system/orchd-scheduler.service"


def test_journal_has_the_runs_output_with_its_run_id(box: Container) -> None:
    run_id = wait_for(lambda: [r["id"] for r in runs(box, "hello") if r["state"] == "COMPLETED"])[0]

    def entries() -> list[dict[str, Any]]:
        out = box.journal("--unit", WORKER, "--output", "json")
        return [json.loads(line) for line in out.splitlines()]

    line = f"hello from run {run_id} run_id={run_id} stream=stdout"
    [entry] = wait_for(lambda: [e for e in entries() if e["MESSAGE"] == line], what=line)
    assert entry["PRIORITY"] == "6"  # the <6> prefix became the priority, and is gone from the text
    assert not any(str(e.get("MESSAGE", "")).startswith("<") for e in entries())
    assert f"run_id={run_id} deployment=hello attempt=1" in box.journal("--unit", WORKER, "--output", "cat")
    assert line not in box.journal("--unit", WORKER, "--priority", "warning", "--output", "cat")


def test_reload_picks_up_a_new_deployment(box: Container) -> None:
    pid = main_pid(box, SCHEDULER)
    one_off(box, "added", ["echo", "added by reload"])
    wait_for(lambda: box.show(SCHEDULER, "StatusText").startswith("leader, 2 deployments"), what="reloaded")
    wait_for(
        lambda: [r for r in runs(box, "added") if r["state"] == "COMPLETED"], timeout=30, what="added run"
    )
    assert main_pid(box, SCHEDULER) == pid
    assert "config reloaded" in box.journal("--unit", SCHEDULER, "--output", "cat")


def test_kill_9_worker_is_restarted_and_its_run_recovered(box: Container) -> None:
    one_off(box, "interrupted", ["sh", "-c", "sleep 3; echo survived"], retries=1, retry_delay="1s")
    run = wait_for(lambda: [r for r in runs(box, "interrupted") if r["state"] == "RUNNING"], timeout=30)[0]
    pid = main_pid(box, WORKER)
    children = box.run("pgrep", "--parent", str(pid)).stdout.split()
    box.run("kill", "-9", str(pid))
    wait_for(lambda: main_pid(box, WORKER) not in (0, pid), timeout=30, what="a new worker process")
    wait_for(lambda: box.run("systemctl", "is-active", WORKER, check=False).stdout.strip() == "active")
    assert box.show(WORKER, "NRestarts") == "1"
    # the run's process died with its worker (it must not run twice at once)
    assert children and box.run("ps", "--pid", ",".join(children), check=False).returncode == 1
    final = wait_for(
        lambda: (r := run_state(box, run["id"]))["state"] == "COMPLETED" and r, timeout=60, what="the retry"
    )
    assert final["attempt"] == 2
    assert "CRASHED" in [s["to"] for s in final["states"]]


def test_bad_config_fails_the_unit_without_a_restart_loop(box: Container) -> None:
    bad = "/etc/orchd/deployments.d/zz-bad.toml"
    box.write(bad, '[[deployments]]\nname = "bad"\n')  # no command
    try:
        box.run("systemctl", "reload", SCHEDULER)  # a reload with a bad config keeps the old one
        wait_for(lambda: "reload refused" in box.journal("--unit", SCHEDULER, "--output", "cat"))
        assert box.run("systemctl", "is-active", SCHEDULER).stdout.strip() == "active"

        assert box.run("systemctl", "restart", SCHEDULER, check=False).returncode != 0
        assert box.show(SCHEDULER, "ExecMainStatus") == "78"
        restart_sec = float(box.show(SCHEDULER, "RestartUSec").rstrip("s"))
        time.sleep(restart_sec + 1)  # absence of a restart: nothing to wait for but time itself
        assert box.run("systemctl", "is-failed", SCHEDULER, check=False).stdout.strip() == "failed"
        assert box.show(SCHEDULER, "NRestarts") == "0"
        errors = box.journal("--unit", SCHEDULER, "--priority", "err", "--output", "cat")
        assert "deployments.bad.command: required" in errors  # `journalctl -p err` shows why
    finally:
        (box.root / bad.lstrip("/")).unlink()
    box.run("systemctl", "start", SCHEDULER)
    assert box.run("systemctl", "is-active", SCHEDULER).stdout.strip() == "active"


def test_stop_lets_the_running_run_finish(box: Container) -> None:
    one_off(box, "drained", ["sh", "-c", "sleep 2; echo finished while stopping"])
    run = wait_for(lambda: [r for r in runs(box, "drained") if r["state"] == "RUNNING"], timeout=30)[0]
    box.run("systemctl", "stop", WORKER, timeout=120)  # returns when the worker has exited
    assert (box.show(WORKER, "ActiveState"), box.show(WORKER, "Result")) == ("inactive", "success")
    assert run_state(box, run["id"])["state"] == "COMPLETED"
    assert "finished while stopping" in box.journal("--unit", WORKER, "--output", "cat")
    box.run("systemctl", "stop", SCHEDULER, timeout=60)
    assert (box.show(SCHEDULER, "ActiveState"), box.show(SCHEDULER, "Result")) == ("inactive", "success")


def get(box: Container, path: str) -> str:
    """GET a page of the dashboard inside the container (curl fails on an HTTP error)."""
    return box.run("curl", "--silent", "--show-error", "--fail", f"http://127.0.0.1:4200{path}").stdout


def test_the_dashboard_unit_serves_streams_and_stops(box: Container) -> None:
    box.run("systemctl", "start", SCHEDULER, WORKER, timeout=120)  # the runs it shows (no-op if up)
    box.run("systemctl", "start", WEB, timeout=120)  # Type=notify: returns after READY=1
    assert box.run("systemctl", "is-active", WEB).stdout.strip() == "active"
    assert box.run("ps", "-o", "user=", "-p", str(main_pid(box, WEB))).stdout.strip() == "orchd"
    assert box.show(WEB, "StatusText") == "serving http://127.0.0.1:4200/"
    # WATCHDOG=1 keeps coming from the loop that serves requests
    pinged = box.show(WEB, "WatchdogTimestampMonotonic")
    wait_for(lambda: box.show(WEB, "WatchdogTimestampMonotonic") != pinged, what="a watchdog ping")

    # it reads the database the other units write, from inside its sandbox
    assert json.loads(get(box, "/api/health"))["status"] == "ok"
    assert 'href="/deployments/hello"' in get(box, "/deployments")
    done = wait_for(
        lambda: json.loads(get(box, "/api/runs?deployment=hello&state=COMPLETED"))["runs"],
        timeout=30,
        what="a COMPLETED run on the dashboard",
    )
    assert done[0]["deployment"] == "hello"
    access = box.journal("--unit", WEB, "--output", "cat")
    assert "request method=GET path=/api/health status=200" in access

    # a live stream sees a run created by the CLI, and ends when the unit stops
    box.run("systemd-run", "--unit=stream-client", "python3", "-c", STREAM_CLIENT)

    def client_said() -> str:
        return box.journal("--unit", "stream-client", "--output", "cat")

    wait_for(lambda: "connected 200" in client_said(), what="the stream client connected")
    created = box.run("orchd", "run", "create", "hello", "--json", user="orchd")
    run_id = json.loads(created.stdout)["id"]
    wait_for(lambda: f'"run_id":{run_id}' in client_said(), what=f"run {run_id} on the stream")
    box.run("systemctl", "stop", WEB, timeout=60)  # returns when the daemon has exited
    # a stop that waited for the open stream would end in SIGKILL at TimeoutStopSec (Result=timeout)
    assert (box.show(WEB, "ActiveState"), box.show(WEB, "Result")) == ("inactive", "success")
    assert box.show(WEB, "ExecMainStatus") == "0"
    wait_for(lambda: "stream ended" in client_said(), what="the stream closed by the stop")
    said = box.journal("--unit", WEB, "--output", "cat")
    assert "stopping: closing live streams" in said and "orchd-web stopped" in said
