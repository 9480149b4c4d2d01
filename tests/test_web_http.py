"""orchd-web over HTTP, in-process, on SQLite and PostgreSQL: every route without auth, with each
role and with none; the API's objects are the CLI's; errors, CSRF, Host/Origin, escaping, static
files, login limits.  (Live streams and the daemon itself: test_web_daemon.py; the browser:
test_web_browser.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event
from starlette.testclient import TestClient

from orchd.config import Config
from orchd.config.model import NotificationConfig
from orchd.db.store import Store
from orchd.notifications import Rule
from orchd.states import RunState
from tests.cli_support import Orchd, one_line_error
from tests.helpers import wait_for
from tests.web_support import TOKEN, client_for, csrf_of, load, login, synced_store, write_web_config

PAGES = ["/", "/runs", "/runs?tab=upcoming", "/runs/{run}", "/runs/{run}/logs.txt", "/deployments",
         "/deployments/hello", "/pools"]  # fmt: skip
API = ["/api/status", "/api/runs", "/api/runs?upcoming=1", "/api/runs/{run}", "/api/runs/{run}/logs",
       "/api/deployments", "/api/deployments/hello", "/api/pools", "/api/workers"]  # fmt: skip
STREAMS = ["/api/events/stream", "/api/runs/{run}/logs/stream"]
ACTIONS_API = ["/api/deployments/hello/runs", "/api/runs/{run}/cancel", "/api/runs/{run}/retry",
               "/api/deployments/hello/pause", "/api/deployments/hello/resume", "/api/pools/default/pause",
               "/api/pools/default/resume"]  # fmt: skip
ACTIONS_PAGES = ["/deployments/hello/runs", "/runs/{run}/cancel", "/runs/{run}/retry",
                 "/deployments/hello/pause", "/deployments/hello/resume", "/pools/default/pause",
                 "/pools/default/resume"]  # fmt: skip
SECURITY = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}


class Site:
    def __init__(self, config: Config, store: Store, client: TestClient, run: int, path: Path) -> None:
        self.config, self.store, self.client, self.run, self.path = config, store, client, run, path

    def url(self, template: str) -> str:
        return template.replace("{run}", str(self.run))


def _site(tmp_path: Path, db_url: str, auth: bool) -> Iterator[Site]:
    path = write_web_config(tmp_path, db_url, auth=auth)
    config = load(path, tmp_path)
    store = synced_store(config)
    run = store.create_run("hello", datetime.now(UTC), parameters={"greeting": "hey"})
    store.append_logs(
        [{"run_id": run, "attempt": 1, "at": datetime.now(UTC), "stream": "stdout", "line": "first line"}]
    )
    try:
        with client_for(config, store) as client:
            yield Site(config, store, client, run, path)
    finally:
        store.engine.dispose()


@pytest.fixture
def open_site(tmp_path: Path, db_url: str) -> Iterator[Site]:
    """No users, no token: loopback only, everyone an operator."""
    yield from _site(tmp_path, db_url, auth=False)


@pytest.fixture
def site(tmp_path: Path, db_url: str) -> Iterator[Site]:
    """Users olga (operator) and vic (viewer), and an API token."""
    yield from _site(tmp_path, db_url, auth=True)


def test_every_page_and_api_route_answers_without_auth(open_site: Site) -> None:
    for template in PAGES + API:
        answer = open_site.client.get(open_site.url(template))
        assert answer.status_code == 200, (template, answer.text[:300])
        for header, value in SECURITY.items():
            assert answer.headers[header] == value, template
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert "unsafe-inline" not in answer.headers["content-security-policy"]
        if template.startswith("/api/"):
            json.loads(answer.text)
        elif not template.endswith(".txt"):
            assert answer.headers["content-type"].startswith("text/html"), template
    assert open_site.client.get("/api/health").json()["status"] == "ok"


def test_api_objects_are_the_clis(open_site: Site, tmp_path: Path) -> None:
    orchd = Orchd(open_site.path, tmp_path / "state")
    client, run = open_site.client, open_site.run
    pairs = [
        (f"/api/runs/{run}", ["run", "show", str(run), "--json"]),
        ("/api/deployments", ["deployment", "ls", "--json"]),
        ("/api/pools", ["pool", "ls", "--json"]),
        ("/api/workers", ["worker", "ls", "--json"]),
    ]
    for url, command in pairs:
        result = orchd(*command)
        assert result.exit_code == 0, result.output
        assert client.get(url).json() == json.loads(result.stdout), url
    listed = client.get("/api/runs").json()
    assert listed["runs"][0] == {
        k: v for k, v in client.get(f"/api/runs/{run}").json().items() if k in listed["runs"][0]
    }
    shown = json.loads(orchd("deployment", "show", "hello", "--json").stdout)
    api = client.get("/api/deployments/hello").json()
    for entry in api["schedules"]:
        assert len(entry.pop("next_fire_times")) == 5
    assert api == shown
    status = client.get("/api/status").json()
    assert [c["name"] for c in status["checks"]] == [
        "database",
        "scheduler",
        "workers",
        "late runs",
        "stuck runs",
        "failures",
        *(["connections"] if client.get("/api/status").json()["connections"] else []),  # PostgreSQL
    ]


def test_without_login_only_health_login_and_static_are_open(site: Site) -> None:
    client = site.client
    for template in PAGES:
        answer = client.get(site.url(template))
        assert answer.status_code == 303 and "/login?next=" in answer.headers["location"], template
    for template in API + STREAMS:
        answer = client.get(site.url(template))
        assert answer.status_code == 401 and answer.json() == {"error": "authentication required"}, template
    for template in ACTIONS_API + ACTIONS_PAGES:
        assert client.post(site.url(template), json={}).status_code == 401, template
    assert client.get("/api/health").status_code == 200
    assert client.get("/login").status_code == 200
    assert client.get("/static/orchd.css").status_code == 200
    assert (
        client.get("/api/runs", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    )
    assert RunState(site.store.get_run(site.run).state) == RunState.SCHEDULED  # nothing happened


def test_a_viewer_reads_everything_and_changes_nothing(site: Site) -> None:
    csrf = login(site.client, "vic")
    for template in PAGES + API:
        assert site.client.get(site.url(template)).status_code == 200, template
    for template in ACTIONS_API + ACTIONS_PAGES:
        answer = site.client.post(site.url(template), data={"csrf": csrf})
        assert answer.status_code == 403 and "viewer" in answer.text, template
    assert RunState(site.store.get_run(site.run).state) == RunState.SCHEDULED


def test_an_operator_acts_with_the_session_and_its_csrf_token(site: Site) -> None:
    client, run = site.client, site.run
    csrf = login(client, "olga")
    for template in ACTIONS_PAGES + ACTIONS_API:  # a cookie alone is not enough
        answer = client.post(site.url(template), data={"csrf": "forged"})
        assert answer.status_code == 403 and "CSRF" in answer.text, template
    assert client.post(f"/runs/{run}/cancel").status_code == 403
    answer = client.post(f"/runs/{run}/cancel", data={"csrf": csrf})
    assert answer.status_code == 303 and answer.headers["location"] == f"/runs/{run}"
    assert "CANCELLED" in client.get(f"/runs/{run}").text
    history = site.store.run_history(run)
    assert (history[-1].to_state, history[-1].actor) == ("CANCELLED", "web:olga")
    retried = client.post(f"/api/runs/{run}/retry", headers={"X-CSRF-Token": csrf})
    # cancelled before any worker took it: retried as the same, first attempt
    assert retried.status_code == 200 and retried.json()["attempt"] == 1
    created = client.post("/deployments/hello/runs", data={"csrf": csrf, "parameters": '{"greeting": "yo"}'})
    assert created.status_code == 303
    new_id = int(created.headers["location"].rsplit("/", 1)[1])
    assert site.store.get_run(new_id).parameters == {"greeting": "yo"}
    bad = client.post("/deployments/hello/runs", data={"csrf": csrf, "parameters": "[1, 2"})
    assert bad.status_code == 422 and "parameters: not JSON" in bad.text
    assert client.post("/deployments/hello/pause", data={"csrf": csrf}).status_code == 303
    assert client.get("/api/deployments/hello").json()["status"] == "paused"
    assert client.post("/logout", data={"csrf": csrf}).status_code == 303
    assert client.get("/").status_code == 303


def test_users_are_set_listed_and_removed_and_a_removed_users_session_ends(
    site: Site, tmp_path: Path
) -> None:
    orchd = Orchd(site.path, tmp_path / "state")
    added = orchd("web", "passwd", "amy", "--role", "operator", "--password-stdin", input="amy-password\n")
    assert added.exit_code == 0 and added.stdout.startswith("added amy (operator) in "), added.output
    changed = orchd("web", "passwd", "amy", "--password-stdin", input="amy-password-2\n")
    assert changed.stdout.startswith("updated amy (viewer)"), changed.output
    listed = json.loads(orchd("web", "users", "--json").stdout)
    assert listed == [{"name": "olga", "role": "operator"}, {"name": "vic", "role": "viewer"},
                      {"name": "amy", "role": "viewer"}]  # fmt: skip
    assert "scrypt" not in orchd("web", "users").stdout
    short = orchd("web", "passwd", "amy", "--password-stdin", input="short\n")
    assert short.exit_code == 2 and "at least 8 characters" in short.stderr
    bad = orchd("web", "passwd", "a b", "--password-stdin", input="long-enough\n")
    assert bad.exit_code == 2 and "user name" in bad.stderr

    login(site.client, "vic")
    assert site.client.get("/").status_code == 200
    removed = orchd("web", "remove", "vic")
    assert removed.exit_code == 0 and removed.stdout.startswith("removed vic from "), removed.output
    assert [u["name"] for u in json.loads(orchd("web", "users", "--json").stdout)] == ["olga", "amy"]
    # the daemon re-reads the file within a second: vic's open session ends
    wait_for(lambda: site.client.get("/").status_code == 303, what="vic's session ended")
    one_line_error(orchd("web", "remove", "vic"), 1, "no user 'vic' in ")


def test_the_token_acts_without_csrf(site: Site) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    created = site.client.post(
        "/api/deployments/hello/runs", json={"parameters": {"n": 1}, "at": "10m"}, headers=bearer
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["state"] == "SCHEDULED" and body["deployment"] == "hello"
    due = datetime.fromisoformat(body["scheduled_for"])
    assert timedelta(minutes=9) < due - datetime.now(UTC) <= timedelta(minutes=10)
    cancelled = site.client.post(f"/api/runs/{body['id']}/cancel", headers=bearer)
    assert cancelled.json()["state"] == "CANCELLED"
    assert site.store.run_history(body["id"])[-1].actor == "web:api-token"
    paused = site.client.post("/api/pools/default/pause", headers=bearer).json()
    assert paused["paused"] is True and paused["name"] == "default"


def test_api_errors_are_json_with_the_right_status(open_site: Site) -> None:
    client, run = open_site.client, open_site.run
    cases = [
        ("get", "/api/runs/999999", 404, "run 999999 not found"),
        ("get", "/api/runs?state=BOGUS", 400, "unknown state"),
        ("get", "/api/runs?cursor=@@@", 400, "cursor"),
        ("get", "/api/runs?since=yesterdayish", 400, "since"),
        ("get", "/api/runs?deployment=helo", 404, "did you mean 'hello'"),
        ("get", "/api/deployments/nope", 404, "deployment 'nope' not found"),
        ("get", "/api/nothing-here", 404, "not found"),
        ("post", "/api/deployments/nope/runs", 404, "not found"),
        ("post", "/api/runs/999999/cancel", 404, "not found"),
        ("post", f"/api/runs/{run}/retry", 409, "only a finished run can be retried"),
        ("post", "/api/pools/nope/pause", 404, "pool 'nope' not found"),
    ]
    for method, url, status, words in cases:
        answer = getattr(client, method)(url, json={}) if method == "post" else client.get(url)
        assert answer.status_code == status, (url, answer.text)
        assert words in answer.json()["error"], (url, answer.json())
    not_object = client.post("/api/deployments/hello/runs", json={"parameters": [1]})
    assert not_object.status_code == 422 and "JSON object" in not_object.json()["error"]
    assert (
        client.post(
            "/api/deployments/hello/runs", content=b"{", headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )
    client.post(f"/api/runs/{run}/cancel", json={})
    again = client.post(f"/api/runs/{run}/cancel", json={})
    assert again.status_code == 409 and again.json() == {
        "error": f"run {run} is CANCELLED: nothing to cancel"
    }


def test_without_auth_a_foreign_host_or_origin_or_form_is_refused(open_site: Site) -> None:
    client, run = open_site.client, open_site.run
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    assert (
        client.post(f"/api/runs/{run}/cancel", json={}, headers={"Origin": "http://evil.example"}).status_code
        == 403
    )
    # a form a foreign page could send (no JSON, no token) is refused; JSON from a script is fine
    assert client.post(f"/runs/{run}/cancel", data={"x": "1"}).status_code == 403
    csrf = csrf_of(client.get(f"/runs/{run}").text)
    assert client.post(f"/runs/{run}/cancel", data={"csrf": csrf}).status_code == 303


def test_run_output_parameters_and_errors_are_escaped(open_site: Site) -> None:
    store, client = open_site.store, open_site.client
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    run = store.create_run("hello", datetime.now(UTC), parameters={"p": evil})
    store.append_logs(
        [{"run_id": run, "attempt": 1, "at": datetime.now(UTC), "stream": "stderr", "line": evil}]
    )
    store.cancel_run(run, datetime.now(UTC))
    pages = [f"/runs/{run}", "/runs", "/deployments/hello", "/deployments", "/"]
    for url in pages:
        html = client.get(url).text
        assert "<script>alert" not in html and "<img src=x" not in html, url
    html = client.get(f"/runs/{run}").text
    assert "&lt;script&gt;alert(" in html  # shown, as text
    assert "Says &lt;b&gt;hello&lt;/b&gt;" in client.get("/deployments/hello").text
    text = client.get(f"/runs/{run}/logs.txt")
    assert text.headers["content-type"].startswith("text/plain") and evil in text.text


def test_static_files_stay_inside_their_directory(open_site: Site) -> None:
    client = open_site.client
    assert client.get("/static/htmx.min.js").status_code == 200
    tricks = ["/static/../auth.py", "/static/%2e%2e/auth.py", "/static/..%2fauth.py",
              "/static/../../config/model.py", "/static//etc/passwd", "/static/%2fetc%2fpasswd"]  # fmt: skip
    for url in tricks:
        answer = client.get(url)
        assert answer.status_code == 404 or "scrypt" not in answer.text, url
        assert "root:" not in answer.text and "def hash_password" not in answer.text, url


def test_failed_logins_are_limited(site: Site) -> None:
    client = site.client
    csrf = csrf_of(client.get("/login").text)
    for _ in range(site.config.web.login_attempts):
        answer = client.post("/login", data={"csrf": csrf, "username": "olga", "password": "wrong"})
        assert answer.status_code == 401 and "wrong user name or password" in answer.text
    limited = client.post("/login", data={"csrf": csrf, "username": "olga", "password": "operator-pw-1"})
    assert limited.status_code == 429 and "too many failed logins" in limited.text
    assert (
        client.post("/login", data={"username": "olga", "password": "x"}).status_code == 403
    )  # no CSRF token


def test_run_pages_are_keyset_paginated(open_site: Site) -> None:
    store, client = open_site.store, open_site.client
    start = datetime.now(UTC) - timedelta(hours=2)
    for minute in range(60):
        store.create_run("fail", start, at=start + timedelta(minutes=minute), parameters={})
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        page = client.get(
            "/api/runs", params={"deployment": "fail", "limit": 25, **({"cursor": cursor} if cursor else {})}
        ).json()
        seen += [r["id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 60 == len(set(seen))
    times = [store.get_run(i).scheduled_for for i in seen]
    assert times == sorted(times, reverse=True)
    html = client.get("/runs?deployment=fail").text
    assert html.count('data-run-id="') == 50 and "Older runs" in html


def test_a_page_of_several_states_merges_them_newest_first(open_site: Site) -> None:
    """Several states are read as a page of each, merged: the pages hold every run of those
    states once, newest first, whatever the mix (and a state given twice counts once)."""
    store, client = open_site.store, open_site.client
    start = datetime.now(UTC) - timedelta(hours=2)
    created = [
        store.create_run("fail", start, at=start + timedelta(minutes=m), parameters={}) for m in range(30)
    ]
    cancelled = set(created[::3] + created[20:])  # both scattered and in one stretch
    for run_id in cancelled:
        store.cancel_run(run_id, datetime.now(UTC))
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        query = [("state", "CANCELLED"), ("state", "SCHEDULED"), ("state", "CANCELLED")]
        query += [("deployment", "fail"), ("limit", "7")] + ([("cursor", cursor)] if cursor else [])
        page = client.get("/api/runs", params=query).json()
        seen += [r["id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == created[::-1]
    only_cancelled = client.get("/api/runs", params={"state": "CANCELLED", "limit": 100}).json()["runs"]
    assert {r["id"] for r in only_cancelled} == cancelled


def test_each_page_is_read_in_one_transaction(open_site: Site) -> None:
    """What a page shows is one snapshot: the overview's checks (the ping, the schema revision,
    the server's connections) join it rather than opening transactions of their own, each a
    BEGIN and a ROLLBACK more on a busy server."""
    engine = open_site.store.engine
    begun: list[object] = []

    def count(conn: object) -> None:
        begun.append(conn)

    for page in PAGES:
        begun.clear()
        event.listen(engine, "begin", count)
        try:
            assert open_site.client.get(open_site.url(page)).status_code == 200, page
        finally:
            event.remove(engine, "begin", count)
        assert len(begun) == 1, page


def test_the_strips_are_each_deployments_last_finished_runs_newest_first(open_site: Site) -> None:
    """The deployments page's squares and the last run of `deployment ls`: per deployment, its
    latest scheduled finished runs, as many as asked; waiting runs and other deployments' are not
    in them."""
    store = open_site.store
    start = datetime.now(UTC) - timedelta(hours=2)
    fail = [store.create_run("fail", start, at=start + timedelta(minutes=m), parameters={}) for m in range(8)]
    for run_id in fail[:6]:
        store.cancel_run(run_id, datetime.now(UTC))
    hello = store.deployment("hello").id
    strips = store.strips([store.deployment("fail").id, hello], size=4)
    assert [r.id for r in strips[store.deployment("fail").id].runs] == fail[5:1:-1]
    assert strips[hello].runs == []
    by_name = {d.deployment.name: d for d in store.deployments()}
    assert by_name["fail"].last_run is not None and by_name["fail"].last_run.id == fail[5]


def test_behind_a_proxy_under_a_base_path(tmp_path: Path, db_url: str) -> None:
    """base_path "/orchd/": every link, form, redirect, cookie and asset is under it."""
    path = write_web_config(tmp_path, db_url, auth=True, extra='base_path = "/orchd/"\n')
    config = load(path, tmp_path)
    store = synced_store(config)
    try:
        with client_for(config, store) as client:
            assert client.get("/runs").status_code == 404
            answer = client.get("/orchd/runs?state=FAILED")
            assert answer.status_code == 303
            assert answer.headers["location"] == "/orchd/login?next=/orchd/runs%3Fstate%3DFAILED"
            login_page = client.get("/orchd/login")
            assert 'href="/orchd/static/orchd.css' in login_page.text
            assert {c.path for c in client.cookies.jar if c.name == "orchd_session"} == {"/orchd/"}
            assert client.get("/orchd/static/htmx.min.js").status_code == 200
            csrf = login(client, "olga", base="/orchd/")
            html = client.get("/orchd/deployments/hello").text
            assert 'action="/orchd/deployments/hello/runs"' in html and 'href="/orchd/runs' in html
            created = client.post("/orchd/deployments/hello/runs", data={"csrf": csrf, "parameters": "{}"})
            assert created.headers["location"].startswith("/orchd/runs/")
            assert client.get("/orchd/api/runs").json()["runs"]
    finally:
        store.engine.dispose()


def test_the_run_page_shows_the_runs_notifications(open_site: Site) -> None:
    store, run = open_site.store, open_site.run
    assert 'id="run-notifications"' not in open_site.client.get(f"/runs/{run}").text  # none: no panel
    rule = Rule(
        NotificationConfig(name="ops-<b>", on=["CANCELLED"], command=["/bin/true"]), {"command": "command"}
    )
    store.match_events([rule], datetime.now(UTC))  # places the cursor
    store.cancel_run(run, datetime.now(UTC))
    store.match_events([rule], datetime.now(UTC))
    page = open_site.client.get(f"/runs/{run}").text
    panel = page[page.index('id="run-notifications"') :]
    assert "ops-&lt;b&gt;" in panel and "CANCELLED" in panel and "pending" in panel and "0/8" in panel
    summary = open_site.client.get(f"/runs/{run}?part=summary").text
    assert 'id="run-notifications"' in summary
