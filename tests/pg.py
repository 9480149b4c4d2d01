"""A real PostgreSQL for the tests, found in this order:

1. ``ORCHD_TEST_DATABASE_URL`` (a server you run; the tests create and drop databases on it);
2. a throwaway cluster from the local PostgreSQL binaries (initdb/pg_ctl), in a temp dir, on a
   random port, run as an unprivileged user when the tests run as root;
3. testcontainers, when a Docker engine answers;
4. otherwise a clear failure naming what to install.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

INSTALL_HINT = (
    "PostgreSQL tests need a server: set ORCHD_TEST_DATABASE_URL=postgresql://USER@HOST:PORT/DB, "
    "or install the server binaries (apt-get install postgresql), or run a Docker engine"
)


@dataclass
class PgServer:
    """An admin URL on a server where test databases may be created; ``restart`` for outage tests."""

    admin_url: str
    data_dir: Path | None = None
    pg_ctl: str | None = None
    user: str | None = None
    log_file: Path | None = None

    def url_for(self, database: str) -> str:
        return make_url(self.admin_url).set(database=database).render_as_string(hide_password=False)

    def create_database(self, template: str | None = None) -> str:
        name = f"orchd_t_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(sql))
        finally:
            engine.dispose()

    def _ctl(self, *args: str) -> None:
        assert self.pg_ctl and self.data_dir, "only a throwaway cluster can be stopped and started"
        subprocess.run(
            [self.pg_ctl, "-D", str(self.data_dir), *args],
            check=True,
            user=self.user,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )

    def stop(self) -> None:
        """A clean shutdown (the test cluster runs without fsync, so a crash could lose commits)."""
        self._ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        self._ctl("-l", str(self.log_file), "-w", "start")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return found[-1] if found else shutil.which(name)


@contextmanager
def _local_cluster() -> Iterator[PgServer]:
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    assert initdb and pg_ctl
    user = None
    root = Path(tempfile.mkdtemp(prefix="orchd-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        user = "postgres" if _has_user("postgres") else "nobody"
        os.chown(root, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    data, port = root / "data", _free_port()
    server = PgServer(
        f"postgresql+psycopg://orchd@127.0.0.1:{port}/postgres", data, pg_ctl, user, root / "log"
    )
    try:
        subprocess.run(
            [initdb, "-D", str(data), "-U", "orchd", "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True,
            user=user,
            stdout=subprocess.DEVNULL,
            timeout=120,
        )
        conf = data / "postgresql.auto.conf"  # read on every start, so restarts keep them
        conf.write_text(
            f"port = {port}\nunix_socket_directories = '{root}'\nlisten_addresses = '127.0.0.1'\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 300\n"
        )
        if user:
            os.chown(conf, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        server.start()
        yield server
    finally:
        with suppress(Exception):
            subprocess.run(
                [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                user=user,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextmanager
def _container() -> Iterator[PgServer]:
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16", driver="psycopg") as pg:
        yield PgServer(pg.get_connection_url())


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


@contextmanager
def postgres_server() -> Iterator[PgServer]:
    url = os.environ.get("ORCHD_TEST_DATABASE_URL")
    if url:
        parsed = make_url(url)
        yield PgServer(parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False))
    elif _binary("initdb") and _binary("pg_ctl"):
        with _local_cluster() as server:
            yield server
    elif _docker_answers():
        with _container() as server:
            yield server
    else:
        raise RuntimeError(INSTALL_HINT)
