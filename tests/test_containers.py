"""Container runs with a real podman and local images: output and exit codes, environment and
parameters, timeout, cancel, out of memory, bad images, an entrypoint in a Python image, and no
container left behind (after each run, and after a worker died)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchd.config import Config, load_config
from orchd.db.engine import mask
from orchd.db.store import Store
from orchd.worker.containers import Engine, Leftover, database_label
from orchd.worker.daemon import Worker
from tests.cli_support import Orchd, write_config
from tests.conftest import MakeConfig
from tests.containers.images import containers_of
from tests.helpers import daemons, history, store_for, wait_for

pytestmark = pytest.mark.containers
SQLITE = pytest.mark.parametrize("backend", ["sqlite"])


def now() -> datetime:
    return datetime.now(UTC)


def pool(image: str, **container: str) -> str:
    """A default pool whose runs execute in ``image``, with no network and no pulling."""
    settings = {"pull": "never", "network": "none", **container}
    inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    return f'[[pools]]\nname = "default"\nimage = "{image}"\ncontainer = {{ {inline} }}\n'


def deploy(make_config: MakeConfig, store: Store, body: str) -> Config:
    config = make_config(body)
    store.sync(config, now())
    return config


def burst(config: Config, store: Store, name: str = "w") -> Worker:
    worker = Worker(config, store, ["default"], 4, name=name, burst=True)
    worker.run(threading.Event())
    return worker


def leftovers(podman: Engine, store: Store) -> list[str]:
    return containers_of(podman, database_label(mask(store.engine.url)))


def test_output_exit_codes_environment_and_cleanup(
    store: Store, make_config: MakeConfig, busybox: str, podman: Engine, tmp_path: Path
) -> None:
    config = deploy(
        make_config,
        store,
        pool(busybox)
        + """
    [[deployments]]
    name = "ok"
    command = ["sh", "-c", "echo hello; echo to-stderr >&2; env | grep -E '^(ORCHD_|GREETING=)' | sort; pwd"]
    parameters = { size = 3 }
    env = { GREETING = "hi" }
    working_dir = "/tmp"
    [[deployments]]
    name = "bad"
    command = ["sh", "-c", "echo partial; exit 3"]
    [[deployments]]
    name = "image-default"
    """,
    )
    ok = store.create_run("ok", now(), parameters={"color": "red"})
    bad, default = store.create_run("bad", now()), store.create_run("image-default", now())
    burst(config, store)
    ok_row, bad_row, default_row = (store.get_run(r) for r in (ok, bad, default))
    assert ok_row is not None and bad_row is not None and default_row is not None
    assert (ok_row.state, ok_row.exit_code) == ("COMPLETED", 0)
    assert (bad_row.state, bad_row.exit_code, bad_row.error) == ("FAILED", 3, "exit code 3")
    assert default_row.state == "COMPLETED"
    assert [r.line for r in store.run_logs(default)] == ["image default"]
    logs = store.run_logs(ok)
    assert ("stdout", "hello") in {(r.stream, r.line) for r in logs}
    assert ("stderr", "to-stderr") in {(r.stream, r.line) for r in logs}
    env = dict(r.line.split("=", 1) for r in logs if "=" in r.line)
    assert env["ORCHD_RUN_ID"] == str(ok) and env["ORCHD_DEPLOYMENT"] == "ok"
    assert env["ORCHD_ATTEMPT"] == "1" and env["GREETING"] == "hi"
    assert json.loads(env["ORCHD_PARAMETERS"]) == {"size": 3, "color": "red"}
    assert datetime.fromisoformat(env["ORCHD_SCHEDULED_FOR"]).tzinfo is not None
    assert [r.line for r in logs if r.stream == "stdout"][-1] == "/tmp"  # a path inside the container
    assert [r.line for r in store.run_logs(bad)] == ["partial"]
    assert leftovers(podman, store) == []  # each container removed once its outcome was recorded


@SQLITE
def test_timeout_and_cancel_stop_the_container(
    store: Store, make_config: MakeConfig, busybox: str, podman: Engine
) -> None:
    config = deploy(
        make_config,
        store,
        pool(busybox)
        + """
    [worker]
    kill_grace = "1s"
    poll_interval = "200ms"
    [[deployments]]
    name = "stuck"
    command = ["sh", "-c", "trap '' TERM; echo started; while true; do sleep 1; done"]
    timeout = "1s"
    [[deployments]]
    name = "long"
    command = ["sh", "-c", "echo started; sleep 60"]
    """,
    )
    stuck, long = store.create_run("stuck", now()), store.create_run("long", now())
    stop = threading.Event()
    worker = Worker(config, store, ["default"], 4, name="w")
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: [r.line for r in store.run_logs(long)] == ["started"], what="the long run's output")
        store.cancel_run(long, now())
        wait_for(lambda: store.get_run(long).state == "CANCELLED", timeout=20, what="CANCELLED")  # type: ignore[union-attr]
        wait_for(lambda: store.get_run(stuck).state == "TIMED_OUT", timeout=30, what="TIMED_OUT")  # type: ignore[union-attr]
    finally:
        stop.set()
        thread.join(timeout=60)
    timed_out, cancelled = store.get_run(stuck), store.get_run(long)
    assert timed_out is not None and cancelled is not None
    assert timed_out.error.startswith("timed out after")
    assert timed_out.exit_code == 137  # it ignored SIGTERM: killed after the grace
    assert cancelled.exit_code == 143  # SIGTERM through the init, within the grace
    assert ("CANCELLING", "CANCELLED") in history(store, long)
    assert leftovers(podman, store) == []


@SQLITE
def test_engine_errors_and_out_of_memory_fail_the_run_with_a_reason(
    store: Store, make_config: MakeConfig, busybox: str, podman: Engine
) -> None:
    config = deploy(
        make_config,
        store,
        pool(busybox)
        + """
    [[deployments]]
    name = "missing-image"
    image = "localhost/orchd-no-such-image:1"
    command = ["true"]
    [[deployments]]
    name = "bad-option"
    command = ["true"]
    container = { options = ["--no-such-option"] }
    [[deployments]]
    name = "no-such-command"
    command = ["/no/such/command"]
    [[deployments]]
    name = "hungry"
    command = ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1 && echo survived"]
    container = { memory = "16m" }
    """,
    )
    ids = {name: store.create_run(name, now()) for name in ("missing-image", "bad-option", "no-such-command")}
    ids["hungry"] = store.create_run("hungry", now())
    burst(config, store)
    rows = {name: store.get_run(run_id) for name, run_id in ids.items()}
    assert all(r is not None and r.state == "FAILED" for r in rows.values()), rows
    errors = {name: r.error for name, r in rows.items()}  # type: ignore[union-attr]
    assert errors["missing-image"].startswith("container engine error: ")
    assert "image not known" in errors["missing-image"]
    assert errors["bad-option"].startswith("container engine error: ")
    assert "no-such-option" in errors["bad-option"]
    # the init (podman's catatonit) reports the failed exec and exits 1
    assert any("No such file or directory" in r.line for r in store.run_logs(ids["no-such-command"]))
    # podman with cgroups v1 does not flag every OOM kill: "most likely" then
    assert "out of memory" in errors["hungry"] and "container memory limit 16m" in errors["hungry"]
    assert all("\n" not in e for e in errors.values())
    assert leftovers(podman, store) == []


@SQLITE
def test_entrypoint_runs_in_a_python_image_and_returns_its_result(
    store: Store, make_config: MakeConfig, python_image: str, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "jobs.py").write_text(
        "import sys\n"
        "def report(days, name='x'):\n"
        "    print('in', sys.version.split()[0])\n"
        "    return {'days': days * 2, 'name': name}\n"
    )
    config = deploy(
        make_config,
        store,
        pool(python_image)
        + f"""
    [[deployments]]
    name = "report"
    entrypoint = "jobs:report"
    parameters = {{ days = 7 }}
    working_dir = "/code"
    container = {{ volumes = ["{code}:/code:ro"], user = "65534:65534" }}
    """,
    )
    run_id = store.create_run("report", now(), parameters={"name": "weekly"})
    burst(config, store)
    row = store.get_run(run_id)
    assert row is not None and row.state == "COMPLETED", (row, store.run_logs(run_id))
    assert row.result == {"days": 14, "name": "weekly"}
    assert [r.line for r in store.run_logs(run_id)] == ["in 3.11.2"]
    assert not list(Path(config.state_dir).glob(".orchd-result-*"))


@SQLITE
def test_a_worker_start_removes_what_a_dead_worker_left(
    store: Store, make_config: MakeConfig, busybox: str, podman: Engine
) -> None:
    """A container whose worker died with its guardian (both SIGKILLed) is found by its labels."""
    config = deploy(
        make_config,
        store,
        pool(busybox) + '[[deployments]]\nname = "done"\ncommand = ["true"]\n',
    )
    run_id = store.create_run("done", now())
    burst(config, store, name="first")  # the run is COMPLETED: a container of it is a leftover
    database = database_label(mask(store.engine.url))
    labels = {"database": database, "run_id": str(run_id), "attempt": "1", "worker": "first"}
    leftover = [
        podman.binary,
        "run",
        "--detach",
        *podman._limits(),
        *[arg for k, v in labels.items() for arg in ("--label", f"orchd.{k}={v}")],
        "--network",
        "none",
        busybox,
        "sleep",
        "600",
    ]
    subprocess.run(leftover, check=True, capture_output=True, timeout=60)
    assert len(leftovers(podman, store)) == 1
    started = time.monotonic()
    burst(config, store, name="second")
    assert leftovers(podman, store) == []
    assert time.monotonic() - started < 30


@SQLITE
def test_a_missing_engine_is_reported_and_fails_only_container_runs(
    store: Store, make_config: MakeConfig, busybox: str, tmp_path: Path, db_url: str
) -> None:
    body = (
        pool(busybox)
        + '[[deployments]]\nname = "boxed"\ncommand = ["true"]\n'
        + '[[deployments]]\nname = "plain"\npool = "other"\ncommand = ["true"]\n'
    )
    broken = '[worker]\ncontainer_binary = "/nonexistent/podman"\n'
    config = deploy(make_config, store, broken + body)
    boxed, plain = store.create_run("boxed", now()), store.create_run("plain", now())
    worker = Worker(config, store, ["default", "other"], 4, name="w", burst=True)
    worker.run(threading.Event())
    assert "pools default need a container engine: no container engine: /nonexistent/podman not found" in (
        worker._status()
    )
    row = store.get_run(boxed)
    assert row is not None and row.state == "FAILED"
    assert row.error.startswith("no container engine: /nonexistent/podman not found")
    assert store.get_run(plain).state == "COMPLETED"  # type: ignore[union-attr]

    cli = Orchd(write_config(tmp_path / "status.toml", db_url, broken + body), tmp_path / "state")
    report = json.loads(cli("status", "--json").stdout)
    [check] = [c for c in report["checks"] if c["name"] == "containers"]
    assert not check["ok"] and check["detail"].startswith("pool default runs containers, but on this host: ")
    cli = Orchd(write_config(tmp_path / "status.toml", db_url, body), tmp_path / "state")
    report = json.loads(cli("status", "--json").stdout)
    [check] = [c for c in report["checks"] if c["name"] == "containers"]
    assert check["ok"] and check["detail"].startswith("podman ")


@SQLITE
@pytest.mark.slow
def test_kill_9_of_the_worker_removes_its_container_and_the_run_is_retried_once(
    tmp_path: Path, db_url: str, busybox: str, podman: Engine
) -> None:
    config = write_config(
        tmp_path / "orchd.toml",
        db_url,
        pool(busybox)
        + """
    [scheduler]
    loop_interval = "200ms"
    [worker]
    heartbeat = "300ms"
    lease_timeout = "2s"
    poll_interval = "200ms"
    [[deployments]]
    name = "victim"
    command = ["sh", "-c", "echo attempt $ORCHD_ATTEMPT; sleep 4; echo done"]
    retries = 1
    retry_delay = "0s"
    """,
    )
    store = store_for(db_url)
    store.sync(load_config(config), now())
    run_id = store.create_run("victim", now())
    database = database_label(mask(store.engine.url))

    def containers(attempt: int) -> list[Leftover]:
        return [c for c in podman.leftovers(database, run_id) if c.attempt == attempt]

    with daemons(tmp_path) as group:
        group.start("orchd-scheduler", "--config", str(config))
        first = group.start("orchd-worker", "--config", str(config), "--name", "first")
        wait_for(lambda: store.get_run(run_id).state == "RUNNING", what="RUNNING")  # type: ignore[union-attr]
        wait_for(lambda: containers(1), what="the first attempt's container")
        first.kill()
        first.wait(timeout=10)
        killed = time.monotonic()
        group.start("orchd-worker", "--config", str(config), "--name", "second")
        wait_for(lambda: not containers(1), timeout=2 + 5, what="the container to go with its worker")
        gone_at = now()
        print(f"\ncontainer removed {time.monotonic() - killed:.2f}s after the worker's SIGKILL (lease 2s)")
        wait_for(lambda: store.get_run(run_id).state == "COMPLETED", timeout=60, what="the retry")  # type: ignore[union-attr]
    steps = store.run_history(run_id)
    assert [(h.from_state, h.to_state) for h in steps].count(("PENDING", "RUNNING")) == 2
    assert ("RUNNING", "CRASHED") in [(h.from_state, h.to_state) for h in steps]
    [retry_started] = [h.at for h in steps if h.to_state == "RUNNING" and h.attempt == 2]
    assert gone_at <= retry_started  # the retry never ran next to the first attempt's container
    row = store.get_run(run_id)
    assert row is not None and (row.attempt, row.worker) == (2, "second")
    assert [r.line for r in store.run_logs(run_id) if r.attempt == 2] == ["attempt 2", "done"]
    assert leftovers(podman, store) == []
