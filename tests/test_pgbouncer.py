"""orchd behind a real PgBouncer in transaction pooling mode (Debian's, 1.18: no prepared
statement tracking): the scheduler and workers connect through it, LISTEN and the leader lock go
to PostgreSQL itself (``database.direct_url``) or, without one, workers poll; runs complete, each
once, and no statement is prepared where the pooler would hand it to another client."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from orchd.config import load_config
from orchd.db.engine import make_engine
from orchd.db.schema import runs
from orchd.db.store import Store
from tests.helpers import claims_per_run, daemons, run_cli, store_for, wait_for, write_config
from tests.pg import PgServer
from tests.pgbouncer import PgBouncer, pgbouncer
from tests.test_web_daemon import BEARER, Stream
from tests.web_support import free_port, load, write_web_config

pytestmark = pytest.mark.slow

DEPLOYMENTS = """
[scheduler]
loop_interval = "200ms"
horizon = "30s"
[worker]
heartbeat = "500ms"
concurrency = 2
[[deployments]]
name = "beat"
command = ["true"]
schedules = [{ interval = "1s" }]
[[deployments]]
name = "echo"
command = ["sh", "-c", "echo $ORCHD_RUN_ID"]
schedules = [{ cron = "* * * * * *" }]
[[deployments]]
name = "adhoc"
command = ["true"]
"""


@pytest.fixture(scope="module")
def bouncer(pg_server: PgServer) -> Iterator[PgBouncer]:
    """Two server connections per database: every client shares them, as a busy fleet does."""
    with pgbouncer(pg_server, pool_size=2) as running:
        yield running


@pytest.fixture
def database(pg_server: PgServer, pg_template: str) -> Iterator[str]:
    name = pg_server.create_database(template=pg_template)
    yield name
    pg_server.drop_database(name)


def _config(path: Path, url: str, body: str) -> Path:
    return write_config(path, url, 'pooler = "transaction"\n' + textwrap.dedent(body))


def _direct(server: PgServer) -> str:
    """The direct URL as an operator writes it: host and port only (user and database from url)."""
    url = make_url(server.admin_url)
    return f"postgresql://{url.host}:{url.port}"


def _sessions(server: PgServer, database: str) -> Counter[str]:
    """Server connections to ``database`` by application name."""
    with psycopg.connect(server.url_for("postgres").replace("+psycopg", ""), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    return Counter(name for (name,) in rows)


def _completed(store: Store) -> list[int]:
    with store.read() as conn:
        return list(conn.execute(select(runs.c.id).where(runs.c.state == "COMPLETED")).scalars())


def _every_run_once(store: Store) -> None:
    with store.read() as conn:
        rows = conn.execute(select(runs.c.deployment_id, runs.c.schedule_key, runs.c.scheduled_for)).all()
    assert [k for k, n in Counter(rows).items() if n > 1] == []
    claims = claims_per_run(store)
    assert claims and set(claims.values()) == {1}
    assert {r.state for r in store.list_runs(limit=10_000) if r.state != "SCHEDULED"} == {"COMPLETED"}


def test_scheduler_and_workers_through_pgbouncer_listen_on_the_direct_url(
    tmp_path: Path, bouncer: PgBouncer, pg_server: PgServer, database: str
) -> None:
    url = bouncer.url_for(database)
    config = _config(tmp_path / "orchd.toml", url, f'direct_url = "{_direct(pg_server)}"\n' + DEPLOYMENTS)
    store = store_for(pg_server.url_for(database))
    with daemons(tmp_path) as group:
        sched = group.start("orchd-scheduler", "--config", str(config))
        workers = [group.start("orchd-worker", "--config", str(config), "--name", f"w{i}") for i in range(3)]
        wait_for(lambda: len(_completed(store)) >= 12, timeout=60, what="12 completed runs")
        # a run made by the CLI (through the bouncer) wakes a worker through LISTEN
        made = run_cli(["run", "create", "adhoc", "--wait", "--timeout", "30s", "--config", str(config)])
        assert made.returncode == 0, made.stderr
        sessions = _sessions(pg_server, database)
        clients = [c for c in bouncer.show("CLIENTS") if c["database"] == database]
        for proc in [*workers, sched]:
            assert group.stop(proc) == 0
        output = group.output()
    assert sessions["orchd-listen"] == 3 and sessions["orchd-leader"] == 1, sessions
    assert len(clients) >= 4  # the scheduler's and every worker's pool went through the bouncer
    assert "prepared statement" not in output and "Traceback" not in output
    _every_run_once(store)


def test_workers_poll_behind_pgbouncer_without_a_direct_url(
    tmp_path: Path, bouncer: PgBouncer, pg_server: PgServer, database: str
) -> None:
    url = bouncer.url_for(database)
    config = _config(
        tmp_path / "orchd.toml",
        url,
        DEPLOYMENTS.replace("concurrency = 2\n", 'concurrency = 2\npoll_interval = "300ms"\n'),
    )
    store = store_for(pg_server.url_for(database))
    with daemons(tmp_path) as group:
        sched = group.start(
            "orchd-scheduler", "--config", str(config), env={"ORCHD_DATABASE_DIRECT_URL": _direct(pg_server)}
        )
        workers = [group.start("orchd-worker", "--config", str(config), "--name", f"w{i}") for i in range(2)]
        wait_for(lambda: len(_completed(store)) >= 8, timeout=60, what="8 completed runs")
        store.sync(load_config(config), datetime.now(UTC))
        adhoc = store.create_run("adhoc", datetime.now(UTC))
        wait_for(lambda: adhoc in _completed(store), timeout=30, what="a new run found by the poll")
        sessions = _sessions(pg_server, database)
        for proc in [*workers, sched]:
            assert group.stop(proc) == 0
        output = group.output()
    assert "orchd-listen" not in sessions, sessions
    assert output.count("no LISTEN behind a transaction pooler") == 2
    assert "prepared statement" not in output and "Traceback" not in output
    _every_run_once(store)


def test_the_live_dashboard_polls_behind_pgbouncer_without_a_direct_url(
    tmp_path: Path, bouncer: PgBouncer, pg_server: PgServer, database: str
) -> None:
    port = free_port()
    path = write_web_config(
        tmp_path, bouncer.url_for(database), auth=True, extra=f'listen = "127.0.0.1:{port}"\n'
    )
    store = store_for(pg_server.url_for(database))
    store.sync(load(path, tmp_path), datetime.now(UTC))
    url = f"http://127.0.0.1:{port}"
    with daemons(tmp_path) as group:
        web = group.start("orchd-web", "--config", str(path), env={"ORCHD_DATABASE_POOLER": "transaction"})
        wait_for(lambda: "orchd-web started" in group.output(), what="orchd-web")
        events = Stream(f"{url}/api/events/stream").start()
        created = httpx2.post(f"{url}/api/deployments/hello/runs", json={"parameters": {}}, headers=BEARER)
        run_id = created.json()["id"]
        events.wait("state", lambda d: d["run_id"] == run_id and d["to"] == "SCHEDULED")
        sessions = _sessions(pg_server, database)
        assert group.stop(web) == 0
    assert not any(name.endswith("listen") for name in sessions), sessions


def test_a_scheduler_behind_a_transaction_pooler_needs_a_direct_url(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "orchd.toml", "postgresql://orchd@127.0.0.1:1/none", 'pooler = "transaction"\n'
    )
    result = run_cli(["--config", str(config)], command="orchd-scheduler", timeout=30)
    assert result.returncode == 78
    assert result.stderr.count("\n") == 1 and "database.direct_url" in result.stderr, result.stderr


def test_prepared_statements_are_off_behind_a_transaction_pooler(
    pg_server: PgServer, database: str, tmp_path: Path
) -> None:
    """The negative control shows the setting matters: with statements prepared, two clients
    sharing PgBouncer 1.18's one server connection collide on psycopg's statement names."""
    with pgbouncer(pg_server, pool_size=1) as single:
        url = single.url_for(database)

        def stores(prepared: str) -> list[Store]:
            env = {
                "ORCHD_DATABASE_URL": url,
                "ORCHD_DATABASE_POOLER": "transaction",
                "ORCHD_DATABASE_PREPARED_STATEMENTS": prepared,
            }
            return [Store(make_engine(load_config("/dev/null", env=env).database), "t") for _ in range(2)]

        def alternate(pair: list[Store]) -> None:
            """A statement committed ten times by each (psycopg prepares after five; a rollback
            would forget them, so a read would not do)."""
            now = datetime.now(UTC)
            try:
                for _ in range(10):
                    for store in pair:
                        store.heartbeat("nobody", now, now, [])
            finally:
                for store in pair:
                    store.engine.dispose()

        alternate(stores("auto"))
        with pytest.raises(Exception, match="prepared statement"):
            alternate(stores("on"))
