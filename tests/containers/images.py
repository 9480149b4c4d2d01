"""Test images built locally (no registry is reachable here), once per test session, removed at its end.

- busybox: the host's static busybox and a few applet links (about 2 MB, 0.2 s to build);
- python: the host's python3.11 with its standard library (about 76 MB, 3 s), for entrypoint runs.

Tags carry the test session's pid, so two sessions on one machine never remove each other's images.
Where podman is missing the container tests skip, except in CI, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchd.worker.containers import Engine, EngineUnavailable, client_environment

HERE = Path(__file__).resolve().parent
BUSYBOX_APPLETS = ("sh", "echo", "sleep", "cat", "ls", "env", "true", "id", "dd", "pwd", "grep", "sort")


def podman() -> Engine:
    """The podman of this machine, working, or skip (fail in CI) saying what to install."""
    try:
        engine = Engine.find("podman")
        engine.check()
    except EngineUnavailable as exc:
        reason = f"container tests need podman (apt-get install podman runc netavark): {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return engine


def podman_or_none() -> Engine | None:
    """Podman if it works here (for the benchmark and the chaos harness, which go on without it)."""
    try:
        engine = Engine.find("podman")
        engine.check()
    except EngineUnavailable as exc:
        print(f"no podman: {exc}", flush=True)
        return None
    return engine


def _engine(engine: Engine, *args: str, stdin: bytes | None = None) -> str:
    result = subprocess.run(
        [engine.binary, *args], input=stdin, capture_output=True, timeout=120, env=client_environment({})
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode().strip()


def _tar(rootfs: Path) -> bytes:
    return subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout


def _import(engine: Engine, tar: bytes, tag: str, *changes: str) -> str:
    options = [arg for change in changes for arg in ("--change", change)]
    _engine(engine, "import", *options, "-", tag, stdin=tar)
    return tag


#: The image settings of the busybox image (``import --change``).
BUSYBOX_CHANGES = ("ENV PATH=/bin", 'CMD ["/bin/sh", "-c", "echo image default"]')


def busybox_tar() -> bytes:
    """The busybox image's file system as a tar, for ``podman import`` where the image is needed
    (here, or inside a test container)."""
    busybox = shutil.which("busybox")
    assert busybox, "the container tests need busybox (apt-get install busybox-static)"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for directory in ("bin", "tmp", "etc", "work"):
            (root / directory).mkdir()
        shutil.copy(busybox, root / "bin" / "busybox")
        for applet in BUSYBOX_APPLETS:
            (root / "bin" / applet).symlink_to("busybox")
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
        return _tar(root)


def busybox_image(engine: Engine, tag: str) -> str:
    return _import(engine, busybox_tar(), tag, *BUSYBOX_CHANGES)


def python_image(engine: Engine, tag: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(
            ["bash", str(HERE / "build-python-rootfs.sh"), str(root)], check=True, capture_output=True
        )
        return _import(engine, _tar(root), tag, "ENV PATH=/usr/bin")


@contextmanager
def built(engine: Engine, build: object, name: str) -> Iterator[str]:
    tag = f"localhost/orchd-test-{name}:{os.getpid()}"
    assert callable(build)
    build(engine, tag)
    try:
        yield tag
    finally:
        subprocess.run([engine.binary, "rmi", "--force", tag], capture_output=True, timeout=120)


def containers_of(engine: Engine, database: str) -> list[str]:
    """Ids of the containers labelled with this database (any state)."""
    out = _engine(engine, "ps", "--all", "--quiet", "--filter", f"label=orchd.database={database}")
    return out.split()
