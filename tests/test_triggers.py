"""Run chains (a deployment's ``triggers``) on both databases: a matching end queues exactly one
downstream run, whoever records the end (worker, reaper, a cancel, a misfire), only once no retry
is left; the key absorbs repeats (a manual retry, two schedulers reaping together, a worker
killed after the upstream ended); a paused downstream gets a MISSED run; the child sees the
upstream; the config refuses unknown upstreams and cycles."""

from __future__ import annotations

import json
import re
import signal
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, select

from orchd.config import Config, load_config
from orchd.db.schema import runs
from orchd.db.store import Store
from orchd.db.transitions import fire_triggers, new_run
from orchd.states import RunState
from orchd.worker.daemon import Worker
from tests.cli_support import Orchd
from tests.conftest import MakeConfig
from tests.helpers import daemons, history, reap, store_for, wait_for, write_config
from tests.test_config import check_one_line_error, cli, write
from tests.web_support import client_for, load, synced_store, write_web_config

S = RunState
NOW = datetime.now(UTC)
#: The smallest chain: load runs after each COMPLETED run of extract.
CHAIN = """
    [[deployments]]
    name = "extract"
    command = ["true"]
    [[deployments]]
    name = "load"
    command = ["true"]
    triggers = [{ after = "extract" }]
"""


def _deploy(make_config: MakeConfig, store: Store, body: str) -> Config:
    config = make_config(body)
    store.sync(config, datetime.now(UTC))
    return config


def _burst(config: Config, store: Store, pools: tuple[str, ...] = ("default",)) -> None:
    Worker(config, store, list(pools), 4, name="w", burst=True).run(threading.Event())


def _runs_of(store: Store, deployment: str) -> list[tuple[int, str, int | None]]:
    """(id, state, upstream run id) of each run of ``deployment``, oldest first."""
    dep = store.deployment(deployment)
    with store.read() as conn:
        rows = conn.execute(
            select(runs.c.id, runs.c.state, runs.c.upstream_run_id)
            .where(runs.c.deployment_id == dep.id)
            .order_by(runs.c.id)
        )
        return [(r.id, r.state, r.upstream_run_id) for r in rows]


def test_a_chain_fires_once_per_link_and_the_child_sees_the_upstream(
    store: Store, make_config: MakeConfig, tmp_path: Path
) -> None:
    (tmp_path / "flows.py").write_text("def extract():\n    return {'rows': 3, 'file': '/srv/x.csv'}\n")
    config = _deploy(
        make_config,
        store,
        f"""
    [[deployments]]
    name = "extract"
    entrypoint = "flows:extract"
    working_dir = "{tmp_path}"
    [[deployments]]
    name = "load"
    command = ["sh", "-c", "echo $ORCHD_UPSTREAM_RUN_ID; echo $ORCHD_UPSTREAM_RESULT"]
    triggers = [{{ after = "extract" }}]
    [[deployments]]
    name = "report"
    command = ["true"]
    triggers = [{{ after = "load", on = ["COMPLETED", "FAILED"] }}]
    [[deployments]]
    name = "on-failure"
    command = ["true"]
    triggers = [{{ after = "extract", on = ["FAILED"] }}]
    """,
    )
    up = store.create_run("extract", NOW)
    _burst(config, store)
    [(load, load_state, load_up)] = _runs_of(store, "load")
    [(report, report_state, report_up)] = _runs_of(store, "report")
    assert (load_state, load_up, report_state, report_up) == ("COMPLETED", up, "COMPLETED", load)
    assert _runs_of(store, "on-failure") == []
    upstream = store.get_run(up)
    assert upstream is not None and upstream.result == {"rows": 3, "file": "/srv/x.csv"}
    lines = [r.line for r in store.run_logs(load)]
    assert lines[0] == str(up) and json.loads(lines[1]) == upstream.result
    created = store.run_history(load)[0]
    assert (created.to_state, created.reason) == (
        S.SCHEDULED,
        f"triggered: run {up} of extract ended COMPLETED",
    )
    chain = store.run_chain(store.get_run(load))  # type: ignore[arg-type]
    assert chain.upstream is not None and (chain.upstream.id, chain.upstream.deployment) == (up, "extract")
    assert [(d.id, d.deployment, d.state) for d in chain.downstream] == [(report, "report", S.COMPLETED)]


def test_a_failure_fires_only_when_no_retry_is_left(store: Store, make_config: MakeConfig) -> None:
    config = _deploy(
        make_config,
        store,
        """
    [[deployments]]
    name = "flaky"
    command = ["sh", "-c", "exit 1"]
    retries = 2
    retry_delay = "0s"
    [[deployments]]
    name = "alert"
    command = ["true"]
    triggers = [{ after = "flaky", on = ["FAILED", "COMPLETED"] }]
    """,
    )
    up = store.create_run("flaky", NOW)
    _burst(config, store)
    [(alert, state, upstream)] = _runs_of(store, "alert")
    assert (state, upstream) == ("COMPLETED", up)
    # created in the transaction of the third FAILED, not before
    upstream_ends = [h for h in store.run_history(up) if h.to_state == S.FAILED]
    assert len(upstream_ends) == 3
    assert store.run_history(alert)[0].at == upstream_ends[-1].at


def test_every_way_a_run_ends_fires(store: Store, make_config: MakeConfig) -> None:
    """Reaped (CRASHED by the scheduler), cancelled by a person, MISSED by the misfire grace,
    TIMED_OUT by its worker: each end is recorded by a different actor, all through the one
    transition that fires triggers."""
    config = _deploy(
        make_config,
        store,
        """
    [worker]
    kill_grace = "100ms"
    [[deployments]]
    name = "up"
    command = ["sleep", "30"]
    timeout = "300ms"
    [[deployments]]
    name = "down"
    pool = "other"
    command = ["true"]
    triggers = [{ after = "up", on = ["CRASHED", "CANCELLED", "MISSED", "TIMED_OUT"] }]
    """,
    )
    crashed = store.create_run("up", NOW)
    store.claim("gone-worker", ["default"], 1, NOW, NOW + timedelta(seconds=1))
    assert reap(store, NOW + timedelta(seconds=2)) == [crashed]
    cancelled = store.create_run("up", NOW)
    assert store.cancel_run(cancelled, NOW) == S.CANCELLED
    missed = store.create_run("up", NOW - timedelta(hours=2))
    store.upkeep(NOW, misfire_grace=3600, worker_timeout=3600)
    timed_out = store.create_run("up", NOW)
    _burst(config, store)
    assert store.get_run(timed_out).state == S.TIMED_OUT  # type: ignore[union-attr]
    found = {upstream: state for _, state, upstream in _runs_of(store, "down")}
    assert found == {
        crashed: "SCHEDULED",
        cancelled: "SCHEDULED",
        missed: "SCHEDULED",
        timed_out: "SCHEDULED",
    }


def test_a_paused_downstream_gets_its_run_missed_with_the_reason(
    store: Store, make_config: MakeConfig
) -> None:
    config = _deploy(
        make_config,
        store,
        CHAIN
        + """
    [[deployments]]
    name = "after-missed"
    command = ["true"]
    triggers = [{ after = "load", on = ["MISSED"] }]
    """,
    )
    store.set_deployment_paused("load", True, NOW)
    up = store.create_run("extract", NOW)
    _burst(config, store)
    [(load, state, upstream)] = _runs_of(store, "load")
    assert (state, upstream) == ("MISSED", up)
    ended = store.run_history(load)[-1]
    assert ended.to_state == S.MISSED
    assert ended.reason == f"deployment load is paused (triggered: run {up} of extract ended COMPLETED)"
    # the chain goes on from the MISSED run, like from any end
    assert [(s, u) for _, s, u in _runs_of(store, "after-missed")] == [("COMPLETED", load)]


def test_an_upstream_run_triggers_once_however_often_its_end_is_seen(
    store: Store, make_config: MakeConfig
) -> None:
    """A run retried by hand ends again; a repeated firing (any second actor) meets the key."""
    config = _deploy(
        make_config,
        store,
        CHAIN,
    )
    up = store.create_run("extract", NOW)
    _burst(config, store)
    store.retry_run(up, NOW)
    _burst(config, store)
    assert history(store, up).count(("RUNNING", "COMPLETED")) == 2
    with store.write() as conn:
        fire_triggers(conn, [up], S.COMPLETED, now=NOW, actor="a-second-scheduler")
    assert [(s, u) for _, s, u in _runs_of(store, "load")] == [("COMPLETED", up)]


def test_two_schedulers_reaping_together_trigger_once(
    store: Store, make_config: MakeConfig, db_url: str
) -> None:
    _deploy(
        make_config,
        store,
        """
    [[deployments]]
    name = "up"
    command = ["true"]
    [[deployments]]
    name = "down"
    command = ["true"]
    triggers = [{ after = "up", on = ["CRASHED"] }]
    """,
    )
    ups = [store.create_run("up", NOW) for _ in range(20)]
    store.claim("gone-worker", ["default"], 20, NOW, NOW + timedelta(seconds=1))
    schedulers = [store_for(db_url, f"scheduler-{i}") for i in range(2)]
    start = threading.Barrier(2)
    reaped: list[list[int]] = []

    def go(s: Store) -> None:
        start.wait(timeout=10)
        reaped.append(reap(s, NOW + timedelta(seconds=2)))

    threads = [threading.Thread(target=go, args=(s,)) for s in schedulers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for s in schedulers:
        s.engine.dispose()
    assert sorted(r for batch in reaped for r in batch) == ups
    assert sorted(u for _, _, u in _runs_of(store, "down")) == ups


def test_sync_follows_the_config(store: Store, make_config: MakeConfig) -> None:
    """A trigger removed from the config fires no more; one added back fires again."""
    config = _deploy(make_config, store, CHAIN)
    first = store.create_run("extract", NOW)
    _burst(config, store)
    config = _deploy(make_config, store, CHAIN.replace('triggers = [{ after = "extract" }]', ""))
    second = store.create_run("extract", NOW)
    _burst(config, store)
    config = _deploy(make_config, store, CHAIN)
    third = store.create_run("extract", NOW)
    _burst(config, store)
    assert [u for _, _, u in _runs_of(store, "load")] == [first, third]
    assert store.get_run(second).state == S.COMPLETED  # type: ignore[union-attr]


def test_a_worker_killed_after_the_upstream_ended_loses_no_link(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    """The downstream run is committed with the upstream's end: a worker SIGKILLed right after
    it leaves it queued, and a worker started afterwards runs it with the upstream's id."""
    marker = tmp_path / "downstream.out"
    path = write_config(
        tmp_path / "orchd.toml",
        db_url,
        f"""
    [worker]
    poll_interval = "200ms"
    [[deployments]]
    name = "extract"
    pool = "up"
    command = ["true"]
    [[deployments]]
    name = "load"
    pool = "down"
    command = ["sh", "-c", "echo $ORCHD_UPSTREAM_RUN_ID > {marker}"]
    triggers = [{{ after = "extract" }}]
    """,
    )
    env = {"ORCHD_CONFIG": str(path), "ORCHD_STATE_DIR": str(tmp_path / "state")}
    with daemons(tmp_path) as group:
        store.sync(load_config(path, env=env), NOW)
        up = store.create_run("extract", NOW)
        worker = group.start("orchd-worker", "--pool", "up", env=env)
        wait_for(lambda: store.get_run(up).state == S.COMPLETED, what="extract COMPLETED")  # type: ignore[union-attr]
        group.stop(worker, signal.SIGKILL)
        [(load, state, upstream)] = _runs_of(store, "load")
        assert (state, upstream) == ("SCHEDULED", up)
        second = group.start("orchd-worker", "--pool", "down", env=env)
        wait_for(lambda: store.get_run(load).state == S.COMPLETED, what="load COMPLETED")  # type: ignore[union-attr]
        group.stop(second)
    assert marker.read_text().strip() == str(up)
    assert len(_runs_of(store, "load")) == 1


CYCLE = """
[[deployments]]
name = "a"
command = ["true"]
triggers = [{ after = "c" }]

[[deployments]]
name = "b"
command = ["true"]
triggers = [{ after = "a", on = ["COMPLETED", "FAILED"] }]

[[deployments]]
name = "c"
command = ["true"]
triggers = [{ after = "b" }]
"""


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (CYCLE, 5, "deployments.a.triggers: a cycle: a after c after b after a"),
        ('[[deployments]]\nname = "a"\ncommand = ["true"]\ntriggers = [{ after = "a" }]\n', 4, "a after a"),
        (CYCLE.replace('after = "b"', 'after = "bb"'), 15, "deployments.c.triggers: after 'bb': no such"),
        (CYCLE.replace('after = "c"', 'aftr = "c"'), 5, "deployments.a.triggers: [0].aftr: unknown key"),
        (CYCLE.replace('"FAILED"', '"FAIL"'), 10, "deployments.b.triggers: [0].on: expected a list of"),
        (CYCLE.replace('{ after = "c" }', '{ after = "c" }, { after = "c" }'), 5, "'c' is listed twice"),
        (CYCLE.replace('[{ after = "c" }]', '"c"'), 5, "deployments.a.triggers: expected a list of tables"),
    ],
    ids=["cycle", "self", "unknown", "bad-key", "bad-state", "twice", "not-a-list"],
)
def test_bad_triggers_are_config_errors(text: str, line: int, words: str, tmp_path: Path) -> None:
    path = write(tmp_path / "orchd.toml", text)
    result = cli(["config", "validate", "--config", str(path)], tmp_path / "state")
    check_one_line_error(result, path, line, None, words)


def _complete(store: Store, run_id: int, now: datetime) -> None:
    """The worker's records of a run that ran and exited 0, as the data layer takes them."""
    assert store.claim("w", ["default"], 1, now, now + timedelta(minutes=1))[0].id == run_id
    assert store.start_many({run_id: 4242}, "w", now) == [run_id]
    assert store.complete_many([run_id], "w", now) == [run_id]


def test_run_and_deployment_pages_and_show_link_the_chain(tmp_path: Path, db_url: str) -> None:
    chained = '[[deployments]]\nname = "chained"\ncommand = ["true"]\ntriggers = [{ after = "hello" }]\n'
    config = load(write_web_config(tmp_path, db_url, auth=False, extra=chained), tmp_path)
    store = synced_store(config)
    try:
        up = store.create_run("hello", NOW)
        _complete(store, up, NOW)
        [(down, _, _)] = _runs_of(store, "chained")
        orchd = Orchd(config.path, tmp_path / "state")  # type: ignore[arg-type]
        shown = orchd("run", "show", str(down), "--no-logs").stdout
        assert f"\ntriggered by:  run {up} of hello (COMPLETED)\n" in shown
        assert f"\ntriggered:     run {down} of chained (SCHEDULED)\n" in orchd("run", "show", str(up)).stdout
        as_json = json.loads(orchd("run", "show", str(down), "--json").stdout)
        assert as_json["upstream"] == {"id": up, "deployment": "hello", "state": "COMPLETED"}
        assert as_json["downstream"] == []
        upstream_json = json.loads(orchd("run", "show", str(up), "--json").stdout)
        assert upstream_json["upstream"] is None
        assert upstream_json["downstream"] == [{"id": down, "deployment": "chained", "state": "SCHEDULED"}]
        with client_for(config, store) as client:
            assert client.get(f"/api/runs/{down}").json() == as_json
            page = client.get(f"/runs/{down}").text
            assert f'<dd id="run-upstream"><a href="/runs/{up}">run {up}</a> of hello' in page
            page = client.get(f"/runs/{up}").text
            assert f'<dd id="run-downstream"><a href="/runs/{down}">run {down}</a> of chained' in page
            assert 'id="run-upstream"' not in page
            page = client.get("/deployments/chained").text
            assert (
                '<dd id="runs-after"><a href="/deployments/hello">hello</a> <span class="muted">(COMPLETED)'
                in page
            )
            assert (
                'id="starts"><a href="/deployments/chained">chained</a>'
                in client.get("/deployments/hello").text
            )
            api = client.get("/api/deployments/chained").json()
            assert (api["triggers"], api["triggered"]) == ([{"after": "hello", "on": ["COMPLETED"]}], [])
        shown = orchd("deployment", "show", "hello").stdout
        assert re.search(r"^starts:\s+chained \(COMPLETED\)$", shown, re.M) and "runs after" not in shown
        shown = orchd("deployment", "show", "chained").stdout
        assert re.search(r"^runs after:\s+hello \(COMPLETED\)$", shown, re.M)
        as_json = json.loads(orchd("deployment", "show", "hello", "--json").stdout)
        assert as_json["triggers"] == []
        assert as_json["triggered"] == [{"deployment": "chained", "on": ["COMPLETED"]}]
        # retention deleted the upstream: the link says so, the key stays
        with store.write() as conn:
            conn.execute(runs.delete().where(runs.c.id == up))
        assert json.loads(orchd("run", "show", str(down), "--json").stdout)["upstream"] == {
            "id": up,
            "deployment": None,
            "state": None,
        }
        assert f"triggered by:  run {up} (deleted by retention)" in orchd("run", "show", str(down)).stdout
    finally:
        store.engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_runs_downstream_runs_are_found_by_the_index_once_the_database_is_analyzed(
    store: Store, make_config: MakeConfig
) -> None:
    """SQLite's statistics (ANALYZE, ``PRAGMA optimize``) count the NULL upstream of every
    untriggered run as one value: with a full index, from a thousand runs on, its planner judged
    the lookup no better than a scan and read the whole history for each run page (190 ms at a
    million runs)."""
    _deploy(make_config, store, CHAIN)
    dep = store.deployment("extract")
    history = [
        new_run(
            deployment_id=dep.id,
            pool="default",
            priority=0,
            max_attempts=1,
            parameters={},
            scheduled_for=NOW - timedelta(minutes=n),
            due_at=NOW - timedelta(minutes=n),
            now=NOW,
        )
        for n in range(2000)
    ]
    with store.write() as conn:
        conn.execute(insert(runs), history)
        conn.exec_driver_sql("ANALYZE")
    run = store.get_run(store.create_run("extract", NOW))
    assert run is not None
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        store.run_chain(run)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    [(statement, parameters)] = [s for s in seen if "upstream_run_id =" in s[0]]
    with store.engine.connect() as conn:
        plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
    assert any("USING INDEX uq_runs_upstream" in step for step in plan), plan
