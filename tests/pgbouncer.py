"""A real PgBouncer (Debian's ``pgbouncer``) in transaction pooling mode in front of the test
PostgreSQL, as production fleets run it: started per need on a random port in a temp dir, as the
cluster's unprivileged user when the tests run as root (PgBouncer refuses root), stopped by PID.

Every database of the server is reachable through it under its own name (a ``*`` fallback entry),
so a test database created on the server is at once a database of the bouncer.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.pg import PgServer, _free_port

INSTALL_HINT = "PgBouncer tests need pgbouncer (apt-get install pgbouncer)"


@dataclass
class PgBouncer:
    port: int
    server: PgServer
    proc: subprocess.Popen[bytes]
    log_file: Path

    def url_for(self, database: str) -> str:
        """The URL of ``database`` through the bouncer (the direct one is ``server.url_for``)."""
        return (
            make_url(self.server.url_for(database))
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW POOLS`` and friends from the admin console (database ``pgbouncer``)."""
        user = make_url(self.server.admin_url).username or "orchd"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=user, dbname="pgbouncer", autocommit=True
        ) as conn:
            cur = conn.execute(f"SHOW {what}")
            names = [c.name for c in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def _executable() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT, pytrace=False)
        pytest.skip(INSTALL_HINT)
    return found


@contextmanager
def pgbouncer(
    server: PgServer, pool_size: int = 20, max_clients: int = 2000, listen: str = "127.0.0.1"
) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode before ``server``, trusting whoever reaches ``listen``
    ("*": every address of the machine, e.g. the ends of simulated hosts' veth pairs)."""
    binary = _executable()
    target = make_url(server.admin_url)
    user = target.username or "orchd"
    run_as = server.user or ("nobody" if os.geteuid() == 0 else None)
    root = Path(tempfile.mkdtemp(prefix="orchd-pgbouncer-"))
    port = _free_port()
    password = f" password={target.password}" if target.password else ""
    (root / "userlist.txt").write_text(f'"{user}" ""\n')
    (root / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={target.host or '127.0.0.1'} port={target.port or 5432} user={user}{password}\n"
        "[pgbouncer]\n"
        f"listen_addr = {listen}\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {root / 'userlist.txt'}\nadmin_users = {user}\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = {max_clients}\n"
        f"logfile = {root / 'pgbouncer.log'}\npidfile =\n"
        "server_reset_query =\nserver_check_delay = 1\nlog_connections = 0\nlog_disconnections = 0\n"
    )
    if run_as:
        uid, gid = pwd.getpwnam(run_as).pw_uid, pwd.getpwnam(run_as).pw_gid
        for path in (root, *root.iterdir()):
            os.chown(path, uid, gid)
    proc = subprocess.Popen(
        [binary, str(root / "pgbouncer.ini")],
        user=run_as,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    bouncer = PgBouncer(port, server, proc, root / "pgbouncer.log")
    try:
        _wait_ready(bouncer)
        yield bouncer
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(bouncer: PgBouncer, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if bouncer.proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited {bouncer.proc.returncode}: {bouncer.log()[-2000:]}")
        with suppress(psycopg.Error):
            bouncer.show("VERSION")
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"pgbouncer did not answer within {timeout}s: {bouncer.log()[-2000:]}")
        time.sleep(0.05)
