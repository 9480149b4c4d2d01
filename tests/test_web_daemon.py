"""orchd-web as a real process: it refuses a public address without auth, speaks sd_notify like
the other daemons, feeds the live streams on both databases, and stops promptly on SIGTERM even
with streams open."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.helpers import run_cli, wait_for
from tests.test_notify import NotifySocket, Spawner, notify_socket, spawn  # noqa: F401 (fixtures)
from tests.web_support import TOKEN, free_port, load, synced_store, write_web_config

pytestmark = pytest.mark.slow
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Stream:
    """A server-sent event stream read in a thread: (event, data) pairs as they come."""

    url: str
    events: list[tuple[str, Any]] = field(default_factory=list)
    opened: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Stream:
        threading.Thread(target=self._read, daemon=True).start()
        assert self.opened.wait(15), f"{self.url} did not open"
        return self

    def _read(self) -> None:
        try:
            with httpx2.stream(
                "GET", self.url, headers=BEARER, timeout=httpx2.Timeout(10, read=60)
            ) as answer:
                assert answer.headers["content-type"].startswith("text/event-stream")
                event = "message"
                for line in answer.iter_lines():
                    if line.startswith("retry:"):
                        self.opened.set()
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        self.events.append((event, json.loads(line[6:])))
                        event = "message"
        except httpx2.HTTPError:
            pass
        finally:
            self.ended.set()

    def wait(self, what: str, match: Any) -> Any:
        return wait_for(
            lambda: next((d for e, d in self.events if e == what and match(d)), None), 20, what=what
        )


def test_a_public_address_without_auth_is_refused(tmp_path: Path) -> None:
    path = write_web_config(tmp_path, f"sqlite:///{tmp_path / 'orchd.db'}", auth=False)
    refused = run_cli(["--config", str(path), "--listen", f"0.0.0.0:{free_port()}"], command="orchd-web")
    assert refused.returncode == 78, refused.stderr
    assert refused.stderr.count("\n") == 1 and "no auth is configured" in refused.stderr, refused.stderr
    assert not (tmp_path / "orchd.db").exists()  # refused before anything started


@pytest.fixture
def web(tmp_path: Path, db_url: str, spawn: Spawner, notify_socket: NotifySocket) -> Iterator[Any]:  # noqa: F811
    port = free_port()
    path = write_web_config(tmp_path, db_url, auth=True, extra=f'listen = "0.0.0.0:{port}"\n')
    store = synced_store(load(path, tmp_path))
    proc = spawn("orchd-web", path)
    yield proc, f"http://127.0.0.1:{port}", store
    store.engine.dispose()


def test_ready_watchdog_live_streams_and_a_prompt_stop(web: Any, notify_socket: NotifySocket) -> None:  # noqa: F811
    proc, url, store = web
    ready = notify_socket.expect("READY", "1")
    assert ready.pid == proc.pid and ready.fields["STATUS"].startswith("serving http://")
    assert httpx2.get(f"{url}/api/health").json()["status"] == "ok"
    assert any(d.pid == proc.pid for d in notify_socket.collect(1.0) if d.fields.get("WATCHDOG") == "1")

    events = Stream(f"{url}/api/events/stream").start()
    created = httpx2.post(f"{url}/api/deployments/hello/runs", json={"parameters": {}}, headers=BEARER)
    run_id = created.json()["id"]
    seen = events.wait("state", lambda d: d["run_id"] == run_id)
    assert (seen["from"], seen["to"], seen["deployment"], seen["actor"]) == (
        None,
        "SCHEDULED",
        "hello",
        "web:api-token",
    )

    output = Stream(f"{url}/api/runs/{run_id}/logs/stream").start()
    for n in (1, 2):  # as a worker writes output
        store.append_logs(
            [
                {
                    "run_id": run_id,
                    "attempt": 1,
                    "at": datetime.now(UTC),
                    "stream": "stdout",
                    "line": f"line {n}",
                }
            ]
        )
        output.wait("line", lambda d, n=n: d["line"] == f"line {n}")
    httpx2.post(f"{url}/api/runs/{run_id}/cancel", headers=BEARER)
    output.wait("state", lambda d: d["to"] == "CANCELLED")
    events.wait("state", lambda d: d["run_id"] == run_id and d["to"] == "CANCELLED")
    lines = [d["id"] for e, d in output.events if e == "line"]
    resumed = Stream(f"{url}/api/runs/{run_id}/logs/stream?after={lines[0]}").start()
    resumed.wait("line", lambda d: d["line"] == "line 2")
    assert [d["line"] for e, d in resumed.events if e == "line"] == ["line 2"]

    proc.send_signal(signal.SIGTERM)
    notify_socket.expect("STOPPING", "1")
    assert proc.wait(timeout=15) == 0
    assert events.ended.wait(10) and output.ended.wait(10)


def test_only_a_watched_dashboard_listens(web: Any, notify_socket: NotifySocket) -> None:  # noqa: F811
    """PostgreSQL: the LISTEN session of the live feed is open while a client is connected and
    closed when the last one goes (psycopg looks at a listening connection ten times a second)."""
    proc, url, store = web
    notify_socket.expect("READY", "1")
    if store.engine.dialect.name != "postgresql":
        return  # SQLite has no sessions: its change check also runs only while someone watches

    def listening() -> int:
        with store.engine.connect() as conn:
            return int(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'orchd-web-listen' "
                    "AND datname = current_database()"
                ).scalar_one()
            )

    assert listening() == 0
    with httpx2.stream("GET", f"{url}/api/events/stream", headers=BEARER, timeout=20) as answer:
        lines = answer.iter_lines()  # kept: a dropped iterator closes the stream
        assert next(lines).startswith("retry:")
        wait_for(lambda: listening() == 1, 20, what="the LISTEN session while a client watches")
    wait_for(lambda: listening() == 0, 20, what="the LISTEN session to close after the client left")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
