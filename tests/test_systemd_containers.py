"""The podman drop-in (``orchd.cli.systemd.CONTAINERS_DROPIN``, shown in README: Containers) under
a real systemd 252: the packaged ``orchd-worker@.service`` with the drop-in, PID 1 of a throwaway
systemd-nspawn container, runs container runs of a busybox image with the host's podman and runc:
output, a timeout, kill -9 of the worker, and every container removed.

The nspawn container gives the engine room (``engine_room``: a cgroup v2 tree of its own, the
keyring and bpf system calls); what the worker's sandbox refuses is the drop-in's business alone.
Podman uses its systemd cgroup manager (a scope per container, asked of PID 1 over D-Bus) and a
bridge network, as on a Debian 12 host.  The scheduler and the CLI run as the orchd user, the
worker as root: they share the SQLite database in /var/lib/orchd.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchd.cli.systemd import CONTAINERS_DROPIN
from orchd.states import LIVE
from tests.containers.images import BUSYBOX_CHANGES, busybox_tar
from tests.helpers import wait_for
from tests.systemd import deb
from tests.systemd.container import INNER_ENV, Container
from tests.systemd.deb import run_state

SCHEDULER = "orchd-scheduler.service"
POOL = "containers"
WORKER = f"orchd-worker@{POOL}.service"
IMAGE = "localhost/orchd-busybox:systemd"
CONFIG = f"""{deb.QUICK}container_runtime = "podman"

[[pools]]
name = "{POOL}"
image = "{IMAGE}"
container = {{ pull = "never" }}

[[deployments]]
name = "boxed"
pool = "{POOL}"
command = ["sh", "-c", "echo hello from run $ORCHD_RUN_ID as uid $(id -u); echo to stderr >&2"]

[[deployments]]
name = "interrupted"
pool = "{POOL}"
command = ["sh", "-c", "sleep 4; echo attempt $ORCHD_ATTEMPT done"]
retries = 1
retry_delay = "1s"

[[deployments]]
name = "endless"
pool = "{POOL}"
command = ["sleep", "600"]
timeout = "2s"
"""
#: The host's podman configuration, as installing podman puts it in /etc (the container's /etc
#: starts empty): the signature policy the image store checks.
PODMAN_CONFFILES = ("/etc/containers/policy.json", "/etc/containers/registries.conf")
#: The engine's configuration for this machine kind: it binds the pids controller to cgroup v1, so
#: the container's cgroup v2 tree has none and podman's default limit (2048 processes) cannot be
#: set.  A host with every controller on cgroup v2 needs no such line.
CONTAINERS_CONF = """\
[containers]
pids_limit = 0
"""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # make deb pip-installs from PyPI


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """The package installed, the busybox image in the container's image store, the drop-in
    given to the worker of pool "containers", and both daemons started."""
    inside = INNER_ENV["PATH"]  # the container runs the host's /usr
    missing = [tool for tool in ("podman", "runc", "busybox") if not shutil.which(tool, path=inside)]
    missing += [conffile for conffile in PODMAN_CONFFILES if not Path(conffile).exists()]
    if missing:
        deb.not_here(f"needs {', '.join(missing)} (apt-get install podman runc busybox-static)")
    share = tmp_path_factory.mktemp("share")
    (share / "busybox.tar").write_bytes(busybox_tar())
    with deb.installed("orchd-podman", share, CONFIG, engine_room=True) as box:
        for conffile in PODMAN_CONFFILES:
            box.write(conffile, Path(conffile).read_text())
        box.write("/etc/containers/containers.conf", CONTAINERS_CONF)
        box.run("install", "-d", "-m", "1777", "/var/tmp")  # base-files' (the container's / is a tmpfs)
        changes = [arg for change in BUSYBOX_CHANGES for arg in ("--change", change)]
        box.run("podman", "import", *changes, "/mnt/share/busybox.tar", IMAGE, timeout=120)
        box.write(f"/etc/systemd/system/{WORKER}.d/containers.conf", CONTAINERS_DROPIN)
        box.run("systemctl", "daemon-reload")
        box.run("systemctl", "start", SCHEDULER, WORKER, timeout=120)  # returns after READY=1
        yield box


def containers_of_run(box: Container, run_id: int, *filters: str) -> list[str]:
    """Ids of the run's containers in the container's image store, in any state (or as filtered)."""
    label = f"label=orchd.run_id={run_id}"
    result = box.run("podman", "ps", "--all", "--quiet", "--filter", label, *filters)
    return result.stdout.split()


def create(box: Container, deployment: str) -> int:
    """A run of ``deployment`` created by the CLI, as the orchd user."""
    return int(json.loads(box.run("orchd", "run", "create", deployment, "--json", user="orchd").stdout)["id"])


def finished(box: Container, deployment: str) -> dict[str, Any]:
    """A run of ``deployment`` created by the CLI (as orchd), once it has ended."""
    run_id = create(box, deployment)
    return wait_for(
        lambda: (run := run_state(box, run_id))["state"] not in LIVE and run,
        timeout=60,
        what=f"run {run_id} of {deployment} to end",
    )


def test_the_worker_runs_as_root_under_the_drop_in_and_its_engine_answers(box: Container) -> None:
    assert box.run("systemctl", "is-active", SCHEDULER, WORKER).stdout.split() == ["active", "active"]
    worker = box.show(WORKER, "MainPID")
    assert box.run("ps", "-o", "user=", "-p", worker).stdout.strip() == "root"
    assert box.show(WORKER, "DropInPaths") == f"/etc/systemd/system/{WORKER}.d/containers.conf"
    # no mount namespace of its own: podman's mounts are seen by every podman
    namespaces = box.run("readlink", f"/proc/{worker}/ns/mnt", "/proc/1/ns/mnt").stdout.split()
    assert namespaces[0] == namespaces[1], namespaces
    said = box.journal("--unit", WORKER, "--output", "cat")
    assert 'container engine ready engine="podman ' in said, said
    assert "container runs will fail" not in said
    # PID 1 logs what it could not apply (a sandbox option, an unknown setting) as warnings
    warnings = box.journal("--boot", "--priority", "warning", "--output", "cat", "_PID=1")
    assert not [line for line in warnings.splitlines() if "orchd" in line], warnings
    # the scheduler (User=orchd) keeps its state directory: the root worker shares, not takes it
    assert box.run("stat", "--format", "%U:%G", "/var/lib/orchd").stdout.strip() == "orchd:orchd"
    # and the orchd user's CLI and scheduler can wake it: its wake-up socket is theirs
    wake = box.run("find", "/var/lib/orchd/orchd.db-wake", "-printf", "%u:%g %y\n").stdout.split("\n")
    assert sorted(filter(None, wake)) == ["orchd:orchd d", "orchd:orchd s"], wake


def test_a_container_run_lands_in_the_database_and_its_container_is_removed(box: Container) -> None:
    run = finished(box, "boxed")
    assert (run["state"], run["exit_code"]) == ("COMPLETED", 0), run
    logs = box.run("orchd", "run", "logs", str(run["id"]), "--json", user="orchd").stdout
    lines = [(entry["stream"], entry["line"]) for entry in map(json.loads, logs.splitlines())]
    assert ("stdout", f"hello from run {run['id']} as uid 0") in lines, lines
    assert ("stderr", "to stderr") in lines, lines
    assert f"hello from run {run['id']} as uid 0" in box.journal("--unit", WORKER, "--output", "cat")
    wait_for(lambda: not containers_of_run(box, run["id"]), what=f"run {run['id']}'s container removed")
    # the container had a scope of its own, made by PID 1 for podman's systemd cgroup manager
    assert "libpod-" in box.journal("--boot", "--output", "cat", "_PID=1")


def test_a_timeout_stops_the_container(box: Container) -> None:
    run = finished(box, "endless")
    assert run["state"] == "TIMED_OUT", run
    wait_for(lambda: not containers_of_run(box, run["id"]), what=f"run {run['id']}'s container removed")


def test_kill_9_of_the_worker_leaves_no_container_and_the_run_is_retried(box: Container) -> None:
    run_id = create(box, "interrupted")
    running = ("--filter", "status=running", "--filter", "label=orchd.attempt=1")
    wait_for(lambda: containers_of_run(box, run_id, *running), timeout=30, what="attempt 1's container")
    pid = box.show(WORKER, "MainPID")
    box.run("kill", "-9", pid)
    # the container outlives its worker (conmon is in a scope of its own): the guardian, or the
    # restarted worker's sweep, removes it
    gone = ("--filter", "label=orchd.attempt=1")
    wait_for(lambda: not containers_of_run(box, run_id, *gone), timeout=30, what="the orphan removed")
    wait_for(lambda: box.show(WORKER, "MainPID") not in ("0", pid), timeout=30, what="a restarted worker")
    final = wait_for(
        lambda: (run := run_state(box, run_id))["state"] not in LIVE and run, timeout=60, what="the retry"
    )
    assert (final["state"], final["attempt"]) == ("COMPLETED", 2), final
    assert "CRASHED" in [s["to"] for s in final["states"]]
    assert box.show(WORKER, "NRestarts") == "1"
    wait_for(lambda: not containers_of_run(box, run_id), what=f"run {run_id}'s containers removed")
