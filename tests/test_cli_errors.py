"""Every user mistake is one line on stderr with the right exit status, and changes nothing.

One database per backend for the whole module: a command that fails must leave it exactly as it
was (every row of every table compared), so sharing it across the cases is the point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchd.cli.daemons import worker_main
from orchd.config import load_config
from orchd.db import migrate
from orchd.db.engine import make_engine
from orchd.db.store import Store
from orchd.errors import EX_CONFIG, EX_USAGE
from orchd.states import RunState
from tests.cli_support import Orchd, now, one_line_error, snapshot, write_config
from tests.conftest import BACKENDS
from tests.helpers import BIN
from tests.pg import PgServer

S = RunState


@dataclass
class World:
    orchd: Orchd
    store: Store
    ids: dict[str, int]


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("errors")
    server: PgServer | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'orchd.db'}"
    else:
        server = request.getfixturevalue("pg_server")
        name = server.create_database(template=request.getfixturevalue("pg_template"))
        url = server.url_for(name)
    orchd = Orchd(write_config(tmp / "orchd.toml", url), tmp / "state")
    config = orchd.config()
    store = Store(make_engine(config.database), "test")
    migrate.upgrade(store.engine)
    at = now()
    store.sync(config, at)
    completed = store.create_run("fail", at)
    [claimed] = store.claim("w1", ["default"], 1, at, at)
    store.start_many({claimed.id: 1}, "w1", at)
    store.finish(claimed.id, "w1", S.COMPLETED, at, exit_code=0)
    scheduled = store.create_run("hello", at)
    yield World(orchd, store, {"scheduled": scheduled, "completed": completed})
    store.engine.dispose()
    if server is not None:
        server.drop_database(url.rsplit("/", 1)[1])


# (arguments, exit status, words of the message); {scheduled} and {completed} are run ids.
CASES: list[tuple[str, int, str]] = [
    # usage: refused while the command line is parsed
    ("run show abc", EX_USAGE, "'abc' is not a valid integer"),
    ("run show 0", EX_USAGE, "0 is not in the range 1<=x<=9223372036854775807"),
    ("run ls --state BOGUS", EX_USAGE, "'BOGUS' is not one of"),
    ("run ls --limit 0", EX_USAGE, "Invalid value for '--limit'"),
    ("run ls --since soon", EX_USAGE, "'soon' is not a time: use ISO 8601"),
    ("run ls --bogus-option", EX_USAGE, "No such option '--bogus-option'"),
    ("run create hello --param novalue", EX_USAGE, "'novalue' is not KEY=VALUE"),
    ("run create hello --param =1", EX_USAGE, "'=1' is not KEY=VALUE"),
    ("run create hello --params-json {{bad", EX_USAGE, "--params-json': not JSON"),
    ("run create hello --params-json [1,2]", EX_USAGE, "expected a JSON object"),
    ("run create hello --at next-tuesday", EX_USAGE, "'next-tuesday' is not a time"),
    ("run create hello --at 2026-13-01", EX_USAGE, "'2026-13-01' is not a time"),
    ("run create", EX_USAGE, "which deployment? give DEPLOYMENT, or --like ID"),
    ("run cancel", EX_USAGE, "Missing argument 'ID'"),
    ("run logs x", EX_USAGE, "'x' is not a valid integer"),
    ("run retry -1", EX_USAGE, "No such option '-1'"),
    ("backfill minutely --from 2026-01-02 --to 2026-01-01", EX_USAGE, "is after --to"),
    ("backfill minutely --from 1d", EX_USAGE, "Missing option '--to'"),
    ("backfill minutely --from 1d --to +1d", EX_USAGE, "is in the future"),
    ("backfill minutely --from garbage --to now", EX_USAGE, "'garbage' is not a time"),
    ("schedule preview hello -n 0", EX_USAGE, "Invalid value for '-n'"),
    ("schedule preview hello --from whenever", EX_USAGE, "'whenever' is not a time"),
    (
        "pool create bad/name",
        EX_USAGE,
        "expected a pool name (letters, digits, '.', '_', '-'), got 'bad/name'",
    ),
    ("pool set-limit default -1", EX_USAGE, "No such option '-1'"),
    (
        "pool set-limit default many",
        EX_USAGE,
        "expected an integer from 1 to 1000000 (or 0 for none), got the string 'many'",
    ),
    ("config set nosuch.key 1", EX_USAGE, "nosuch.key: unknown key"),
    ("config set worker.concurency 8", EX_USAGE, "did you mean 'worker.concurrency'?"),
    (
        "config set worker.concurrency zero",
        EX_CONFIG,
        "worker.concurrency: expected an integer from 1 to 10000",
    ),
    ("config set worker.concurrency 0", EX_CONFIG, "expected an integer from 1 to 10000, got 0"),
    ("config set deployments.name x", EX_USAGE, "[[deployments]] entries are edited in the file itself"),
    ("config set metrics.listen nonsense", EX_CONFIG, 'expected "HOST:PORT"'),
    ("config set logging.format xml", EX_CONFIG, "expected one of 'auto'"),
    ("db reset", EX_USAGE, "add --yes to do it"),
    ("status --late-after soon", EX_USAGE, "expected a duration"),
    ("nosuchcommand", EX_USAGE, "No such command 'nosuchcommand'"),
    # values the database or the time arithmetic cannot take: refused as usage, not a traceback
    ("run show 99999999999999999999", EX_USAGE, "is not in the range 1<=x<=9223372036854775807"),
    ("run cancel 99999999999999999999", EX_USAGE, "is not in the range 1<=x<=9223372036854775807"),
    ("run retry 99999999999999999999", EX_USAGE, "is not in the range 1<=x<=9223372036854775807"),
    ("run logs 99999999999999999999", EX_USAGE, "is not in the range 1<=x<=9223372036854775807"),
    ("run create --like 99999999999999999999", EX_USAGE, "is not in the range"),
    ("run logs 1 --attempt 99999999999", EX_USAGE, "is not in the range 1<=x<=2147483647"),
    ("run ls --since 99999999999d", EX_USAGE, "expected a time between 1900 and 9000"),
    ("run create hello --at 0001-01-01", EX_USAGE, "expected a time between 1900 and 9000"),
    ("schedule preview hello --from 9999-12-31", EX_USAGE, "expected a time between 1900 and 9000"),
    ("backfill minutely --from 1850-01-01 --to now", EX_USAGE, "expected a time between 1900 and 9000"),
    ("status --late-after 99999999999d", EX_USAGE, "expected a duration"),
    ("run create hello --param x=NaN", EX_USAGE, "nan is not a JSON number"),
    ('run create hello --params-json {{"x":Infinity}}', EX_USAGE, "inf is not a JSON number"),
    ("deployment pause", EX_USAGE, "Missing argument 'DEPLOYMENT'"),
    # errors: the command line is fine, what it names is not
    ("run show 99999", 1, "run 99999 not found (see `orchd run ls`)"),
    ("run cancel 99999", 1, "run 99999 not found"),
    ("run retry 99999", 1, "run 99999 not found"),
    ("run logs 99999", 1, "run 99999 not found"),
    ("run show 9223372036854775807", 1, "run 9223372036854775807 not found"),
    ("run retry 9223372036854775807", 1, "run 9223372036854775807 not found"),
    ("run create helo", 1, "deployment 'helo' not found (did you mean 'hello'?)"),
    ("run create nothing-like-it", 1, "deployment 'nothing-like-it' not found (see `orchd deployment ls`)"),
    ("run cancel {completed}", 1, "is COMPLETED: nothing to cancel"),
    ("run retry {scheduled}", 1, "is SCHEDULED: only a finished run can be retried"),
    ("run ls --deployment helo", 1, "deployment 'helo' not found (did you mean 'hello'?)"),
    ("run ls --pool defualt", 1, "pool 'defualt' not found (did you mean 'default'?)"),
    ("deployment show nope", 1, "deployment 'nope' not found"),
    ("deployment pause helo", 1, "did you mean 'hello'?"),
    ("deployment resume nope", 1, "deployment 'nope' not found"),
    ("schedule preview helo", 1, "deployment 'helo' is not in "),
    ("backfill nope --from 1d --to now", 1, "deployment 'nope' not found"),
    ("backfill minutely --from 1d --to now", 1, "fires more than 50 times"),
    ("backfill fail --from 1d --to now", 1, "'fail' has no active schedule to backfill"),
    ("pool create default", 1, "pool 'default' already exists"),
    ("pool pause nope", 1, "pool 'nope' not found"),
    ("pool set-limit nope 3", 1, "pool 'nope' not found"),
]


@pytest.mark.parametrize(("args", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_a_mistake_is_one_line_and_changes_nothing(world: World, args: str, code: int, words: str) -> None:
    before, config_before = snapshot(world.store), world.orchd.path.read_bytes()
    result = world.orchd(*args.format(**world.ids).split())
    one_line_error(result, code, words)
    assert "Traceback" not in result.output
    assert snapshot(world.store) == before
    assert world.orchd.path.read_bytes() == config_before


def test_orchd_debug_adds_the_traceback(world: World) -> None:
    result = world.orchd("run", "show", "99999", ORCHD_DEBUG="1")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().endswith("orchd: error: run 99999 not found (see `orchd run ls`)")


def test_config_init_refuses_to_overwrite(world: World) -> None:
    before = world.orchd.path.read_bytes()
    one_line_error(world.orchd("config", "init"), 1, "exists: --force overwrites it")
    assert world.orchd.path.read_bytes() == before


# --- the database or the config itself is the problem --------------------------------------------


def test_unreachable_database_names_host_and_port_never_the_password(tmp_path: Path) -> None:
    url = "postgresql://orchd:s3cret-pw@127.0.0.1:1/orchd"
    orchd = Orchd(write_config(tmp_path / "orchd.toml", url), tmp_path / "state")
    for args in (["run", "ls"], ["run", "create", "hello"], ["deployment", "apply"], ["db", "upgrade"]):
        result = orchd(*args)
        one_line_error(result, 1, "cannot reach PostgreSQL at 127.0.0.1:1/orchd: ")
        assert "s3cret" not in result.output


def test_a_missing_sqlite_file_is_reported_not_created(tmp_path: Path) -> None:
    db = tmp_path / "typo" / "orchd.db"
    orchd = Orchd(write_config(tmp_path / "orchd.toml", f"sqlite:///{db}"), tmp_path / "state")
    for args in (["run", "ls"], ["pool", "create", "x"], ["db", "reset", "--yes"], ["deployment", "apply"]):
        one_line_error(orchd(*args), 1, f"SQLite database {db} does not exist")
    assert not db.exists() and not db.parent.exists()


def test_status_reports_a_missing_database_as_a_failed_check(tmp_path: Path) -> None:
    db = tmp_path / "orchd.db"
    orchd = Orchd(write_config(tmp_path / "orchd.toml", f"sqlite:///{db}"), tmp_path / "state")
    result = orchd("status")
    assert result.exit_code == 1
    assert f"FAIL  database   SQLite database {db} does not exist" in result.stdout
    assert not db.exists()


def test_an_old_schema_says_to_upgrade_and_is_not_touched(empty_url: str, tmp_path: Path) -> None:
    orchd = Orchd(write_config(tmp_path / "orchd.toml", empty_url), tmp_path / "state")
    engine = make_engine(load_config(orchd.path).database)
    engine.connect().close()  # an SQLite file exists, empty
    for args in (
        ["run", "ls"],
        ["deployment", "apply"],
        ["backfill", "minutely", "--from", "1h", "--to", "now"],
    ):
        result = orchd(*args)
        one_line_error(result, 1, "the database schema is empty, orchd needs")
        assert result.stderr.endswith(": run `orchd db upgrade`\n")
    assert migrate.current_revision(engine) is None
    engine.dispose()


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    orchd = Orchd(tmp_path / "absent.toml", tmp_path / "state")
    for args in (["run", "ls"], ["status"], ["config", "set", "worker.concurrency", "2"]):
        one_line_error(orchd(*args), EX_CONFIG, "config file not found")
    assert not orchd.path.exists()


def test_a_broken_config_file_is_a_config_error_and_stays_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "orchd.toml"
    path.write_text("[worker]\nconcurrency = 'many'\n")
    orchd = Orchd(path, tmp_path / "state")
    for args in (["run", "ls"], ["config", "set", "worker.heartbeat", "5s"]):
        one_line_error(orchd(*args), EX_CONFIG, f"{path}:2: worker.concurrency: expected an integer")
    assert path.read_text() == "[worker]\nconcurrency = 'many'\n"


def test_permission_denied_on_the_config(tmp_path: Path) -> None:
    path = write_config(tmp_path / "orchd.toml", f"sqlite:///{tmp_path / 'orchd.db'}")
    path.chmod(0o600)
    if os.geteuid() != 0:
        path.chmod(0)
        one_line_error(Orchd(path, tmp_path / "state")("run", "ls"), EX_CONFIG, "permission denied")
        return
    if not shutil.which("setpriv"):
        pytest.skip("root reads any file; setpriv is needed to try as another user")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(BIN / "orchd")]
    with tempfile.TemporaryDirectory() as searchable:  # the file unreadable, or a directory on its way
        Path(searchable).chmod(0o755)
        readable_dir = Path(searchable) / "orchd.toml"
        readable_dir.write_bytes(path.read_bytes())
        readable_dir.chmod(0o600)
        for config in (readable_dir, path):
            result = subprocess.run(
                [*as_nobody, "run", "ls", "--config", str(config)], capture_output=True, text=True
            )
            assert (result.returncode, result.stdout) == (EX_CONFIG, "")
            assert result.stderr == f"orchd: error: {config}: permission denied reading the config file\n"


def test_a_usage_error_of_a_daemon_is_one_line() -> None:
    result = CliRunner().invoke(worker_main, ["--metrics-listen", "everywhere"])
    one_line_error(result, EX_USAGE, "Invalid value for '--metrics-listen': expected \"HOST:PORT\"")
