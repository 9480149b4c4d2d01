"""Who may create an SQLite database: `orchd db upgrade`, the quick start, and a daemon using the
default file; never a daemon given a path that does not exist (a typo must not become an empty
database a worker sits idle on).  A file the daemon may not write is said to be a permission
problem at once, not waited for as if it were an outage."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from orchd.errors import EX_CONFIG
from tests.cli_support import Orchd
from tests.helpers import BIN, run_cli, write_config

DEPLOY = '[[deployments]]\nname = "a"\ncommand = ["true"]\n'


@pytest.mark.parametrize("command", ["orchd-scheduler", "orchd-worker"])
def test_a_daemon_refuses_a_sqlite_path_that_does_not_exist(tmp_path: Path, command: str) -> None:
    typo = tmp_path / "vra" / "lib" / "orchd.db"
    config = write_config(tmp_path / "orchd.toml", f"sqlite:///{typo}", DEPLOY)
    result = run_cli(["--config", str(config)], command=command, timeout=30)
    assert result.returncode == EX_CONFIG, result
    assert result.stderr == (
        f"orchd: error: database.url: SQLite database {typo} does not exist (`orchd db upgrade` creates it)\n"
    )
    assert not (tmp_path / "vra").exists()


def test_db_upgrade_creates_it_and_the_daemons_then_use_it(tmp_path: Path) -> None:
    db = tmp_path / "new" / "orchd.db"
    config = write_config(tmp_path / "orchd.toml", f"sqlite:///{db}", DEPLOY)
    assert Orchd(config, tmp_path / "state")("db", "upgrade").exit_code == 0
    result = run_cli(["--config", str(config), "--once"], command="orchd-scheduler", timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_default_file_is_created_by_a_daemon(tmp_path: Path) -> None:
    """No database.url: the default file in the state directory (the Debian package's case)."""
    config = tmp_path / "orchd.toml"
    config.write_text(DEPLOY)
    state = tmp_path / "state"
    result = run_cli(
        ["--config", str(config), "--once"],
        command="orchd-scheduler",
        env={"ORCHD_STATE_DIR": str(state)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (state / "orchd.db").exists()


def test_a_database_the_daemon_may_not_write_is_a_permission_error(tmp_path: Path) -> None:
    """It used to be retried forever as "waiting for database: unable to open database file"."""
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("root writes anywhere; setpriv is needed to try as another user")
    with tempfile.TemporaryDirectory() as shared:  # readable by another user, unlike tmp_path
        home = Path(shared)
        home.chmod(0o755)
        db = home / "orchd.db"
        config = write_config(home / "orchd.toml", f"sqlite:///{db}", DEPLOY)
        config.chmod(0o644)
        assert Orchd(config, home / "state")("db", "upgrade").exit_code == 0
        db.chmod(0o644)
        as_other = (
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        )
        if not as_other:
            home.chmod(0o555)
        try:
            result = subprocess.run(
                [*as_other, str(BIN / "orchd-worker"), "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, "ORCHD_STATE_DIR": str(home / "state")},
            )
        finally:
            home.chmod(0o755)
        assert result.returncode == EX_CONFIG, result
        assert result.stderr.startswith(
            f"orchd: error: database.url: SQLite database {db}: permission denied"
        )
        assert result.stderr.count("\n") == 1
