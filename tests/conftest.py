"""Fixtures: real SQLite files and a real PostgreSQL (see tests/pg.py), a fresh database per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchd.config import Config, load_config
from orchd.db import migrate
from orchd.db.store import Store
from orchd.worker.containers import Engine
from tests.containers import images
from tests.helpers import engine_for, write_config
from tests.pg import PgServer, postgres_server

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        with postgres_server() as server:
            yield server
    except RuntimeError as exc:  # no way to get a server: say what to install, do not skip
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer) -> Iterator[str]:
    """A migrated database that fresh test databases are copied from (fast: no migration per test)."""
    name = pg_server.create_database()
    engine = engine_for(pg_server.url_for(name))
    migrate.upgrade(engine)
    engine.dispose()
    yield name
    pg_server.drop_database(name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def empty_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a new, empty database (no schema) on the backend under test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'orchd.db'}"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    name = server.create_database()
    yield server.url_for(name)
    server.drop_database(name)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a new database with the current schema on the backend under test."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'orchd.db'}"
        engine = engine_for(url)
        migrate.upgrade(engine)
        engine.dispose()
        yield url
        return
    server: PgServer = request.getfixturevalue("pg_server")
    name = server.create_database(template=request.getfixturevalue("pg_template"))
    yield server.url_for(name)
    server.drop_database(name)


MakeConfig = Callable[..., Config]


@pytest.fixture
def make_config(tmp_path: Path, db_url: str) -> MakeConfig:
    """Write ``body`` (TOML) to a config file pointing at the test database and load it."""

    def make(body: str = "", **env: str) -> Config:
        path = write_config(tmp_path / "orchd.toml", db_url, body)
        return load_config(path, env={"ORCHD_STATE_DIR": str(tmp_path / "state"), **env})

    return make


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    engine = engine_for(db_url)
    yield Store(engine, "test")
    engine.dispose()


@pytest.fixture
def worker_store(db_url: str) -> Iterator[Store]:
    """A second connection to the test database, as a worker process would have its own."""
    engine = engine_for(db_url)
    yield Store(engine, "worker")
    engine.dispose()


@pytest.fixture(scope="session")
def podman() -> Engine:
    return images.podman()


@pytest.fixture(scope="session")
def busybox(podman: Engine) -> Iterator[str]:
    """A local busybox image (built once per session, removed at its end)."""
    with images.built(podman, images.busybox_image, "busybox") as tag:
        yield tag


@pytest.fixture(scope="session")
def python_image(podman: Engine) -> Iterator[str]:
    """A local image with Python 3.11 (built once per session, removed at its end)."""
    with images.built(podman, images.python_image, "python") as tag:
        yield tag
