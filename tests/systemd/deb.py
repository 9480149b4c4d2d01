"""The .deb, built once per test session by ``make deb`` (both test_deb and the real-systemd tests
use it), and a booted container with it installed."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.systemd import container
from tests.systemd.container import Container, ContainerError

ROOT = Path(__file__).resolve().parents[2]
#: The start of a test's orchd.toml: a quick scheduler loop, a short lease (its [worker] goes on).
QUICK = """\
[scheduler]
loop_interval = "200ms"
[worker]
heartbeat = "1s"
lease_timeout = "3s"
poll_interval = "500ms"
"""


def unavailable_reason() -> str | None:
    for tool in ("dpkg-buildpackage", "dh", "make"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install debhelper make)"
    return None


@functools.cache
def build() -> Path:
    """Build the package from the current tree and return its path."""
    result = subprocess.run(
        ["make", "--no-print-directory", "deb"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"make deb failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return ROOT / result.stdout.strip().splitlines()[-1]


def not_here(reason: str) -> NoReturn:
    """Skip where a container cannot run; in CI that is a failure, never a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the real-systemd tests: {reason}")
    pytest.skip(reason)


@contextmanager
def installed(name: str, share: Path, config: str, engine_room: bool = False) -> Iterator[Container]:
    """A booted container with the package installed by dpkg (the shipped units, the maintainer
    scripts' user and directories, the virtualenv under /opt/orchd) and ``config`` as its
    /etc/orchd/orchd.toml.  ``share`` (bound at /mnt/share) receives the .deb."""
    reason = container.unavailable_reason() or unavailable_reason()
    if reason:
        not_here(reason)
    started = time.monotonic()
    (share / "orchd.deb").write_bytes(build().read_bytes())
    try:
        box = Container(name, share, engine_room=engine_room)
    except ContainerError as exc:
        not_here(str(exc))
    try:
        box.copy_dpkg_database()
        box.run("dpkg", "--install", "/mnt/share/orchd.deb", timeout=120)
        # no network in here: network-online.target must not wait for one
        box.run("systemctl", "mask", "systemd-networkd-wait-online.service")
        box.write("/etc/orchd/orchd.toml", config)
        yield box
    finally:
        box.close()
        elapsed = time.monotonic() - started
        print(f"real-systemd fixture {name} (.deb, boot, install, the tests, halt): {elapsed:.1f}s")


def runs(box: Container, deployment: str) -> list[dict[str, Any]]:
    """``orchd run ls --json`` as the orchd user (it owns the SQLite files)."""
    result = box.run(
        "orchd", "run", "ls", "--json", "--deployment", deployment, "--limit", "1000", user="orchd"
    )
    return list(json.loads(result.stdout))


def run_state(box: Container, run_id: int) -> dict[str, Any]:
    return dict(json.loads(box.run("orchd", "run", "show", str(run_id), "--json", user="orchd").stdout))
