"""The Debian package: ``make deb`` builds it; its contents are checked, then it is installed,
reinstalled, removed and purged with dpkg inside a throwaway container with a real systemd."""

from __future__ import annotations

import filecmp
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchd import __version__
from tests.systemd import container, deb
from tests.systemd.container import Container, ContainerError

ROOT = Path(__file__).resolve().parent.parent
UNITS = ["orchd-scheduler.service", "orchd-worker@.service", "orchd-web.service", "orchd.target"]
COMMANDS = ["orchd", "orchd-scheduler", "orchd-worker", "orchd-web"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # make deb pip-installs from PyPI


def not_here(reason: str) -> None:
    """Skip where these tests cannot run; in CI that is a failure, never a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the package tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def package() -> Path:
    reason = deb.unavailable_reason()
    if reason:
        not_here(reason)
    started = time.monotonic()
    path = deb.build()
    print(f"make deb: {time.monotonic() - started:.1f}s")
    return path


@pytest.fixture(scope="module")
def extracted(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("deb")
    subprocess.run(["dpkg-deb", "--extract", str(package), str(tree)], check=True, timeout=120)
    return tree


@pytest.fixture(scope="module")
def box(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    reason = container.unavailable_reason()
    if reason:
        not_here(reason)
    share = tmp_path_factory.mktemp("share")
    (share / "orchd.deb").write_bytes(package.read_bytes())
    try:
        box = Container("orchd-deb", share)
    except ContainerError as exc:
        not_here(str(exc))
    box.copy_dpkg_database()
    yield box
    box.close()


def test_package_fields(package: Path) -> None:
    fields = subprocess.run(
        ["dpkg-deb", "--field", str(package), "Package", "Version", "Depends"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"Package: orchd\nVersion: {__version__}\n" in fields
    assert "python3.11" in fields and "procps" in fields  # the venv's interpreter; /bin/kill
    conffiles = subprocess.run(
        ["dpkg-deb", "--info", str(package), "conffiles"], capture_output=True, text=True, check=True
    ).stdout
    assert conffiles.split() == ["/etc/orchd/orchd.toml"]


def test_package_files(extracted: Path) -> None:
    for unit in UNITS:
        assert filecmp.cmp(extracted / "lib/systemd/system" / unit, ROOT / "systemd" / unit, shallow=False)
    assert filecmp.cmp(extracted / "etc/orchd/orchd.toml", ROOT / "etc/orchd/orchd.toml", shallow=False)
    for kind in ("sysusers.d", "tmpfiles.d"):
        assert filecmp.cmp(
            extracted / "usr/lib" / kind / "orchd.conf", ROOT / "systemd" / kind / "orchd.conf"
        )
    for command in COMMANDS:
        assert os.readlink(extracted / "usr/bin" / command) == f"/opt/orchd/bin/{command}"
        assert (extracted / "opt/orchd/bin" / command).read_text().startswith("#!/opt/orchd/bin/python")
    assert os.readlink(extracted / "opt/orchd/bin/python3") == "/usr/bin/python3"
    assert not (extracted / "opt/orchd/bin/pip").exists()
    compiled = next(
        (extracted / "opt/orchd/lib").glob("python3*/site-packages/orchd/__pycache__/__init__*.pyc")
    )
    assert b"/opt/orchd/lib/python3" in compiled.read_bytes()  # byte code names where it runs


def test_install_creates_the_user_and_enables_nothing(box: Container) -> None:
    result = box.run("dpkg", "--install", "/mnt/share/orchd.deb", timeout=120)
    assert "Creating user 'orchd'" in result.stdout + result.stderr
    assert box.run("getent", "passwd", "orchd").stdout.split(":")[5:] == [
        "/var/lib/orchd",
        "/usr/sbin/nologin\n",
    ]
    assert box.run("orchd", "--version").stdout == f"orchd, version {__version__}\n"
    assert box.run("orchd-worker", "--version").stdout == f"orchd-worker, version {__version__}\n"
    listing = box.run(
        "stat", "-c", "%n %U:%G %a", "/etc/orchd", "/etc/orchd/orchd.toml", "/var/lib/orchd"
    ).stdout
    assert listing.splitlines() == [
        "/etc/orchd root:orchd 750",
        "/etc/orchd/orchd.toml root:orchd 640",  # it may hold the database password
        "/var/lib/orchd orchd:orchd 750",
    ]
    conffiles = box.run("dpkg-query", "--showformat=${Conffiles}", "--show", "orchd").stdout
    assert conffiles.split()[0] == "/etc/orchd/orchd.toml"
    # systemd was reloaded and knows the units; nothing is enabled or started
    for unit in ("orchd-scheduler.service", "orchd.target"):
        assert box.run("systemctl", "is-enabled", unit, check=False).stdout.strip() == "disabled"
        assert box.run("systemctl", "is-active", unit, check=False).stdout.strip() == "inactive"
    assert box.show("orchd-worker@docker-test-pool.service", "LoadState") == "loaded"
    # every Exec*= path exists in the installed layout (/usr/bin/orchd-*, /bin/kill)
    for unit in ("orchd-scheduler.service", "orchd-worker@docker-test-pool.service", "orchd.target"):
        verify = box.run("systemd-analyze", "verify", "--man=no", unit, check=False)
        assert (verify.returncode, verify.stderr) == (0, ""), verify.stderr


def test_conffile_survives_reinstall_and_remove_but_not_purge(box: Container) -> None:
    edited = box.root / "etc/orchd/orchd.toml"
    edited.write_text('[logging]\nlevel = "debug"\n')
    box.run("dpkg", "--install", "/mnt/share/orchd.deb", timeout=120)
    assert edited.read_text() == '[logging]\nlevel = "debug"\n'
    box.run("dpkg", "--remove", "orchd", timeout=120)
    assert box.run("sh", "-c", "ls /usr/bin/orchd* /opt/orchd", check=False).returncode != 0
    assert edited.read_text() == '[logging]\nlevel = "debug"\n'
    assert box.run("systemctl", "cat", "orchd-scheduler.service", check=False).returncode != 0
    box.run("dpkg", "--purge", "orchd", timeout=120)
    assert not edited.exists()
    assert box.run("getent", "passwd", "orchd").returncode == 0  # users are not removed (policy)
