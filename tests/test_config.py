"""The configuration loader: defaults, files, drop-ins, environment, secrets, and one-line errors
(through the real `orchd config ...` CLI) for bad files."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from orchd.cli import main
from orchd.config import load_config
from orchd.config.load import DEFAULT_PATH, SYSTEM_STATE_DIR
from orchd.config.model import SECTIONS, TriggerSpec
from orchd.config.template import render
from orchd.errors import EX_CONFIG, ConfigError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "etc" / "orchd" / "orchd.toml"
QUICKSTART = REPO / "etc" / "orchd" / "quickstart.toml"
REGENERATE = (
    """python -c "from orchd.config.template import render; print(render(), end='')" > etc/orchd/orchd.toml"""
)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def env(state_dir: Path) -> dict[str, str]:
    """An environment for load_config that does not depend on the machine (no /var/lib/orchd)."""
    return {"ORCHD_STATE_DIR": str(state_dir)}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(path: Path | None, env: Mapping[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    return str(info.value)


def cli(args: list[str], state_dir: Path, **env: str) -> Result:
    """Run `orchd ARGS` in-process with the machine's ORCHD_* and systemd variables removed."""
    inherited = ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY")
    cleared: dict[str, str | None] = {k: None for k in os.environ if k.startswith("ORCHD_") or k in inherited}
    return CliRunner().invoke(main, args, env={**cleared, "ORCHD_STATE_DIR": str(state_dir), **env})


# --- defaults and which file is read -------------------------------------------------------------


def test_empty_file_gives_all_defaults(tmp_path: Path, env: dict[str, str], state_dir: Path) -> None:
    path = write(tmp_path / "orchd.toml", "")
    config = load_config(path, env=env)
    assert config.path == path
    assert config.state_dir == state_dir
    assert config.pools == ()
    assert config.deployments == ()
    for name, cls in SECTIONS.items():
        section = getattr(config, name)
        for fd in dataclasses.fields(cls):
            if (name, fd.name) == ("database", "url"):
                continue
            default = fd.default_factory() if fd.default_factory is not dataclasses.MISSING else fd.default
            assert getattr(section, fd.name) == fd.metadata["parser"](default), f"{name}.{fd.name}"
            assert config.sources[f"{name}.{fd.name}"] == "default"
    assert config.database.url == f"sqlite:///{state_dir}/orchd.db"
    assert config.sources["database.url"] == "default"
    assert config.worker.concurrency == 4
    assert config.worker.pools == ["default"]
    assert config.worker.heartbeat == 10.0
    assert config.scheduler.horizon == 600.0
    assert config.scheduler.catchup == "latest"
    assert config.logging.format == "auto"


def test_comments_only_file_is_valid(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_config(write(tmp_path / "orchd.toml", "# nothing here\n\n"), env=env)
    assert config.worker.concurrency == 4


@pytest.mark.skipif(DEFAULT_PATH.exists(), reason=f"{DEFAULT_PATH} exists on this machine")
def test_missing_default_file_is_an_empty_config(env: dict[str, str], state_dir: Path) -> None:
    config = load_config(None, env=env)
    assert config.path is None
    assert config.deployments == ()
    assert config.database.url == f"sqlite:///{state_dir}/orchd.db"


def test_explicit_missing_file_is_an_error(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "nope.toml"
    assert error_of(missing, env) == f"{missing}: config file not found"


def test_orchd_config_names_the_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "elsewhere.toml", "[worker]\nconcurrency = 3\n")
    config = load_config(None, env={**env, "ORCHD_CONFIG": str(path)})
    assert config.path == path
    assert config.worker.concurrency == 3


def test_orchd_config_missing_file_is_an_error(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "nope.toml"
    assert "config file not found" in error_of(None, {**env, "ORCHD_CONFIG": str(missing)})


def test_state_dir_from_systemd_state_directory(tmp_path: Path) -> None:
    config = load_config("/dev/null", env={"STATE_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"})
    assert config.state_dir == tmp_path / "a"
    assert config.database.url == f"sqlite:///{tmp_path}/a/orchd.db"
    # systemd sorts the directories: one a drop-in adds may come first
    config = load_config("/dev/null", env={"STATE_DIRECTORY": f"{tmp_path}/cache:{tmp_path}/orchd"})
    assert config.state_dir == tmp_path / "orchd"


def test_orchd_state_dir_beats_state_directory(tmp_path: Path) -> None:
    env = {"ORCHD_STATE_DIR": str(tmp_path / "mine"), "STATE_DIRECTORY": str(tmp_path / "systemd")}
    assert load_config("/dev/null", env=env).state_dir == tmp_path / "mine"


@pytest.mark.skipif(
    os.access(SYSTEM_STATE_DIR if SYSTEM_STATE_DIR.exists() else SYSTEM_STATE_DIR.parent, os.W_OK),
    reason=f"{SYSTEM_STATE_DIR} is writable here, so it is the state dir",
)
def test_state_dir_falls_back_to_xdg_data_home(tmp_path: Path) -> None:
    config = load_config("/dev/null", env={"XDG_DATA_HOME": str(tmp_path)})
    assert config.state_dir == tmp_path / "orchd"
    assert config.database.url == f"sqlite:///{tmp_path}/orchd/orchd.db"


def test_file_values_are_parsed_and_traced(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(
        tmp_path / "orchd.toml",
        """\
[database]
url = "sqlite:////srv/orchd.db"

[worker]
shutdown_grace = "1h30m"
pools = ["a", "b"]

[[pools]]
name = "a"
concurrency_limit = 2
paused = true

[[deployments]]
name = "backup"
command = ["/usr/bin/backup", "--full"]
timeout = "2h"
retries = 1
env = { PGHOST = "db1" }
schedules = [{ cron = "30 2 * * *", timezone = "Europe/Berlin", active = false }]
""",
    )
    config = load_config(path, env=env)
    assert config.database.url == "sqlite:////srv/orchd.db"
    assert config.worker.shutdown_grace == 5400.0
    assert config.worker.pools == ["a", "b"]
    assert config.pools[0].concurrency_limit == 2
    assert config.pools[0].paused is True
    backup = config.deployment("backup")
    assert backup is not None
    assert backup.command == ["/usr/bin/backup", "--full"]
    assert backup.timeout == 7200.0
    assert backup.env == {"PGHOST": "db1"}
    assert [(s.kind, s.expr, s.timezone, s.active) for s in backup.schedules] == [
        ("cron", "30 2 * * *", "Europe/Berlin", False)
    ]
    assert config.sources["database.url"] == f"{path}:2"
    assert config.sources["worker.shutdown_grace"] == f"{path}:5"
    assert config.sources["worker.pools"] == f"{path}:6"
    assert config.sources["worker.concurrency"] == "default"
    assert config.sources["pools.a.paused"] == f"{path}:11"
    assert config.sources["deployments.backup.timeout"] == f"{path}:16"


# --- environment overrides -----------------------------------------------------------------------


def test_environment_beats_the_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(
        tmp_path / "orchd.toml",
        '[database]\nurl = "sqlite:////file.db"\n\n[worker]\nconcurrency = 2\npools = ["x"]\nname = "w"\n',
    )
    config = load_config(
        path,
        env={
            **env,
            "ORCHD_WORKER_CONCURRENCY": "8",
            "ORCHD_WORKER_POOLS": "a, b",
            "ORCHD_WORKER_NAME": "42",
            "ORCHD_DATABASE_URL": "postgresql+psycopg://orchd@db1/orchd",
            "ORCHD_DATABASE_MIGRATE_ON_START": "false",
            "ORCHD_SCHEDULER_HORIZON": "90",
            "ORCHD_SCHEDULER_LOOP_INTERVAL": "500ms",
            "ORCHD_LOGGING_LEVEL": "debug",
            "ORCHD_DEBUG": "1",  # not a setting: ignored
        },
    )
    assert config.worker.concurrency == 8
    assert config.worker.pools == ["a", "b"]
    assert config.worker.name == "42"
    assert config.database.url == "postgresql+psycopg://orchd@db1/orchd"
    assert config.database.migrate_on_start is False
    assert config.scheduler.horizon == 90.0
    assert config.scheduler.loop_interval == 0.5
    assert config.logging.level == "debug"
    assert config.sources["worker.concurrency"] == "environment ORCHD_WORKER_CONCURRENCY"
    assert config.sources["worker.pools"] == "environment ORCHD_WORKER_POOLS"
    assert config.sources["database.url"] == "environment ORCHD_DATABASE_URL"
    assert config.sources["logging.level"] == "environment ORCHD_LOGGING_LEVEL"
    assert config.sources["logging.format"] == "default"


def test_unknown_environment_key_is_an_error(tmp_path: Path, env: dict[str, str]) -> None:
    message = error_of(Path("/dev/null"), {**env, "ORCHD_WORKER_CONCURENCY": "8"})
    assert message == (
        "environment ORCHD_WORKER_CONCURENCY: worker.concurency: unknown key (did you mean 'concurrency'?)"
    )


def test_a_misspelled_environment_section_is_an_error_too(env: dict[str, str]) -> None:
    """ORCHD_WORKERS_CONCURRENCY=8 was silently ignored; orchd's own run variables are not keys."""
    message = error_of(Path("/dev/null"), {**env, "ORCHD_WORKERS_CONCURRENCY": "8"})
    assert message == (
        "environment ORCHD_WORKERS_CONCURRENCY: unknown section 'workers' "
        "(did you mean ORCHD_WORKER_CONCURRENCY?)"
    )
    assert "DATABSE" in error_of(Path("/dev/null"), {**env, "ORCHD_DATABSE_URL": "sqlite://"})
    inside_a_run = {"ORCHD_SCHEDULED_FOR": "2026-05-01T00:00:00+00:00", "ORCHD_RUN_ID": "7", "ORCHD_X": "1"}
    assert load_config("/dev/null", env={**env, **inside_a_run}).worker.concurrency == 4


def test_a_relative_sqlite_path_is_relative_to_the_file_it_is_written_in(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quick start's `sqlite:///.state/orchd.db` worked only from the repository root."""
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc" / "orchd.toml", '[database]\nurl = "sqlite:///../state/orchd.db"\n')
    monkeypatch.chdir("/")
    assert load_config(path, env=env).database.url == f"sqlite:///{tmp_path}/state/orchd.db"
    for url in ("sqlite:////srv/orchd.db", "sqlite:///:memory:", "postgresql://u@h/db"):
        write(path, f'[database]\nurl = "{url}"\n')
        assert load_config(path, env=env).database.url == url
    # in the environment there is no file: relative to where the command runs, as SQLAlchemy has it
    relative = load_config(path, env={**env, "ORCHD_DATABASE_URL": "sqlite:///x.db"})
    assert relative.database.url == "sqlite:///x.db"


def test_bad_environment_value_names_the_variable(env: dict[str, str]) -> None:
    message = error_of(Path("/dev/null"), {**env, "ORCHD_WORKER_CONCURRENCY": "0"})
    expected = "worker.concurrency: expected an integer from 1 to 10000, got 0"
    assert message == f"environment ORCHD_WORKER_CONCURRENCY: {expected}"


# --- deployments.d drop-ins ----------------------------------------------------------------------


def deployment(name: str) -> str:
    return f'[[deployments]]\nname = "{name}"\ncommand = ["/bin/true"]\n'


def test_drop_ins_are_loaded_sorted(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "orchd.toml", deployment("main"))
    write(tmp_path / "deployments.d" / "20-b.toml", deployment("b1") + deployment("b2"))
    write(tmp_path / "deployments.d" / "10-a.toml", deployment("a"))
    write(tmp_path / "deployments.d" / "README.txt", "not TOML, not read")
    write(tmp_path / "deployments.d" / "30-c.toml.disabled", deployment("c"))
    config = load_config(path, env=env)
    assert [d.name for d in config.deployments] == ["main", "a", "b1", "b2"]
    assert config.sources["deployments.b2.command"] == f"{tmp_path}/deployments.d/20-b.toml:6"


def test_deployments_among_other_tables_mean_what_toml_says(tmp_path: Path, env: dict[str, str]) -> None:
    """Each [[deployments]] table is parsed on its own (a config of 100,000 schedules is never in
    memory whole), which must not change what any layout means; a file with a multi-line string
    is parsed whole, and reads the same."""
    text = (
        deployment("a")
        + '[[deployments.triggers]]\nafter = "b"\n'
        + "[worker]\nconcurrency = 3\n"
        + deployment("b")
        + 'schedules = [\n  { interval = "1h" },\n  { cron = "0 * * * *" },\n]\n'
        + '[[pools]]\nname = "p"\n'
        + deployment("c")
        + 'pool = "p"\n'
    )
    path = write(tmp_path / "orchd.toml", text)
    config = load_config(path, env=env)
    assert [(d.name, d.pool, len(d.schedules)) for d in config.deployments] == [
        ("a", "default", 0),
        ("b", "default", 2),
        ("c", "p", 0),
    ]
    assert config.deployments[0].triggers == [TriggerSpec("b", ("COMPLETED",))]
    assert (config.worker.concurrency, [p.name for p in config.pools]) == (3, ["p"])
    assert config.sources["deployments.c.pool"] == f"{path}:20"
    write(path, text + '[logging]\nlevel = """warning"""\n')
    whole = load_config(path, env=env)
    assert (whole.deployments, whole.pools, whole.worker) == (config.deployments, config.pools, config.worker)


def test_duplicate_across_drop_ins_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "orchd.toml", "[worker]\nconcurrency = 1\n\n" + deployment("nightly"))
    write(tmp_path / "deployments.d" / "a.toml", deployment("other") + deployment("nightly"))
    assert error_of(path, env) == (
        f"{tmp_path}/deployments.d/a.toml:5: deployments: 'nightly' is defined twice (first at {path}:5)"
    )


def test_error_in_drop_in_names_the_drop_in(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "orchd.toml", "")
    drop_in = write(tmp_path / "deployments.d" / "x.toml", deployment("x") + 'retry_delya = "1m"\n')
    assert error_of(path, env) == (
        f"{drop_in}:4: deployments.x.retry_delya: unknown key (did you mean 'retry_delay'?)"
    )


# --- database URL from a file or a systemd credential --------------------------------------------


def test_url_file_is_read(tmp_path: Path, env: dict[str, str]) -> None:
    secret = write(tmp_path / "db-url", "postgresql://u:secret@h/db\n")
    path = write(tmp_path / "orchd.toml", f'[database]\nurl_file = "{secret}"\n')
    config = load_config(path, env=env)
    assert config.database.url == "postgresql://u:secret@h/db"
    assert config.sources["database.url"] == f"file {secret}"
    assert config.sources["database.url_file"] == f"{path}:2"


def test_url_beats_url_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "orchd.toml", f'[database]\nurl_file = "{tmp_path}/absent"\n')
    config = load_config(path, env={**env, "ORCHD_DATABASE_URL": "sqlite:////x.db"})
    assert config.database.url == "sqlite:////x.db"


def test_credential_is_read(tmp_path: Path, env: dict[str, str]) -> None:
    cred = write(tmp_path / "creds" / "database-url", "postgresql://u:pw@h/db")
    config = load_config("/dev/null", env={**env, "CREDENTIALS_DIRECTORY": str(cred.parent)})
    assert config.database.url == "postgresql://u:pw@h/db"
    assert config.sources["database.url"] == f"file {cred}"


def test_credentials_directory_without_the_credential_gives_sqlite(
    tmp_path: Path, env: dict[str, str], state_dir: Path
) -> None:
    (tmp_path / "creds").mkdir()
    config = load_config("/dev/null", env={**env, "CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert config.database.url == f"sqlite:///{state_dir}/orchd.db"


def test_url_file_missing_is_an_error(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "orchd.toml", f'[database]\nurl_file = "{tmp_path}/absent"\n')
    assert error_of(path, env) == (
        f"{path}:2: database.url_file: cannot read {tmp_path}/absent: No such file or directory"
    )


def test_url_file_unreadable_is_an_error(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "a-dir").mkdir()  # unreadable as a file even for root
    message = error_of(Path("/dev/null"), {**env, "ORCHD_DATABASE_URL_FILE": str(tmp_path / "a-dir")})
    assert message == (
        "environment ORCHD_DATABASE_URL_FILE: database.url_file: "
        f"cannot read {tmp_path}/a-dir: Is a directory"
    )


def test_url_file_empty_is_an_error(tmp_path: Path, env: dict[str, str]) -> None:
    empty = write(tmp_path / "db-url", "  \n")
    path = write(tmp_path / "orchd.toml", f'[database]\nurl_file = "{empty}"\n')
    assert error_of(path, env) == f"{path}:2: database.url_file: {empty} is empty"


def test_empty_credential_is_an_error(tmp_path: Path, env: dict[str, str]) -> None:
    cred = write(tmp_path / "creds" / "database-url", "")
    message = error_of(Path("/dev/null"), {**env, "CREDENTIALS_DIRECTORY": str(cred.parent)})
    assert message == f"credential database-url: database.url_file: {cred} is empty"


# --- bad files through `orchd config validate` ---------------------------------------------------


@dataclass(frozen=True)
class Bad:
    text: str | bytes
    line: int | None  # the line the message must name, when one can be found
    key: str | None  # the key the message must name
    words: str  # what the message must say


CMD = 'command = ["/bin/true"]\n'
DEPLOY = '[[deployments]]\nname = "a"\n' + CMD

BAD = {
    "toml-syntax": Bad('[worker]\nconcurrency = 4\nname = "unterminated\n', 3, None, "invalid TOML"),
    "toml-syntax-in-a-deployment": Bad(
        deployment("a") + deployment("b") + "retries = \n", 7, None, "invalid TOML"
    ),
    "deployments-inline-and-as-tables": Bad(
        'deployments = [{ name = "a", command = ["true"] }]\n' + deployment("b"), 2, None, "invalid TOML"
    ),
    "section-twice-around-deployments": Bad(
        "[worker]\nconcurrency = 2\n" + deployment("a") + "[worker]\nconcurrency = 3\n",
        6,
        None,
        "invalid TOML",
    ),
    "array-line-like-a-header": Bad(  # cut there, the table would not parse: it is read whole
        deployment("a") + 'tags = [\n  ["x"]\n]\n' + deployment("b"), 4, "deployments.a.tags", "got list"
    ),
    "unknown-section": Bad(
        '[logging]\nlevel = "info"\n\n[wrker]\nconcurrency = 2\n', 4, "wrker", "did you mean 'worker'?"
    ),
    "unknown-key-worker": Bad(
        '[worker]\npools = ["default"]\nconcurency = 8\n',
        3,
        "worker.concurency",
        "unknown key (did you mean 'concurrency'?)",
    ),
    "unknown-key-deployment": Bad(
        deployment("a") + "\n" + deployment("b") + "retires = 3\n",
        8,
        "deployments.b.retires",
        "unknown key (did you mean 'retries'?)",
    ),
    "unknown-key-pool": Bad(
        '[[pools]]\nname = "p"\nconcurency_limit = 2\n',
        3,
        "pools.p.concurency_limit",
        "did you mean 'concurrency_limit'?",
    ),
    "string-for-int": Bad(
        '[worker]\nconcurrency = "8"\n',
        2,
        "worker.concurrency",
        "expected an integer from 1 to 10000, got the string '8'",
    ),
    "negative-int": Bad(
        '[database]\nurl = ""\npool_size = -3\n',
        3,
        "database.pool_size",
        "expected an integer from 1 to 1000, got -3",
    ),
    "negative-retries": Bad(DEPLOY + "retries = -1\n", 4, "deployments.a.retries", "from 0 to 1000, got -1"),
    "bool-for-int": Bad(
        "[scheduler]\nmax_scheduled_runs = true\n",
        2,
        "scheduler.max_scheduled_runs",
        "expected an integer from 1 to 100000, got bool",
    ),
    "string-for-bool": Bad(
        '[database]\nmigrate_on_start = "yes"\n', 2, "database.migrate_on_start", "expected true or false"
    ),
    "bad-duration": Bad(
        '[scheduler]\nhorizon = "10 minutes"\n',
        2,
        "scheduler.horizon",
        'expected a duration like "30s", "5m", "2h", "7d", got \'10 minutes\'',
    ),
    "nan-duration": Bad("[worker]\nheartbeat = nan\n", 2, "worker.heartbeat", "got nan"),
    "bool-for-duration": Bad(DEPLOY + "timeout = false\n", 4, "deployments.a.timeout", "got False"),
    "bool-for-limit": Bad(
        '[[pools]]\nname = "p"\nconcurrency_limit = false\n', 3, "pools.p.concurrency_limit", "got bool"
    ),
    "nan-number": Bad(
        DEPLOY + "retry_backoff = nan\n", 4, "deployments.a.retry_backoff", "from 1 to 100, got nan"
    ),
    "bad-deployment-duration": Bad(DEPLOY + 'timeout = "-5m"\n', 4, "deployments.a.timeout", "-5m"),
    "bad-enum": Bad(
        '[logging]\nlevel = "info"\nformat = "xml"\n',
        3,
        "logging.format",
        "expected one of 'auto', 'console', ",  # more formats may follow
    ),
    "deployment-without-name": Bad(
        "[[deployments]]\n" + CMD + "\n" + deployment("b"), 1, "deployments[0].name", "got nothing"
    ),
    "bad-name-characters": Bad(
        '[[deployments]]\nname = "my job"\n' + CMD,
        2,
        "deployments[0].name",
        "expected a name of letters, digits, '.', '_', '-', got 'my job'",
    ),
    "duplicate-deployment": Bad(
        deployment("a") + deployment("a"), 5, "deployments", "'a' is defined twice (first at "
    ),
    "duplicate-pool": Bad('[[pools]]\nname = "p"\n[[pools]]\nname = "p"\n', 4, "pools", "defined twice"),
    "missing-command": Bad('[[deployments]]\nname = "a"\n', 2, "deployments.a.command", "required"),
    "command-as-string": Bad(
        '[[deployments]]\nname = "a"\ncommand = "/usr/bin/backup --full"\n',
        3,
        "deployments.a.command",
        "expected an argv list like",
    ),
    "empty-command": Bad(
        '[[deployments]]\nname = "a"\ncommand = []\n', 3, "deployments.a.command", "non-empty argv list"
    ),
    "cron-field-count": Bad(
        DEPLOY + 'schedules = [{ cron = "* * *" }]\n',
        4,
        "deployments.a.schedules[0].cron",
        "expected 5 fields",
    ),
    "cron-bad-value": Bad(
        DEPLOY + 'schedules = [{ cron = "61 * * * *" }]\n', 4, "deployments.a.schedules[0].cron", "61"
    ),
    "cron-bad-value-second-entry": Bad(
        DEPLOY + 'schedules = [\n  { interval = "5m" },\n  { cron = "0 25 * * *" },\n]\n',
        4,
        "deployments.a.schedules[1].cron",
        "25",
    ),
    "cron-bad-weekday": Bad(
        DEPLOY + 'schedules = [{ cron = "0 0 * * 9" }]\n',
        4,
        "deployments.a.schedules[0].cron",
        "bad day-of-week '9'",
    ),
    "unknown-timezone": Bad(
        DEPLOY + 'schedules = [{ cron = "0 * * * *", timezone = "Mars/Olympus" }]\n',
        4,
        "deployments.a.schedules[0].timezone",
        "unknown time zone 'Mars/Olympus'",
    ),
    "two-schedule-kinds": Bad(
        DEPLOY + 'schedules = [{ cron = "0 * * * *", interval = "5m" }]\n',
        4,
        "deployments.a.schedules[0]: ",
        "expected exactly one of 'cron', 'interval', 'rrule' or 'at'",
    ),
    "no-schedule-kind": Bad(
        DEPLOY + 'schedules = [{ timezone = "UTC" }]\n',
        4,
        "deployments.a.schedules[0]: ",
        "expected exactly one of 'cron', 'interval', 'rrule' or 'at'",
    ),
    "unknown-schedule-key": Bad(
        DEPLOY + 'schedules = [{ interval = "5m", jiter = "1s" }]\n',
        4,
        "deployments.a.schedules[0].jiter",
        "unknown schedule key",
    ),
    "rrule-without-dtstart": Bad(
        DEPLOY + 'schedules = [{ rrule = "FREQ=DAILY" }]\n',
        4,
        "deployments.a.schedules[0].rrule",
        "needs a DTSTART",
    ),
    "bad-rrule": Bad(
        DEPLOY + 'schedules = [{ rrule = "FREQ=SOMETIMES", anchor = 2026-01-01T00:00:00 }]\n',
        4,
        "deployments.a.schedules[0].rrule",
        "not an RFC 5545 rule",
    ),
    "empty-rrule": Bad(  # every 120th minute from midnight: even hours only
        DEPLOY
        + 'schedules = [{ rrule = "FREQ=MINUTELY;INTERVAL=120;BYHOUR=3", anchor = 2026-01-01T00:00:00Z }]\n',
        4,
        "deployments.a.schedules[0].rrule",
        "matches no time: Invalid combination of interval and byhour resulting in empty rule.",
    ),
    "bad-jitter": Bad(
        DEPLOY + 'schedules = [{ interval = "5m", jitter = "a bit" }]\n',
        4,
        "deployments.a.schedules[0].jitter",
        "expected a duration",
    ),
    "bad-at": Bad(
        DEPLOY + 'schedules = [{ at = "next tuesday" }]\n',
        4,
        "deployments.a.schedules[0].at",
        "expected an ISO 8601 date-time",
    ),
    "interval-below-1s": Bad(
        DEPLOY + 'schedules = [{ interval = "500ms" }]\n',
        4,
        "deployments.a.schedules[0].interval",
        "from 1s to 3650d",
    ),
    "schedule-listed-twice": Bad(
        DEPLOY + 'schedules = [{ interval = "5m" }, { interval = "5m" }]\n',
        4,
        "deployments.a.schedules",
        "the same schedule is listed twice",
    ),
    "schedules-not-a-list": Bad(
        DEPLOY + 'schedules = "*/5 * * * *"\n', 4, "deployments.a.schedules", "expected a list of tables"
    ),
    "env-non-string": Bad(
        DEPLOY + "env = { PORT = 8080 }\n",
        4,
        "deployments.a.env",
        "expected string values, got int for 'PORT'",
    ),
    "container-bad-size": Bad(
        '[[deployments]]\nname = "a"\nimage = "i"\ncontainer = { pull = "never", memory = "lots" }\n',
        4,
        "deployments.a.container.memory",
        'expected a size like "512m" or "2g"',
    ),
    "container-unknown-key": Bad(
        '[[pools]]\nname = "p"\nimage = "i"\ncontainer = { netwrk = "none" }\n',
        4,
        "pools.p.container.netwrk",
        "did you mean 'network'?",
    ),
    "container-bad-pull": Bad(
        '[[deployments]]\nname = "a"\nimage = "i"\ncontainer = { pull = "sometimes" }\n',
        4,
        "deployments.a.container.pull",
        "expected one of 'missing', 'always', 'never'",
    ),
    "container-bad-volume": Bad(
        '[[deployments]]\nname = "a"\nimage = "i"\ncontainer = { volumes = ["/srv/data"] }\n',
        4,
        "deployments.a.container.volumes",
        "SOURCE:/PATH/IN/CONTAINER",
    ),
    "container-bad-gpus": Bad(
        '[[deployments]]\nname = "a"\nimage = "i"\ncontainer = { gpus = "some" }\n',
        4,
        "deployments.a.container.gpus",
        'expected "all", a count',
    ),
    "container-without-image": Bad(
        DEPLOY + 'container = { network = "none" }\n',
        4,
        "deployments.a.container",
        "only used with an image",
    ),
    "container-relative-working-dir": Bad(
        '[[deployments]]\nname = "a"\nimage = "i"\nworking_dir = "app"\n',
        4,
        "deployments.a.working_dir",
        "absolute path inside the container",
    ),
    "non-utf8": Bad(b'[worker]\nname = "caf\xe9"\n', 2, None, "not UTF-8"),
}


def check_one_line_error(result: Result, path: Path, line: int | None, key: str | None, words: str) -> None:
    """Exit 78 and a single `orchd: error: FILE[:LINE]: KEY...` line on stderr, no traceback."""
    assert result.exit_code == EX_CONFIG, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    message = result.stderr.removeprefix("orchd: error: ")
    assert message != result.stderr, result.stderr
    assert message.startswith(f"{path}:{line}: " if line else f"{path}: "), message
    if key:
        assert key in message
    assert words in message
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_config_is_refused_in_one_line(case: Bad, tmp_path: Path, state_dir: Path) -> None:
    path = tmp_path / "orchd.toml"
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
    else:
        path.write_text(case.text)
    result = cli(["config", "validate", "--config", str(path)], state_dir)
    check_one_line_error(result, path, case.line, case.key, case.words)


def test_bad_environment_through_the_cli(tmp_path: Path, state_dir: Path) -> None:
    path = write(tmp_path / "orchd.toml", "")
    result = cli(["config", "validate", "--config", str(path)], state_dir, ORCHD_LOGGING_FORMAT="xml")
    assert result.exit_code == EX_CONFIG
    assert result.stderr.startswith(
        "orchd: error: environment ORCHD_LOGGING_FORMAT: logging.format: expected one of 'auto', "
    )
    assert result.stderr.endswith(", got the string 'xml'\n")


def test_missing_explicit_file_through_the_cli(tmp_path: Path, state_dir: Path) -> None:
    path = tmp_path / "absent.toml"
    result = cli(["config", "validate", "--config", str(path)], state_dir)
    check_one_line_error(result, path, None, None, "config file not found")


def test_directory_as_config_path_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    assert error_of(tmp_path, env) == f"{tmp_path}: is a directory, expected a TOML file"


AS_ROOT = pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file despite chmod 000")


def test_directory_as_config_path_through_the_cli(tmp_path: Path, state_dir: Path) -> None:
    result = cli(["config", "validate", "--config", str(tmp_path)], state_dir)
    check_one_line_error(result, tmp_path, None, None, "is a directory")


@AS_ROOT
def test_unreadable_file_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path / "orchd.toml", "")
    path.chmod(0)
    assert error_of(path, env) == f"{path}: permission denied reading the config file"


@AS_ROOT
def test_unreadable_file_through_the_cli(tmp_path: Path, state_dir: Path) -> None:
    path = write(tmp_path / "orchd.toml", "")
    path.chmod(0)
    result = cli(["config", "validate", "--config", str(path)], state_dir)
    check_one_line_error(result, path, None, None, "permission denied")


def test_valid_config_through_the_cli(tmp_path: Path, state_dir: Path) -> None:
    path = write(tmp_path / "orchd.toml", deployment("a") + deployment("b") + '[[pools]]\nname = "p"\n')
    result = cli(["config", "validate", "--config", str(path)], state_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{path}: ok (2 deployments, 1 pool)\n"


# --- the shipped files ---------------------------------------------------------------------------


def uncomment_examples(text: str) -> str:
    """Strip "# " from the commented [[pools]] / [[deployments]] blocks (up to the next blank line)."""
    lines, inside = [], False
    for line in text.splitlines():
        inside = line in ("# [[pools]]", "# [[deployments]]") or (inside and line.startswith("# "))
        lines.append(line.removeprefix("# ") if inside else line)
    return "\n".join(lines) + "\n"


def test_shipped_config_is_the_rendered_template() -> None:
    assert SHIPPED.read_text() == render(), f"{SHIPPED} is out of date; regenerate it with: {REGENERATE}"


def test_shipped_config_validates(env: dict[str, str], state_dir: Path) -> None:
    config = load_config(SHIPPED, env=env)
    assert config.deployments == ()
    assert config.database.url == f"sqlite:///{state_dir}/orchd.db"
    assert set(config.sources.values()) != {"default"}  # the keys really are read from the file


def test_shipped_examples_validate_when_uncommented(tmp_path: Path, env: dict[str, str]) -> None:
    text = uncomment_examples(SHIPPED.read_text())
    assert "\n[[pools]]\n" in text and "\n[[deployments]]\n" in text
    config = load_config(write(tmp_path / "orchd.toml", text), env=env)
    assert [(p.name, p.concurrency_limit, p.paused) for p in config.pools] == [("default", None, False)]
    backup, report, publish = config.deployments
    assert publish.triggers == [TriggerSpec("refresh-report", ("COMPLETED",))]
    assert (report.name, report.entrypoint, report.parameters) == (
        "refresh-report",
        "reports.jobs:refresh",
        {"days": 7},
    )
    assert (backup.max_active_runs, backup.overlap) == (1, "skip")
    assert backup.name == "nightly-backup"
    assert backup.command == ["/usr/local/bin/backup", "--full"]
    assert backup.timeout == 7200.0
    assert backup.retry_delay == 60.0
    assert [s.kind for s in backup.schedules] == ["cron", "interval", "at"]
    assert backup.schedules[2].parameters == {"target": "/srv/xmas"}
    assert backup.schedules[2].expr == "2026-12-24T17:00:00+00:00"


def test_quickstart_validates(env: dict[str, str]) -> None:
    config = load_config(QUICKSTART, env=env)
    assert config.database.url == f"sqlite:///{QUICKSTART.parent.parent.parent / '.state' / 'orchd.db'}"
    assert [d.name for d in config.deployments] == ["hello", "disk-report"]
    assert all(d.schedules for d in config.deployments)


def test_shipped_files_validate_through_the_cli(state_dir: Path) -> None:
    for path in (SHIPPED, QUICKSTART):
        result = cli(["config", "validate", "--config", str(path)], state_dir)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"{path}: ok (")


# --- orchd config show ---------------------------------------------------------------------------


def test_show_masks_the_password_and_names_sources(tmp_path: Path, state_dir: Path) -> None:
    path = write(tmp_path / "orchd.toml", '[database]\nurl = "postgresql://u:secret@h/db"\n')
    result = cli(
        ["config", "show", "--sources", "--config", str(path)], state_dir, ORCHD_WORKER_CONCURRENCY="8"
    )
    assert result.exit_code == 0, result.output
    assert "secret" not in result.output
    assert f'url = "postgresql://u:***@h/db"  # {path}:2\n' in result.stdout
    assert "concurrency = 8  # environment ORCHD_WORKER_CONCURRENCY\n" in result.stdout
    assert 'heartbeat = "10s"  # default\n' in result.stdout


def test_show_masks_a_password_from_the_environment_and_in_json(tmp_path: Path, state_dir: Path) -> None:
    url = "postgresql+psycopg://u:secret@h:5433/db"
    masked = "postgresql+psycopg://u:***@h:5433/db"
    for args, shown in (
        (["--sources"], f'url = "{masked}"  # environment ORCHD_DATABASE_URL\n'),
        (["--json"], f'"url": "{masked}"'),
    ):
        result = cli(["config", "show", *args, "--config", "/dev/null"], state_dir, ORCHD_DATABASE_URL=url)
        assert result.exit_code == 0, result.output
        assert "secret" not in result.output
        assert shown in result.stdout


def test_show_masks_a_password_read_from_url_file(tmp_path: Path, state_dir: Path) -> None:
    secret = write(tmp_path / "db-url", "postgresql://u:secret@h/db\n")
    path = write(tmp_path / "orchd.toml", f'[database]\nurl_file = "{secret}"\n')
    result = cli(["config", "show", "--sources", "--config", str(path)], state_dir)
    assert result.exit_code == 0, result.output
    assert "secret" not in result.output
    assert f'url = "postgresql://u:***@h/db"  # file {secret}\n' in result.stdout


def test_show_prints_toml_in_the_files_own_units_that_loads_back_the_same(
    tmp_path: Path, state_dir: Path, env: dict[str, str]
) -> None:
    """What `config show` prints can be pasted into a file: durations as "1m30s", not 90.0;
    booleans and strings as TOML writes them; the empty misfire grace as ""."""
    path = write(
        tmp_path / "orchd.toml",
        '[scheduler]\nhorizon = "1h30m"\nmisfire_grace = ""\n'
        '[worker]\nheartbeat = "1500ms"\npools = ["a", "b"]\n',
    )
    result = cli(["config", "show", "--sources", "--config", str(path)], state_dir)
    assert result.exit_code == 0, result.output
    for line in (
        f'horizon = "1h30m"  # {path}:2',
        f'misfire_grace = ""  # {path}:3',
        f'heartbeat = "1s500ms"  # {path}:5',
        f'pools = [\n    "a",\n    "b",\n]  # {path}:6',
        'retention = "30d"  # default',
        "migrate_on_start = true  # default",
        'url_file = ""  # default',
    ):
        assert f"\n{line}\n" in result.stdout, line
    pasted = write(tmp_path / "pasted.toml", result.stdout)
    again, first = load_config(pasted, env=env), load_config(path, env=env)
    for section in SECTIONS:
        assert getattr(again, section) == getattr(first, section), section


def test_a_pool_gives_its_deployments_image_and_container_defaults(
    tmp_path: Path, env: dict[str, str]
) -> None:
    text = """
[[pools]]
name = "boxes"
image = "localhost/base:1"
container = { pull = "never", network = "none", memory = "1g" }

[[deployments]]
name = "inherits"
pool = "boxes"

[[deployments]]
name = "overrides"
pool = "boxes"
image = "localhost/etl:2"
command = ["etl"]
container = { memory = "2g", volumes = ["/srv:/srv:ro"] }

[[deployments]]
name = "process"
command = ["true"]
"""
    config = load_config(write(tmp_path / "orchd.toml", text), env=env)
    inherits, overrides, process = config.deployments
    assert (inherits.image, inherits.command) == ("localhost/base:1", [])
    assert inherits.container == {"pull": "never", "network": "none", "memory": "1g"}
    assert overrides.image == "localhost/etl:2"
    assert overrides.container == {
        "pull": "never",
        "network": "none",
        "memory": "2g",
        "volumes": ["/srv:/srv:ro"],
    }
    assert (process.image, process.container) == ("", {})
