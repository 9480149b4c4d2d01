"""`orchd run ...` on both databases: listings and their JSON contract, filters, ad-hoc runs with
--wait, cancel, retry, and output with --follow against a worker running in-process."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchd.cli import main
from orchd.db.schema import deployments, runs
from orchd.db.store import Store
from orchd.states import RunState
from tests.cli_support import Orchd, clean_env, now, write_config
from tests.helpers import daemons, wait_for

S = RunState
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")
RUN_KEYS = {
    "id": int,
    "deployment": str,
    "schedule_id": (int, type(None)),
    "pool": str,
    "state": str,
    "attempt": int,
    "max_attempts": int,
    "scheduled_for": str,
    "due_at": str,
    "started_at": (str, type(None)),
    "finished_at": (str, type(None)),
    "exit_code": (int, type(None)),
    "worker": (str, type(None)),
}


def check_run_object(obj: dict[str, Any]) -> None:
    """The documented contract of a run in --json output."""
    assert set(RUN_KEYS) <= set(obj), set(RUN_KEYS) - set(obj)
    for key, kind in RUN_KEYS.items():
        assert isinstance(obj[key], kind), (key, obj[key])
    for key in ("scheduled_for", "due_at", "started_at", "finished_at"):
        assert obj[key] is None or ISO.match(obj[key]), (key, obj[key])
    assert obj["state"] in {s.value for s in RunState}


@pytest.fixture
def orchd(tmp_path: Path, db_url: str, store: Store) -> Orchd:
    cli = Orchd(write_config(tmp_path / "orchd.toml", db_url), tmp_path / "state")
    store.sync(cli.config(), now())
    return cli


@pytest.fixture
def worker(orchd: Orchd, tmp_path: Path) -> Iterator[None]:
    """A real orchd-worker process serving the default pool (its log stays out of the CLI's output)."""
    with daemons(tmp_path) as group:
        proc = group.start("orchd-worker", "--config", str(orchd.path), "--pool", "default")
        yield
        assert group.stop(proc) == 0


def finish(store: Store, run_id: int, outcome: RunState = S.COMPLETED, exit_code: int = 0) -> None:
    at = now()
    [claimed] = store.claim("w1", ["default"], 1, at, at + timedelta(minutes=1))
    assert claimed.id == run_id
    store.start_many({claimed.id: 123}, "w1", at)
    store.finish(
        claimed.id, "w1", outcome, at, exit_code=exit_code, error=None if exit_code == 0 else "exit 3"
    )


def test_run_ls_table_and_json_contract(orchd: Orchd, store: Store) -> None:
    done = store.create_run("hello", now() - timedelta(minutes=5))
    finish(store, done)
    waiting = store.create_run("fail", now() + timedelta(minutes=4))
    table = orchd("run", "ls", "--all")
    assert table.exit_code == 0, table.output
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["ID", "DEPLOYMENT", "STATE", "TRY", "DUE", "STARTED", "TOOK", "EXIT", "WORKER"]
    assert lines[0].split()[:3] == [str(waiting), "fail", "SCHEDULED"]
    assert "(in 3m)" in lines[0] or "(in 4m)" in lines[0]
    assert lines[1].split()[:4] == [str(done), "hello", "COMPLETED", "1/1"]
    assert "ago)" in lines[1] and "\x1b[" not in table.stdout  # no colour outside a terminal
    listing = json.loads(orchd("run", "ls", "--json", "--all").stdout)
    assert [r["id"] for r in listing] == [waiting, done]
    for obj in listing:
        check_run_object(obj)
    assert listing[1]["worker"] == "w1" and listing[1]["exit_code"] == 0


def test_run_ls_shows_what_ran_and_what_waits_and_leaves_the_planned_ones_to_upcoming(
    orchd: Orchd, store: Store
) -> None:
    """A 1 s schedule filled the 50 rows of `run ls` with future runs: the past was hidden."""
    done = store.create_run("hello", now() - timedelta(minutes=5))
    finish(store, done)
    retried = store.create_run("fail", now() - timedelta(minutes=20))
    finish(store, retried, S.FAILED, 3)
    assert orchd("run", "retry", str(retried)).exit_code == 0  # due now: the most recent
    finish(store, retried, S.COMPLETED)
    late = store.create_run("fail", now() - timedelta(minutes=1))  # due, still waiting
    planned = [store.create_run("hello", now() + timedelta(minutes=m)) for m in (9, 2, 5)]
    lines = orchd("run", "ls").stdout.splitlines()
    assert [line.split()[:3] for line in lines[1:]] == [
        [str(retried), "fail", "COMPLETED"],
        [str(late), "fail", "SCHEDULED"],
        [str(done), "hello", "COMPLETED"],
    ]
    assert lines[1].split()[3] == "2/2" and "ago)" in lines[1]  # due at the retry, not 20m ago
    upcoming = orchd("run", "ls", "--upcoming").stdout.splitlines()
    assert [int(line.split()[0]) for line in upcoming[1:]] == [planned[1], planned[2], planned[0]]
    # found by pattern, not by column: a due time on another day shows its date too (near midnight)
    assert [re.findall(r"\(in \d+m\)", line) for line in upcoming[1:]] == [
        ["(in 1m)"],
        ["(in 4m)"],
        ["(in 8m)"],
    ]
    assert len(json.loads(orchd("run", "ls", "--all", "--json").stdout)) == 6


def test_run_ls_filters(orchd: Orchd, store: Store) -> None:
    old = store.create_run("hello", now() - timedelta(hours=3))
    finish(store, old)
    failed = store.create_run("fail", now() - timedelta(minutes=30))
    finish(store, failed, S.FAILED, 3)
    recent = store.create_run("hello", now() - timedelta(seconds=1))

    def ids(*args: str) -> list[int]:
        result = orchd("run", "ls", "--json", *args)
        assert result.exit_code == 0, result.output
        return [r["id"] for r in json.loads(result.stdout)]

    assert ids("--deployment", "hello") == [recent, old]
    assert ids("--state", "FAILED") == [failed]
    assert ids("--state", "failed", "--state", "COMPLETED") == [failed, old]
    assert ids("--since", "1h") == [recent, failed]
    assert ids("--since", (now() - timedelta(hours=1)).isoformat()) == [recent, failed]
    assert ids("--since", "-1h") == [recent, failed]
    assert ids("--limit", "1") == [recent]
    assert ids("--pool", "default", "--deployment", "fail") == [failed]


def test_run_show_json_has_the_history(orchd: Orchd, store: Store) -> None:
    run_id = store.create_run("fail", now(), parameters={"x": 1})
    finish(store, run_id, S.FAILED, 3)
    result = orchd("run", "show", str(run_id), "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    check_run_object(shown)
    assert shown["parameters"] == {"x": 1}
    assert shown["error"] == "exit 3"
    assert [(s["from"], s["to"]) for s in shown["states"]] == [
        (None, "SCHEDULED"),
        ("SCHEDULED", "PENDING"),
        ("PENDING", "RUNNING"),
        ("RUNNING", "FAILED"),
    ]
    assert all(ISO.match(s["at"]) for s in shown["states"])
    text = orchd("run", "show", str(run_id)).stdout
    assert "state:" in text and "FAILED" in text and "history:" in text and "output (0 lines):" in text


def test_run_create_merges_parameters_and_takes_a_time(orchd: Orchd, store: Store) -> None:
    result = orchd(
        "run", "create", "hello", "--params-json", '{"days": 30, "mode": "full"}', "--param", "mode=quick",
        "--param", "flag=true", "--param", "name=x y", "--at", "10m", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    check_run_object(created)
    row = store.get_run(created["id"])
    assert row is not None and row.state == "SCHEDULED" and row.schedule_id is None
    assert row.parameters == {"greeting": "hi", "days": 30, "mode": "quick", "flag": True, "name": "x y"}
    assert timedelta(minutes=9) < row.due_at - now() <= timedelta(minutes=10)
    at = "2030-01-02T03:04:05+02:00"
    again = orchd("run", "create", "hello", "--at", at)
    assert again.exit_code == 0 and again.stdout.startswith(f"run {created['id'] + 1} of hello created, due ")
    later = store.get_run(created["id"] + 1)
    assert later is not None and later.due_at == datetime.fromisoformat(at)
    assert orchd("run", "create", "hello").stdout.endswith("created, due now\n")


def test_a_deployment_new_in_the_config_is_applied_by_run_create(orchd: Orchd, store: Store) -> None:
    """The first thing a person does after adding a deployment is run it: it used to be refused."""
    orchd.path.write_text(
        orchd.path.read_text()
        + '[[deployments]]\nname = "new"\ncommand = ["true"]\nschedules = [{ interval = "1h" }]\n'
    )
    with store.engine.begin() as conn:  # another deployment changed in the file: left for apply
        conn.execute(deployments.update().where(deployments.c.name == "hello").values(priority=7))
    result = orchd("run", "create", "new")
    assert result.exit_code == 0, result.output
    run_id = int(result.stdout.split()[1])
    assert result.stdout == f"run {run_id} of new created, due now\n"
    assert result.stderr == (
        "deployment new is new in the config: applied it to the database "
        "(as `orchd deployment apply` would)\n"
    )
    shown = json.loads(orchd("deployment", "show", "new", "--json").stdout)
    assert [s["kind"] for s in shown["schedules"]] == ["interval"]  # its schedules too
    assert json.loads(orchd("deployment", "show", "hello", "--json").stdout)["priority"] == 7
    again = orchd("run", "create", "new")
    assert again.exit_code == 0 and again.stderr == ""
    with_it = orchd.path.read_text()  # removed from the config (archived), then back: revived
    orchd.path.write_text(with_it.split('[[deployments]]\nname = "new"')[0])
    assert orchd("deployment", "apply").exit_code == 0
    orchd.path.write_text(with_it)
    revived = orchd("run", "create", "new")
    assert revived.exit_code == 0 and "deployment new is new in the config" in revived.stderr


@pytest.mark.usefixtures("worker")
def test_run_create_wait_prints_the_output_and_exits_with_the_outcome(orchd: Orchd) -> None:
    ok = orchd("run", "create", "hello", "--wait")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout == "hello\n"
    assert "oops\n" in ok.stderr and re.search(r"run \d+ COMPLETED after \d+ms", ok.stderr)
    bad = orchd("run", "create", "fail", "--wait")
    assert bad.exit_code == 1
    assert bad.stdout == "failing\n"
    assert "FAILED: exit code 3" in bad.stderr
    quiet = orchd("run", "create", "fail", "--wait", "--json")
    assert quiet.exit_code == 1
    final = json.loads(quiet.stdout)
    check_run_object(final)
    assert (final["state"], final["exit_code"]) == ("FAILED", 3)


@pytest.mark.usefixtures("worker")
def test_a_failed_entrypoint_says_why_in_one_line(orchd: Orchd, store: Store, tmp_path: Path) -> None:
    """The exception's last line is the run's error, where `run create --wait`, `run show` and
    `run ls` readers look first; the traceback stays in the output."""
    (tmp_path / "flows.py").write_text(
        "class NoData(Exception):\n    pass\n\n"
        "def report(days):\n    print('loading', days)\n"
        "    raise NoData(f'nothing for {days} days\\nsecond line')\n"
    )
    orchd.path.write_text(
        orchd.path.read_text()
        + f'[[deployments]]\nname = "report"\nentrypoint = "flows:report"\nworking_dir = "{tmp_path}"\n'
    )
    store.sync(orchd.config(), now())
    waited = orchd("run", "create", "report", "--param", "days=3", "--wait")
    assert waited.exit_code == 1
    assert waited.stdout == "loading 3\n"
    assert re.search(r"^run (\d+) FAILED: flows.NoData: nothing for 3 days after \d+ms$", waited.stderr, re.M)
    run_id = int(waited.stderr.split()[1])
    shown = orchd("run", "show", str(run_id)).stdout
    assert "\nerror:         flows.NoData: nothing for 3 days\n" in shown
    assert "  stderr:     raise NoData(" in shown  # the traceback is in the output


def test_waiting_says_when_no_worker_can_take_the_run_and_gives_up_at_the_timeout(
    orchd: Orchd, store: Store
) -> None:
    """`run create --wait` with no worker for the pool used to wait forever in silence."""
    waited = orchd("run", "create", "hello", "--wait", "--timeout", "1s")
    assert waited.exit_code == 1
    run_id = store.list_runs(limit=1)[0].id
    assert waited.stderr.splitlines() == [
        f"run {run_id} of hello created; following it (Ctrl-C stops following)",
        "no worker is online for pool default: start one (orchd-worker --pool default); "
        "still waiting (Ctrl-C stops following)",
        f"orchd: error: run {run_id} is still SCHEDULED after 1s: stopped waiting "
        f"(the run is not stopped: `orchd run cancel {run_id}` does that)",
    ]
    assert orchd("pool", "pause", "default").exit_code == 0
    paused = orchd("run", "create", "hello", "--wait", "--timeout", "1s", "--json")
    assert paused.exit_code == 1 and json.loads(paused.stdout)["state"] == "SCHEDULED"
    assert "pool default is paused: its runs wait until `orchd pool resume default`" in paused.stderr
    lonely = orchd("run", "create", "hello", "--timeout", "1s")
    assert lonely.exit_code == 2 and "--timeout goes with --wait" in lonely.stderr


def test_a_rerun_with_other_parameters_is_a_new_run_like_the_old(orchd: Orchd, store: Store) -> None:
    first = store.create_run("hello", now(), parameters={"days": 7, "mode": "full"})
    again = orchd("run", "create", "--like", str(first), "--param", "days=2", "--json")
    assert again.exit_code == 0, again.output
    created = json.loads(again.stdout)
    assert created["deployment"] == "hello" and created["id"] != first
    row = store.get_run(created["id"])
    assert row is not None and row.parameters == {"greeting": "hi", "days": 2, "mode": "full"}
    wrong = orchd("run", "create", "fail", "--like", str(first))
    assert wrong.exit_code == 2 and f"run {first} is of deployment hello, not fail" in wrong.stderr
    neither = orchd("run", "create")
    assert neither.exit_code == 2 and "give DEPLOYMENT, or --like ID" in neither.stderr


def test_each_attempt_has_its_own_output(orchd: Orchd, store: Store) -> None:
    run_id = store.create_run("hello", now())
    store.append_logs(
        [
            {"run_id": run_id, "attempt": a, "at": now(), "stream": "stdout", "line": f"try {a}"}
            for a in (1, 2)
        ]
    )
    with store.engine.begin() as conn:  # as after a retry
        conn.execute(runs.update().where(runs.c.id == run_id).values(attempt=2, max_attempts=2))
    shown = orchd("run", "show", str(run_id)).stdout
    assert shown.endswith(
        "\noutput of attempt 1 (1 line):\n  stdout: try 1\n\noutput of attempt 2 (1 line):\n  stdout: try 2\n"
    )
    assert orchd("run", "logs", str(run_id), "--attempt", "2").stdout == "try 2\n"
    assert orchd("run", "logs", str(run_id), "--attempt", "1").stdout == "try 1\n"
    beyond = orchd("run", "logs", str(run_id), "--attempt", "3")
    assert beyond.exit_code == 1 and f"run {run_id} has had 2 attempts, not 3" in beyond.stderr


def test_cancel_and_retry(orchd: Orchd, store: Store) -> None:
    waiting = store.create_run("hello", now())
    cancelled = orchd("run", "cancel", str(waiting))
    assert (cancelled.exit_code, cancelled.stdout) == (0, f"run {waiting}: CANCELLED\n")
    running = store.create_run("fail", now())
    at = now()
    store.claim("w1", ["default"], 1, at, at + timedelta(minutes=1))
    store.start_many({running: 1}, "w1", at)
    asked = orchd("run", "cancel", str(running), "--json")
    assert json.loads(asked.stdout)["state"] == "CANCELLING"
    retried = orchd("run", "retry", str(waiting))  # it never ran: still its first attempt
    assert (retried.exit_code, retried.stdout) == (
        0,
        f"run {waiting}: SCHEDULED again as attempt 1, due now\n",
    )
    again = store.get_run(waiting)
    assert again is not None and (again.state, again.attempt, again.max_attempts) == ("SCHEDULED", 1, 1)
    finish(store, waiting, S.FAILED, 3)
    assert (
        orchd("run", "retry", str(waiting)).stdout
        == f"run {waiting}: SCHEDULED again as attempt 2, due now\n"
    )
    twice = store.get_run(waiting)
    assert twice is not None and (twice.attempt, twice.max_attempts) == (2, 2)
    orchd("run", "cancel", str(waiting))
    planned = store.create_run("hello", now() + timedelta(minutes=9))  # cancelled before its time
    orchd("run", "cancel", str(planned))
    orchd("run", "retry", str(planned))
    finish(store, planned)
    fields = dict(
        line.split(":", 1)
        for line in orchd("run", "show", str(planned), "--no-logs").stdout.split("\n\n")[0].splitlines()
    )
    assert fields["state"].strip() == "COMPLETED" and fields["attempt"].strip() == "1/1"
    assert "(in 8m)" in fields["scheduled for"] and "ago)" in fields["due"]  # ran now, not "in 9m"
    history = [h.actor for h in store.run_history(waiting)]
    assert history[-1].startswith("cli:")


def test_run_logs_keeps_the_streams_apart_and_speaks_json_lines(orchd: Orchd, store: Store) -> None:
    run_id = store.create_run("hello", now())
    store.append_logs(
        [
            {"run_id": run_id, "attempt": 1, "at": now(), "stream": "stdout", "line": "one"},
            {"run_id": run_id, "attempt": 1, "at": now(), "stream": "stderr", "line": "two"},
            {"run_id": run_id, "attempt": 2, "at": now(), "stream": "stdout", "line": "three"},
        ]
    )
    text = orchd("run", "logs", str(run_id))
    assert text.exit_code == 0
    assert text.stdout == "one\nthree\n"
    assert text.stderr == "two\n--- attempt 2 ---\n"
    lines = [json.loads(line) for line in orchd("run", "logs", str(run_id), "--json").stdout.splitlines()]
    assert [(x["stream"], x["attempt"], x["line"]) for x in lines] == [
        ("stdout", 1, "one"),
        ("stderr", 1, "two"),
        ("stdout", 2, "three"),
    ]
    assert set(lines[0]) == {"run_id", "attempt", "at", "stream", "line"} and ISO.match(lines[0]["at"])


@pytest.mark.usefixtures("worker")
def test_run_logs_follow_tails_a_live_run_until_it_finishes(
    orchd: Orchd, store: Store, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    orchd.path.write_text(
        orchd.path.read_text()
        + '[[deployments]]\nname = "slow"\n'
        + f'command = ["sh", "-c", "echo first; while [ ! -e {gate} ]; do sleep 0.05; done; echo second"]\n'
    )
    store.sync(orchd.config(), now())
    run_id = store.create_run("slow", now())

    def release_once_started() -> None:
        wait_for(lambda: [line for line in store.run_logs(run_id) if line.line == "first"], what="first line")
        gate.touch()

    releaser = threading.Thread(target=release_once_started)
    releaser.start()
    followed = orchd("run", "logs", str(run_id), "--follow")
    releaser.join()
    assert followed.exit_code == 0, followed.output
    assert followed.stdout == "first\nsecond\n"
    row = store.get_run(run_id)
    assert row is not None and row.state == "COMPLETED"


def test_states_are_coloured_on_a_terminal_only(orchd: Orchd, store: Store) -> None:
    finish(store, store.create_run("hello", now()))
    args = ["run", "ls", "--config", str(orchd.path)]
    terminal = CliRunner().invoke(main, args, env=clean_env(orchd.state_dir), color=True)
    assert "\x1b[32mCOMPLETED\x1b[0m" in terminal.stdout
    no_color = CliRunner().invoke(main, args, env=clean_env(orchd.state_dir, NO_COLOR="1"), color=True)
    assert "\x1b[" not in no_color.stdout and "COMPLETED" in no_color.stdout
