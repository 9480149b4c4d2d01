"""Notifications on both databases, delivered for real: a local HTTP server receiving webhooks
(signature verified), Apprise json:// to a local server and mailto:// to a local SMTP server
(aiosmtpd), and commands writing files.  Runs are executed by a real worker (in-process)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchd.config import Config
from orchd.db.store import Store
from orchd.errors import ConfigError
from orchd.notifications import advance, render
from orchd.scheduler.daemon import Scheduler
from orchd.worker.daemon import Worker
from tests.conftest import MakeConfig
from tests.helpers import run_cli
from tests.notify_support import http_receiver, smtp_receiver

FAILING = 'command = ["/bin/sh", "-c", "for i in $(seq 1 30); do echo line $i; done; echo boom >&2; exit 3"]'


def _setup(make_config: MakeConfig, store: Store, body: str) -> tuple[Config, Scheduler]:
    config = make_config(body)
    store.sync(config, datetime.now(UTC))
    scheduler = Scheduler(config, store)
    scheduler.notifications.scan_every = 0.0
    scheduler.notifications.match()  # the first pass places the cursor at the end of the log
    return config, scheduler


def _run(config: Config, store: Store, deployment: str, times: int = 1) -> list[int]:
    ids = [store.create_run(deployment, datetime.now(UTC)) for _ in range(times)]
    Worker(config, store, ["default"], 4, name="w", burst=True).run(threading.Event())
    return ids


def _deliver(scheduler: Scheduler) -> None:
    scheduler.notifications.match()
    while scheduler.notifications.send_due(wait=True):
        pass


def test_a_final_failure_reaches_a_signed_webhook_apprise_and_a_command(
    store: Store, make_config: MakeConfig, tmp_path: Path
) -> None:
    out = tmp_path / "events"
    out.mkdir()
    echo_env = f'echo \\"$ORCHD_EVENT\\" > {out}/env.json'
    with http_receiver() as hook, http_receiver() as apprise_endpoint:
        config, scheduler = _setup(
            make_config,
            store,
            f"""
            [web]
            public_url = "https://ops.example.com/orchd/"
            [[deployments]]
            name = "nightly-load"
            {FAILING}
            retries = 1
            retry_delay = "0s"
            [[notifications]]
            name = "ops"
            on = ["FAILED", "CRASHED", "TIMED_OUT"]
            deployments = ["nightly-*"]
            webhook = "{hook.url}/orchd"
            secret = "s3cret"
            urls = ["json://{apprise_endpoint.url.removeprefix("http://")}/apprise"]
            command = ["/bin/sh", "-c", "cat > {out}/$ORCHD_IDEMPOTENCY_KEY.json.tmp; {echo_env}"]
            """,
        )
        [run_id] = _run(config, store, "nightly-load")
        _deliver(scheduler)
        # one message per channel, for the last attempt only (final_only: the first was retried)
        [got] = hook.received
        assert got.signed_by("s3cret") and not got.signed_by("other")
        event = got.json
        assert (event["event"], event["deployment"], event["run_id"]) == ("FAILED", "nightly-load", run_id)
        assert (event["attempt"], event["max_attempts"], event["exit_code"]) == (2, 2, 3)
        assert event["url"] == f"https://ops.example.com/orchd/runs/{run_id}"
        assert len(event["output_tail"]) == 20 and "boom" in event["output_tail"]
        assert event["duration_seconds"] is not None and event["host"]
        assert got.headers["Idempotency-Key"] == event["idempotency_key"]
        [message] = apprise_endpoint.bodies()
        assert "nightly-load FAILED (attempt 2/2)" in message["title"]
        assert "Exit code: 3" in message["message"] and "line 30" in message["message"]
        files = list(out.glob("*.tmp"))
        assert len(files) == 1 and json.loads(files[0].read_text())["run_id"] == run_id
        assert json.loads((out / "env.json").read_text())["event"] == "FAILED"
    log = store.deliveries()
    assert sorted(d.channel.split("-")[0] for d in log) == ["apprise", "command", "webhook"]
    assert all(d.state == "delivered" and len(d.history) == 1 for d in log)


def test_a_receiver_that_fails_is_retried_with_the_same_key_until_it_answers(
    store: Store, make_config: MakeConfig
) -> None:
    with http_receiver() as hook:
        config, scheduler = _setup(
            make_config,
            store,
            f"""
            [[deployments]]
            name = "job"
            {FAILING}
            [[notifications]]
            name = "hook"
            on = ["FAILED"]
            webhook = "{hook.url}/"
            attempts = 3
            """,
        )
        hook.status = 500
        _run(config, store, "job")
        _deliver(scheduler)
        [first] = store.deliveries()
        assert first.state == "pending" and first.last_error and "HTTP 500" in first.last_error
        hook.status = 200
        later = datetime.now(UTC) + timedelta(minutes=5)
        scheduler.clock = lambda: later  # the backoff has passed
        scheduler.notifications.clock = scheduler.clock
        _deliver(scheduler)
        [done] = store.deliveries()
        assert done.state == "delivered" and [a.ok for a in done.history] == [False, True]
        assert len(set(hook.keys())) == 1 and len(hook.received) == 2
        # a third failure would give up: attempts are counted
        hook.status = 500
        _run(config, store, "job")
        for minutes in (10, 20, 40):
            at = datetime.now(UTC) + timedelta(minutes=minutes)
            scheduler.notifications.clock = lambda at=at: at  # type: ignore[misc]
            _deliver(scheduler)
        gave_up = store.deliveries(failed=True)
        assert [d.state for d in gave_up] == ["failed"] and gave_up[0].attempts == 3


def test_throttle_holds_back_and_the_next_message_counts_what_it_held(
    store: Store, make_config: MakeConfig
) -> None:
    with http_receiver() as hook:
        config, scheduler = _setup(
            make_config,
            store,
            f"""
            [[deployments]]
            name = "flaky"
            {FAILING}
            [[notifications]]
            name = "hook"
            on = ["FAILED"]
            webhook = "{hook.url}/"
            throttle = "10m"
            """,
        )
        _run(config, store, "flaky", times=3)
        _deliver(scheduler)
        assert len(hook.received) == 1
        later = datetime.now(UTC) + timedelta(minutes=11)
        scheduler.notifications.clock = lambda: later
        _run(config, store, "flaky")
        _deliver(scheduler)
        assert [b["suppressed"] for b in hook.bodies()] == [0, 2]
        assert sorted(d.state for d in store.deliveries()) == [
            "delivered",
            "delivered",
            "throttled",
            "throttled",
        ]
    title, body = render(hook.bodies()[1], 2)
    assert title.endswith("(+2 more)") and body.startswith("+2 more")


def test_late_and_recovered(
    store: Store, worker_store: Store, make_config: MakeConfig, tmp_path: Path, backend: str
) -> None:
    with http_receiver() as hook:
        config, scheduler = _setup(
            make_config,
            store,
            f"""
            [[deployments]]
            name = "sometimes"
            command = ["/bin/sh", "-c", "test -e {tmp_path}/ok"]
            [[notifications]]
            name = "hook"
            on = ["LATE", "RECOVERED"]
            late_after = "1m"
            webhook = "{hook.url}/"
            """,
        )
        _run(config, store, "sometimes")  # fails: no message (not asked for)
        (tmp_path / "ok").touch()
        _run(config, store, "sometimes")  # the first COMPLETED after a failure
        _run(config, store, "sometimes")  # another COMPLETED: nothing
        late = store.create_run("sometimes", datetime.now(UTC) - timedelta(minutes=2))
        _deliver(scheduler)
        events = sorted((b["event"], b["run_id"]) for b in hook.bodies())
        assert [e for e, _ in events] == ["LATE", "RECOVERED"]
        assert dict(events)["LATE"] == late
        _deliver(scheduler)  # looked at again: not told twice
        assert len(hook.received) == 2
        if backend == "sqlite":  # and an idle pass is reads only: no write transaction at all
            worker_store.changed()
            scheduler.notifications.match()
            assert not worker_store.changed()


def test_worker_offline(store: Store, make_config: MakeConfig) -> None:
    with http_receiver() as hook:
        _config, scheduler = _setup(
            make_config,
            store,
            f"""
            [[notifications]]
            name = "fleet"
            on = ["WORKER_OFFLINE"]
            deployments = ["only-this"]   # a worker belongs to no deployment: told anyway
            webhook = "{hook.url}/"
            """,
        )
        now = datetime.now(UTC)
        store.register_worker("w-gone", "host-a", 123, ["default"], 1, now - timedelta(minutes=5))
        store.register_worker("w-clean", "host-a", 124, ["default"], 1, now - timedelta(minutes=5))
        store.worker_stopped("w-clean", now - timedelta(minutes=5))
        store.upkeep(now, None, 60.0)
        _deliver(scheduler)
        [event] = hook.bodies()
        assert (event["event"], event["worker"], event["host"]) == ("WORKER_OFFLINE", "w-gone", "host-a")


def test_email_through_apprise_to_a_local_smtp_server(store: Store, make_config: MakeConfig) -> None:
    with smtp_receiver() as mailbox:
        config, scheduler = _setup(
            make_config,
            store,
            f"""
            [[deployments]]
            name = "mailed"
            {FAILING}
            [[notifications]]
            name = "mail"
            on = ["FAILED"]
            urls = ["mailto://127.0.0.1:{mailbox.port}?user=orchd&to=ops@example.com&from=orchd@example.com&mode=insecure&format=text"]
            """,
        )
        _run(config, store, "mailed")
        _deliver(scheduler)
        assert [d.state for d in store.deliveries()] == ["delivered"], store.deliveries()
        [mail] = mailbox.messages
        assert "mailed FAILED" in mail["Subject"] and mail["To"] == "ops@example.com"
        assert "line 30" in mail.get_payload()


def test_two_schedulers_matching_the_same_events_queue_each_match_once(
    store: Store, worker_store: Store, make_config: MakeConfig
) -> None:
    config, first = _setup(
        make_config,
        store,
        f"""
        [[deployments]]
        name = "job"
        {FAILING}
        [[notifications]]
        name = "cmd"
        on = ["FAILED", "COMPLETED"]
        command = ["/bin/true"]
        """,
    )
    second = Scheduler(config, worker_store)
    _run(config, store, "job", times=5)
    barrier = threading.Barrier(2)

    def match(s: Scheduler) -> None:
        barrier.wait(10)
        s.notifications.match()

    threads = [threading.Thread(target=match, args=(s,)) for s in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    first.notifications.match()
    second.notifications.match()
    assert len(store.deliveries()) == 5


def test_the_cursor_looks_again_at_ids_a_late_transaction_fills() -> None:
    position, gaps = advance(10, [], [11, 14, 15], now=100.0)
    assert (position, gaps) == (15, [[12, 13, 100.0]])
    position, gaps = advance(position, gaps, [12, 16], now=101.0)
    assert (position, gaps) == (16, [[13, 13, 100.0]])
    assert advance(position, gaps, [], now=100.0 + 301) == (16, [])


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            'on = ["FAILD"]\ncommand = ["/bin/true"]',
            "notifications.r.on: unknown event 'FAILD' (did you mean 'FAILED'?)",
        ),
        ('on = ["FAILED"]', "notifications.r: give a channel: urls, url_file, webhook or command"),
        ('command = ["/bin/true"]', "notifications.r.on: expected at least one of"),
        (
            'on = ["FAILED"]\nurls = ["nosuch://x:pw@h/t"]',
            "notifications.r.urls: Apprise does not know the URL 'nosuch://h/***'",
        ),
        (
            'on = ["FAILED"]\ncommand = ["/bin/true"]\nsecret = "x"',
            "notifications.r.secret: only used with webhook",
        ),
        ('on = ["FAILED"]\nwebhook = "ftp://x"', "notifications.r.webhook: expected an http(s) URL"),
        ('on = ["FAILED"]\ncommand = ["/bin/true"]\nthrottle = "1x"', "notifications.r.throttle:"),
        ('on = ["FAILED"]\ncommand = ["/bin/true"]\nbogus = 1', "notifications.r.bogus: unknown key"),
    ],
)
def test_bad_rules_are_refused_with_file_line_and_key(make_config: MakeConfig, body: str, error: str) -> None:
    with pytest.raises(ConfigError) as refused:
        make_config(f'[[notifications]]\nname = "r"\n{body}\n')
    assert error in str(refused.value)
    assert "orchd.toml:" in str(refused.value)


def test_the_cli_lists_rules_tests_a_rule_and_shows_the_log(
    store: Store, make_config: MakeConfig, tmp_path: Path
) -> None:
    with http_receiver() as hook:
        config = make_config(
            f"""
            [[notifications]]
            name = "ops"
            on = ["FAILED"]
            webhook = "{hook.url}/"
            secret = "k"
            urls = ["json://user:pw@127.0.0.1:9/x"]
            """
        )
        cfg = ["--config", str(config.path)]
        listed = run_cli(["notification", "ls", "--json", *cfg])
        assert listed.returncode == 0, listed.stderr
        [rule] = json.loads(listed.stdout)
        assert rule["name"] == "ops" and "pw" not in listed.stdout
        assert "json://127.0.0.1:9/***" in rule["channels"] and "webhook" in rule["channels"]
        tested = run_cli(["notification", "test", "ops", "--json", *cfg])
        assert tested.returncode == 1  # the json:// target refuses
        outcomes = {o["channel"]: o["ok"] for o in json.loads(tested.stdout)}
        assert outcomes == {"webhook": True, "json://127.0.0.1:9/***": False}
        assert tested.stderr.strip() == "orchd: error: rule 'ops': 1 of 2 channels failed"
        [sample] = hook.received
        assert sample.signed_by("k") and sample.json["event"] == "TEST"
        failed = run_cli(["notification", "log", "--failed", "--json", *cfg])
        [entry] = json.loads(failed.stdout)
        assert entry["state"] == "failed" and entry["history"][0]["error"]
        assert "pw" not in failed.stdout
        table = run_cli(["notification", "log", *cfg])
        assert table.returncode == 0 and "delivered" in table.stdout and "failed" in table.stdout
        unknown = run_cli(["notification", "test", "opz", *cfg])
        assert unknown.returncode == 1
        assert unknown.stderr.strip() == (
            "orchd: error: no notification rule 'opz' (did you mean 'ops'?) (see `orchd notification ls`)"
        )
