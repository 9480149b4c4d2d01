"""Helpers of the web tests: a configured database with deployments and users, the app in-process
(Starlette's TestClient: real HTTP semantics, no socket), and logging in like a browser."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from starlette.testclient import TestClient

from orchd.config import Config, load_config
from orchd.db.engine import make_engine
from orchd.db.store import Store
from orchd.web.app import create_app
from orchd.web.auth import write_user

DEPLOYMENTS = """
[[deployments]]
name = "hello"
description = "Says <b>hello</b>"
command = ["sh", "-c", "echo hello"]
parameters = { greeting = "hi" }
schedules = [{ interval = "1h" }, { cron = "30 2 * * 1-5", timezone = "Europe/Berlin" }]

[[deployments]]
name = "fail"
command = ["sh", "-c", "exit 3"]

[[pools]]
name = "default"
"""
TOKEN = "t0ken-for-the-api-0123456789"
PASSWORDS = {"olga": "operator-pw-1", "vic": "viewer-pw-12"}


def write_web_config(tmp_path: Path, db_url: str, *, auth: bool, extra: str = "") -> Path:
    """orchd.toml on the test database; with ``auth``: users olga (operator), vic (viewer) and an
    API token."""
    path = tmp_path / "orchd.toml"
    web = (
        f'[web]\nsession_key_file = "{tmp_path / "web-session-key"}"\n'
        f'users_file = "{tmp_path / "web-users.toml"}"\n'
    )
    if auth:
        (tmp_path / "token").write_text(TOKEN + "\n")
        web += f'token_file = "{tmp_path / "token"}"\n'
        write_user(tmp_path / "web-users.toml", "olga", "operator", PASSWORDS["olga"])
        write_user(tmp_path / "web-users.toml", "vic", "viewer", PASSWORDS["vic"])
    path.write_text(f'[database]\nurl = "{db_url}"\n{web}{extra}{DEPLOYMENTS}')
    return path


def load(path: Path, tmp_path: Path) -> Config:
    return load_config(path, env={"ORCHD_STATE_DIR": str(tmp_path / "state")})


def synced_store(config: Config) -> Store:
    store = Store(make_engine(config.database), "test")
    store.sync(config, datetime.now(UTC))
    return store


@contextmanager
def client_for(config: Config, store: Store) -> Iterator[TestClient]:
    """The app in-process, reached as http://127.0.0.1 (a loopback Host, as a browser here)."""
    app = create_app(config, store)
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as client:
        yield client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def login(client: TestClient, user: str, base: str = "/") -> str:
    """Log in through the form like a browser; returns the session's CSRF token."""
    token = csrf_of(client.get(base + "login").text)
    answer = client.post(
        base + "login", data={"csrf": token, "username": user, "password": PASSWORDS[user], "next": base}
    )
    assert answer.status_code == 303, answer.text
    return csrf_of(client.get(base).text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
