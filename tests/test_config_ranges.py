"""A config that validates cannot crash a daemon: every number, duration, instant and string is
checked against what both databases and the datetime arithmetic accept, and every value inside
the documented ranges goes through `config validate` and a scheduler tick on both databases."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchd.cli.daemons import worker_main
from orchd.config import load_config
from orchd.config.fields import Bounded
from orchd.config.model import ARRAYS, SECTIONS
from orchd.db.store import Store
from orchd.durations import duration_text
from orchd.errors import EX_CONFIG, EX_USAGE, ConfigError
from orchd.scheduler.daemon import Scheduler
from orchd.worker.daemon import Worker
from tests.cli_support import Orchd, one_line_error
from tests.conftest import MakeConfig

DEPLOY = '[[deployments]]\nname = "a"\ncommand = ["true"]\n'

#: What the issue found accepted by `config validate` and then crashing a daemon, `deployment
#: apply`, or `config validate` itself (the interval): each is now one line, exit 78.
REFUSED = {
    "priority-beyond-int32": (DEPLOY + "priority = 3000000000\n", "deployments.a.priority"),
    "jitter-overflow": (DEPLOY + 'schedules = [{ interval = "1h", jitter = "99999999999d" }]\n', "jitter"),
    "horizon-overflow": ('[scheduler]\nhorizon = "99999999999d"\n', "scheduler.horizon"),
    "interval-overflow": (DEPLOY + 'schedules = [{ interval = "99999999999d" }]\n', "interval"),
    "nul-in-argv": ('[[deployments]]\nname = "a"\ncommand = ["/bin/echo", "a\\u0000b"]\n', "deployments"),
    "nul-in-env": (DEPLOY + 'env = { A = "x\\u0000" }\n', "deployments"),
    "nul-in-a-key": (DEPLOY + 'parameters = { "k\\u0000" = 1 }\n', "deployments"),
    "equals-in-env-name": (DEPLOY + 'env = { "A=B" = "x" }\n', "deployments.a.env"),
    "empty-env-name": (DEPLOY + 'env = { "" = "x" }\n', "deployments.a.env"),
    "empty-program": ('[[deployments]]\nname = "a"\ncommand = [""]\n', "deployments.a.command"),
    "nan-parameter": (DEPLOY + "parameters = { x = nan }\n", "deployments.a.parameters: x: nan"),
    "nan-schedule-parameter": (DEPLOY + 'schedules = [{ interval = "1h", parameters = { y = inf } }]\n', "y"),
    "at-year-9999": (DEPLOY + "schedules = [{ at = 9999-12-31T23:00:00-05:00 }]\n", "at"),
    "anchor-year-1": (DEPLOY + 'schedules = [{ interval = "1h", anchor = 0001-01-01T00:00:00 }]\n', "anchor"),
    "rrule-dtstart-year-1": (
        DEPLOY + 'schedules = [{ rrule = "DTSTART:00010101T000000\\nRRULE:FREQ=YEARLY" }]\n',
        "DTSTART",
    ),
    "lease-shorter-than-heartbeats": (
        '[worker]\nheartbeat = "20s"\nlease_timeout = "4s"\n',
        "worker.lease_timeout: must be at least twice worker.heartbeat",
    ),
    "offline-between-heartbeats": (
        '[worker]\nheartbeat = "1h"\nlease_timeout = "3h"\n',
        "scheduler.worker_timeout: must be at least twice worker.heartbeat",
    ),
    "fence-past-a-heartbeat": (
        '[worker]\nheartbeat = "10s"\nlease_timeout = "60s"\nfence_margin = "55s"\n',
        "worker.fence_margin: must be shorter than worker.lease_timeout less one worker.heartbeat",
    ),
    "pooler-before-sqlite": ('[database]\npooler = "transaction"\n', "database.pooler: only for PostgreSQL"),
    "spinning-scheduler": ('[scheduler]\nloop_interval = "0s"\n', "scheduler.loop_interval"),
    "spinning-worker": ('[worker]\npoll_interval = "0s"\n', "worker.poll_interval"),
    "pool-name-with-space": ('[worker]\npools = ["b c"]\n', "worker.pools"),
    "empty-pool-name": ('[worker]\npools = [""]\n', "worker.pools"),
    "no-pool": ("[worker]\npools = []\n", "worker.pools"),
    "worker-name-too-long": (f'[worker]\nname = "{"w" * 300}"\n', "worker.name"),
    "mysql-url": ('[database]\nurl = "mysql://u@h/db"\n', "database.url"),
    "not-a-url": ('[database]\nurl = "not a url"\n', "database.url"),
    "retries-overflow": (DEPLOY + "retries = 5000000000\n", "deployments.a.retries"),
    "limit-beyond-int32": ('[[pools]]\nname = "p"\nconcurrency_limit = 3000000000\n', "concurrency_limit"),
}


@pytest.mark.parametrize("body, words", REFUSED.values(), ids=list(REFUSED))
def test_values_that_used_to_crash_a_daemon_are_refused_by_config_validate(
    tmp_path: Path, body: str, words: str
) -> None:
    path = tmp_path / "orchd.toml"
    path.write_text(body)
    result = Orchd(path, tmp_path)("config", "validate")
    one_line_error(result, EX_CONFIG, words)
    assert result.stderr.startswith(f"orchd: error: {path}"), result.stderr


def test_toml_date_times_in_parameters_reach_the_run_as_iso_strings(
    store: Store, make_config: MakeConfig
) -> None:
    """`datetime is not JSON serializable` used to crash the scheduler's sync and `deployment apply`."""
    config = make_config(
        """
    [[deployments]]
    name = "dated"
    command = ["sh", "-c", "echo \\"$ORCHD_PARAMETERS\\""]
    parameters = { since = 2026-05-01T02:00:00Z, day = 2026-05-01, at = 12:30:00, nested = [1979-05-27] }
    schedules = [{ interval = "1h", parameters = { local = 2026-05-01T02:00:00 } }]
    """
    )
    now = datetime.now(UTC)
    Scheduler(config, store).sync()
    run_id = store.create_run("dated", now)
    Worker(config, store, ["default"], 1, name="w", burst=True).run(threading.Event())
    printed = json.loads(store.run_logs(run_id)[0].line)
    assert printed == {
        "since": "2026-05-01T02:00:00+00:00",
        "day": "2026-05-01",
        "at": "12:30:00",
        "nested": ["1979-05-27"],
    }
    (schedule,) = config.deployments[0].schedules
    assert schedule.parameters == {"local": "2026-05-01T02:00:00"}


def test_pool_names_on_the_command_line_follow_the_config_rule(tmp_path: Path) -> None:
    path = tmp_path / "orchd.toml"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/none.db"\n')
    for bad in ("", "b c", "a/b"):
        result = CliRunner().invoke(worker_main, ["--config", str(path), "--pool", bad])
        one_line_error(result, EX_USAGE, "expected a pool name")
    one_line_error(
        Orchd(path, tmp_path)("pool", "set-limit", "default", "3000000000"), EX_USAGE, "to 1000000"
    )


# ---------------------------------------------------------------- any value in range


def _in_range(parser: Bounded) -> st.SearchStrategy[Any]:
    if parser.kind == "integer":
        values: st.SearchStrategy[Any] = st.integers(int(parser.low), int(parser.high))
    elif parser.kind == "number":
        values = st.floats(parser.low, parser.high)
    else:  # durations as the config writes them, in milliseconds
        values = st.integers(round(parser.low * 1000), round(parser.high * 1000)).map(
            lambda ms: duration_text(ms / 1000)
        )
    return values | st.just(0) if parser.optional else values


def _keys(cls: type) -> dict[str, st.SearchStrategy[Any]]:
    return {
        fd.name: _in_range(fd.metadata["parser"])
        for fd in dataclasses.fields(cls)
        if isinstance(fd.metadata["parser"], Bounded)
    }


#: The tick is run for real: keep the run counts small enough for a test (every other key spans
#: its whole range).
_SMALL = {"max_scheduled_runs": st.integers(1, 300), "catchup_limit": st.integers(1, 300)}
_YEARS = st.datetimes(datetime(1900, 1, 2), datetime(8999, 12, 30)).map(lambda t: t.replace(microsecond=0))


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        name: draw(st.fixed_dictionaries({}, optional=_keys(cls) | (_SMALL if name == "scheduler" else {})))
        for name, cls in SECTIONS.items()
    }
    doc["database"].pop("busy_timeout", None)  # the test database's own
    doc["pools"] = [{"name": "default", **draw(st.fixed_dictionaries({}, optional=_keys(ARRAYS["pools"])))}]
    schedule = st.one_of(
        st.fixed_dictionaries(
            {"interval": st.integers(1, 3650 * 86400).map(duration_text)},
            optional={"anchor": _YEARS, "jitter": st.integers(0, 7 * 86400).map(duration_text)},
        ),
        st.fixed_dictionaries(
            {"at": _YEARS}, optional={"jitter": st.integers(0, 7 * 86400).map(duration_text)}
        ),
        st.fixed_dictionaries({"cron": st.sampled_from(["* * * * *", "*/5 * * * * *", "0 0 29 2 *"])}),
    )
    doc["deployments"] = [
        {
            "name": f"d{i}",
            "command": ["true"],
            "parameters": {"t": draw(_YEARS), "n": draw(st.integers(-(2**63), 2**63 - 1))},
            "schedules": [draw(schedule)],
            **draw(st.fixed_dictionaries({}, optional=_keys(ARRAYS["deployments"]))),
        }
        for i in range(draw(st.integers(1, 3)))
    ]
    worker, scheduler = doc["worker"], doc["scheduler"]
    heartbeat = Bounded("duration", 0, 86400)(worker.get("heartbeat", "10s"))
    # the timing rules (tested above): keep the drawn values that obey them
    if Bounded("duration", 0, 86400)(worker.get("lease_timeout", "60s")) < 2 * heartbeat:
        worker["lease_timeout"] = duration_text(2 * heartbeat + 2)
    lease = Bounded("duration", 0, 86400)(worker.get("lease_timeout", "60s"))
    margin = Bounded("duration", 0, 86400, optional=True)(worker.get("fence_margin", ""))
    if margin is not None and margin >= lease - heartbeat:
        del worker["fence_margin"]
    if Bounded("duration", 0, 86400 * 30)(scheduler.get("worker_timeout", "2m")) < 2 * heartbeat:
        scheduler["worker_timeout"] = duration_text(2 * heartbeat + 1)
    return doc


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=configs())
def test_any_value_in_range_validates_and_ticks(
    doc: dict[str, Any], db_url: str, store: Store, tmp_path: Path
) -> None:
    doc["database"]["url"] = db_url
    path = tmp_path / "orchd.toml"
    path.write_text(tomli_w.dumps(doc))
    try:
        config = load_config(path, env={"ORCHD_STATE_DIR": str(tmp_path / "state")})
    except ConfigError as exc:  # pragma: no cover - shows the value hypothesis found
        pytest.fail(f"an in-range config was refused: {exc}")
    scheduler = Scheduler(config, store)
    scheduler.sync()
    scheduler.tick()
    scheduler.tick()
