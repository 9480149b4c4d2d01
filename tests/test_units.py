"""The units offline (no running systemd needed): ``systemd-analyze verify`` with any warning
treated as a failure (252 exits 0 on typos and unknown keys), ``systemd-analyze security``
exposure, the settings the issue asks for, and ``orchd systemd install`` (the pip route)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from orchd.cli.systemd import CONTAINERS_DROPIN, PACKAGED_BINDIR, PACKAGED_HEADER, render
from orchd.config import load_config
from tests.helpers import BIN, run_cli

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "systemd"
UNITS = ["orchd-scheduler.service", "orchd-worker@.service", "orchd-web.service", "orchd.target"]
#: exposure x 10, as --threshold takes it: the issue's 2.0 for the scheduler; the worker is as
#: low as its runs (user code) allow, and measured at 1.3 when written
THRESHOLDS = {"orchd-scheduler.service": 20, "orchd-worker@.service": 15, "orchd-web.service": 20}

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    """systemd-analyze touches /run/systemd/systemd-units-load even offline: as root, give it a
    private tmpfs there so the host is left as it was."""
    command = ["systemd-analyze", *args]
    if os.geteuid() == 0 and shutil.which("unshare"):
        script = 'mount -t tmpfs tmpfs /run/systemd && exec "$@"'
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value it is given (keys such as SystemCallFilter= repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def seconds(value: str) -> float:
    units = {"s": 1, "min": 60}
    number, unit = re.fullmatch(r"(\d+)(s|min)", value).groups()  # type: ignore[union-attr]
    return int(number) * units[unit]


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """The pip route: ``orchd systemd install`` into a scratch /etc/systemd/system."""
    unit_dir = tmp_path / "etc/systemd/system"
    result = run_cli(["systemd", "install", "--prefix", str(unit_dir)])
    assert result.returncode == 0, result.stderr
    return unit_dir


def test_shipped_files_are_the_installer_templates_for_usr_bin() -> None:
    expected = render(Path("systemd"), PACKAGED_BINDIR, "orchd", PACKAGED_HEADER)
    for file in expected:
        assert (ROOT / file.path).read_text() == file.text, f"{file.path} differs from orchd/cli/systemd.py"
    assert sorted(str(p.relative_to(ROOT)) for p in SHIPPED.rglob("*") if p.is_file()) == sorted(
        str(f.path) for f in expected
    )


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_is_silent(installed: Path, unit: str) -> None:
    """The installed units (ExecStart= at this venv, which exists) load without a single warning."""
    target = installed / unit.replace("@.", "@docker-test-pool.")  # a template needs an instance
    result = systemd_analyze("verify", "--man=no", str(target))
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


@pytest.mark.parametrize("unit", sorted(THRESHOLDS))
def test_security_exposure(installed: Path, unit: str) -> None:
    target = installed / unit.replace("@.", "@docker-test-pool.")
    result = systemd_analyze("security", "--offline=true", f"--threshold={THRESHOLDS[unit]}", str(target))
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert exposure, result.stdout + result.stderr
    print(f"{unit}: exposure {exposure.group(1)}")  # shown with -s; the numbers the README quotes
    assert result.returncode == 0, f"{unit}: exposure {exposure.group(1)} > {THRESHOLDS[unit] / 10}"


@pytest.mark.parametrize("unit", ["orchd-scheduler.service", "orchd-worker@.service", "orchd-web.service"])
def test_daemon_units_have_what_systemd_needs_from_them(unit: str) -> None:
    s = unit_settings(SHIPPED / unit)
    assert s["Service.Type"] == ["notify"]
    assert s["Service.NotifyAccess"] == ["main"]
    assert s["Service.Restart"] == ["on-failure"]
    assert s["Service.RestartPreventExitStatus"] == ["78"]
    assert seconds(s["Service.WatchdogSec"][0]) >= 10
    assert s["Service.User"] == ["orchd"] and s["Service.StateDirectory"] == ["orchd"]
    assert s["Service.ExecStart"][0].startswith(f"{PACKAGED_BINDIR}/orchd-")
    # a remote PostgreSQL must stay reachable
    assert not {"Service.IPAddressDeny", "Service.IPAddressAllow", "Service.PrivateNetwork"} & s.keys()
    assert s["Install.WantedBy"] == ["multi-user.target orchd.target"]
    assert s["Unit.PartOf"] == ["orchd.target"]


def test_scheduler_reloads_with_sighup() -> None:
    s = unit_settings(SHIPPED / "orchd-scheduler.service")
    assert s["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Service.ExecStart"] == ["/usr/bin/orchd-scheduler"]


def test_worker_drains_before_systemd_kills_it() -> None:
    s = unit_settings(SHIPPED / "orchd-worker@.service")
    assert s["Service.ExecStart"] == ["/usr/bin/orchd-worker --pool %i"]
    assert s["Service.KillMode"] == ["mixed"]
    worker = load_config("/dev/null", env={}).worker
    assert seconds(s["Service.TimeoutStopSec"][0]) > worker.shutdown_grace + worker.kill_grace


def test_sysusers_entry_is_valid(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-sysusers", "--dry-run", f"--root={tmp_path}", str(SHIPPED / "sysusers.d/orchd.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Creating user 'orchd' (orchd workflow scheduler)" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles chowns: needs root")
def test_tmpfiles_entry_makes_private_directories(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("orchd:x:994:994::/var/lib/orchd:/usr/sbin/nologin\n")
    (tmp_path / "etc/group").write_text("orchd:x:994:\n")
    result = subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(SHIPPED / "tmpfiles.d/orchd.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
    for path, owner in [("var/lib/orchd", 994), ("etc/orchd", 0), ("etc/orchd/deployments.d", 0)]:
        st = (tmp_path / path).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (owner, 994, 0o750), path


def test_install_points_at_this_installation_and_prints_next_steps(installed: Path, tmp_path: Path) -> None:
    s = unit_settings(installed / "orchd-scheduler.service")
    assert s["Service.ExecStart"] == [f"{BIN}/orchd-scheduler"]
    assert (
        (tmp_path / "etc/sysusers.d/orchd.conf")
        .read_text()
        .endswith('u orchd - "orchd workflow scheduler" /var/lib/orchd /usr/sbin/nologin\n')
    )
    assert (tmp_path / "etc/tmpfiles.d/orchd.conf").exists()
    again = run_cli(["systemd", "install", "--prefix", str(installed)])  # its own files: updated
    assert again.returncode == 0, again.stderr
    assert "systemctl enable --now orchd-scheduler.service" in again.stdout
    assert f"systemd-sysusers {tmp_path}/etc/sysusers.d/orchd.conf" in again.stdout


def test_install_with_another_user(tmp_path: Path) -> None:
    result = run_cli(["systemd", "install", "--user", "jobs", "--prefix", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    s = unit_settings(tmp_path / "orchd-worker@.service")
    assert (s["Service.User"], s["Service.Group"]) == (["jobs"], ["jobs"])
    assert (tmp_path / "sysusers.d/orchd.conf").read_text().splitlines()[-1].startswith("u jobs ")
    assert "d /var/lib/orchd 0750 jobs jobs -" in (tmp_path / "tmpfiles.d/orchd.conf").read_text()


def test_install_dry_run_writes_nothing(tmp_path: Path) -> None:
    result = run_cli(["systemd", "install", "--dry-run", "--prefix", str(tmp_path / "units")])
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "units").exists()
    assert f"--- would write {tmp_path}/units/orchd-scheduler.service" in result.stdout
    assert f"ExecStart={BIN}/orchd-worker --pool %i" in result.stdout


def test_install_refuses_bad_user_and_foreign_files(tmp_path: Path) -> None:
    bad = run_cli(["systemd", "install", "--user", "Bad User", "--prefix", str(tmp_path)])
    assert (bad.returncode, bad.stderr.strip()) == (
        2,
        "orchd: error: --user: expected a system user name such as 'orchd', got 'Bad User'",
    )
    (tmp_path / "orchd.target").write_text("[Unit]\nDescription=mine\n")
    foreign = run_cli(["systemd", "install", "--prefix", str(tmp_path)])
    assert foreign.returncode == 1
    assert "was not written by `orchd systemd install`" in foreign.stderr
    assert (tmp_path / "orchd.target").read_text() == "[Unit]\nDescription=mine\n"


def test_the_containers_drop_in_loads_silently_and_is_the_one_the_readme_shows(installed: Path) -> None:
    drop_in = installed / "orchd-worker@docker-test-pool.service.d" / "containers.conf"
    drop_in.parent.mkdir()
    drop_in.write_text(CONTAINERS_DROPIN)
    result = systemd_analyze("verify", "--man=no", str(installed / "orchd-worker@docker-test-pool.service"))
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert f"```ini\n{CONTAINERS_DROPIN}```" in (ROOT / "README.md").read_text()
