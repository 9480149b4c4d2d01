"""`orchd pool ...`, `orchd worker ls`, `orchd config set|init`, `orchd db reset`, completion, --version."""

from __future__ import annotations

import json
import re
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchd import __version__
from orchd.cli import main
from orchd.config import load_config
from orchd.config.template import render
from orchd.db import migrate
from orchd.db.store import Store
from orchd.errors import EX_CONFIG
from tests.cli_support import POOL_HEADER, Orchd, clean_env, now, one_line_error, write_config
from tests.helpers import states_count

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")


@pytest.fixture
def orchd(tmp_path: Path, db_url: str, store: Store) -> Orchd:
    cli = Orchd(write_config(tmp_path / "orchd.toml", db_url), tmp_path / "state")
    store.sync(cli.config(), now())
    return cli


def pools(orchd: Orchd) -> dict[str, dict[str, object]]:
    result = orchd("pool", "ls", "--json")
    assert result.exit_code == 0, result.output
    return {p["name"]: p for p in json.loads(result.stdout)}


def test_pools_and_workers(orchd: Orchd, store: Store) -> None:
    at = now()
    store.register_worker("w1", "host1", 101, ["default", "gpu"], 4, at)
    store.register_worker("w2", "host2", 102, ["gpu"], 2, at - timedelta(hours=1))  # silent
    store.register_worker("w3", "host3", 103, ["default"], 1, at)
    store.worker_stopped("w3", at)
    store.create_run("hello", at - timedelta(minutes=2))
    created = orchd("pool", "create", "batch", "--limit", "3")
    assert (created.exit_code, created.stdout) == (0, "pool batch created\n")
    listing = pools(orchd)
    assert set(listing) == {"batch", "default", "gpu"}
    assert listing["default"] == {
        "name": "default",
        "paused": False,
        "concurrency_limit": None,
        "workers": 1,
        "slots": 4,
        "active": 0,
        "due": 1,
        "upcoming": 0,
        "oldest_due_at": listing["default"]["oldest_due_at"],
    }
    assert ISO.match(str(listing["default"]["oldest_due_at"]))
    assert (listing["batch"]["concurrency_limit"], listing["gpu"]["workers"]) == (3, 1)
    assert json.loads(orchd("pool", "pause", "batch", "--json").stdout)["paused"] is True
    assert orchd("pool", "resume", "batch").stdout == "pool batch resumed\n"
    assert orchd("pool", "set-limit", "batch", "0").stdout == "pool batch: no limit\n"
    assert pools(orchd)["batch"]["concurrency_limit"] is None
    # a pool of the config: the change holds until the config is applied again, and it says so
    paused = orchd("pool", "pause", "default")
    assert (
        paused.exit_code == 0
        and "sets paused = 0; the next apply of the config restores that" in paused.stderr
    )
    assert store.claim("w1", ["default"], 5, now(), now() + timedelta(minutes=1)) == []
    assert orchd("deployment", "apply").exit_code == 0
    assert pools(orchd)["default"]["paused"] is False
    table = orchd("pool", "ls").stdout.splitlines()
    assert table[0].split() == POOL_HEADER
    workers = json.loads(orchd("worker", "ls", "--json").stdout)
    assert [(w["name"], w["status"]) for w in workers] == [
        ("w1", "online"),
        ("w2", "offline"),
        ("w3", "stopped"),
    ]
    for w in workers:
        assert {"name", "host", "pid", "pools", "last_heartbeat", "status"} <= set(w)
        assert isinstance(w["pid"], int) and isinstance(w["pools"], list) and ISO.match(w["last_heartbeat"])
    assert workers[0]["pools"] == ["default", "gpu"] and workers[0]["host"] == "host1"
    text = orchd("worker", "ls").stdout.splitlines()
    assert text[0].split() == ["NAME", "HOST", "PID", "POOLS", "STATUS", "RUNNING", "HEARTBEAT", "VERSION"]
    assert text[1].split()[:5] == ["w1", "host1", "101", "default,gpu", "online"]


def test_db_reset_wipes_and_recreates(orchd: Orchd, store: Store) -> None:
    store.create_run("hello", now())
    result = orchd("db", "reset", "--yes")
    assert result.exit_code == 0, result.output
    assert "wiped; schema re-created at " in result.stdout
    assert states_count(store) == {}
    assert migrate.current_revision(store.engine) == migrate.head_revision()
    assert orchd("run", "ls", "--json").stdout.strip() == "[]"
    again = json.loads(orchd("db", "reset", "--yes", "--json").stdout)
    assert again["revision"] == migrate.head_revision() and again["database"].startswith(
        ("SQLite", "PostgreSQL")
    )


# --- the config file -----------------------------------------------------------------------------


def test_config_init_writes_the_documented_file_that_validates(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "orchd.toml"
    result = CliRunner().invoke(main, ["config", "init", str(path)], env=clean_env(tmp_path))
    assert result.exit_code == 0, result.output
    assert path.read_text() == render()
    assert load_config(path, env={"ORCHD_STATE_DIR": str(tmp_path)}).deployments == ()
    path.write_text("# mine\n")
    forced = CliRunner().invoke(
        main, ["config", "init", "--config", str(path), "--force"], env=clean_env(tmp_path)
    )
    assert forced.exit_code == 0 and path.read_text() == render()
    env = clean_env(tmp_path)
    created = CliRunner().invoke(main, ["config", "init", str(tmp_path / "b.toml"), "--json"], env=env)
    assert json.loads(created.stdout) == {"path": str(tmp_path / "b.toml")}
    checked = CliRunner().invoke(main, ["config", "validate", "--config", str(path), "--json"], env=env)
    assert json.loads(checked.stdout) == {"path": str(path), "deployments": 0, "pools": 0, "warnings": []}


def test_config_set_keeps_comments_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "orchd.toml"
    CliRunner().invoke(main, ["config", "init", str(path)], env=clean_env(tmp_path))
    orchd = Orchd(path, tmp_path / "state")
    before = path.read_text()
    for key, value, expected in [
        ("worker.concurrency", "8", 8),
        ("scheduler.misfire_grace", "30m", "30m"),
        ("worker.pools", "a,b", ["a", "b"]),
        ("worker.pools", '["c"]', ["c"]),
        ("metrics.listen", "127.0.0.1:9464", "127.0.0.1:9464"),
        ("database.migrate_on_start", "false", False),
        ("worker.name", "42", "42"),
    ]:
        result = orchd("config", "set", key, value)
        assert result.exit_code == 0, result.output
        section, name = key.split(".")
        assert tomllib.loads(path.read_text())[section][name] == expected
    after = path.read_text()
    assert [ln for ln in before.splitlines() if ln.startswith("#")] == [
        ln for ln in after.splitlines() if ln.startswith("#")
    ]  # every comment kept
    assert after.count("\n[") == before.count("\n[")  # no table added: each key set where it was
    config = load_config(path, env={"ORCHD_STATE_DIR": str(tmp_path)})
    assert (config.worker.concurrency, config.scheduler.misfire_grace, config.metrics.listen) == (
        8,
        1800.0,
        "127.0.0.1:9464",
    )
    shown = json.loads(
        orchd("config", "set", "database.url", "postgresql://u:secret@db/orchd", "--json").stdout
    )
    assert shown == {"path": str(path), "key": "database.url", "value": "postgresql://u:***@db/orchd"}
    assert "secret" in path.read_text()


def test_config_set_adds_a_missing_table_and_warns_about_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "orchd.toml"
    path.write_text('# my file\n[[deployments]]\nname = "x"\ncommand = ["true"]\n')
    orchd = Orchd(path, tmp_path / "state")
    result = orchd("config", "set", "worker.heartbeat", "5s", ORCHD_WORKER_HEARTBEAT="7s")
    assert result.exit_code == 0, result.output
    assert result.stdout == f'{path}: worker.heartbeat = "5s"\n'
    assert "note: ORCHD_WORKER_HEARTBEAT in the environment overrides this value" in result.stderr
    assert path.read_text().startswith('# my file\n[[deployments]]\nname = "x"\n')
    data = tomllib.loads(path.read_text())
    assert data["worker"] == {"heartbeat": "5s"} and data["deployments"][0]["name"] == "x"


def test_config_set_rewrites_what_it_cannot_edit_in_place(tmp_path: Path) -> None:
    path = tmp_path / "orchd.toml"
    path.write_text("# gone\nworker = { concurrency = 2 }\n")
    result = Orchd(path, tmp_path / "state")("config", "set", "worker.concurrency", "3")
    assert result.exit_code == 0, result.output
    assert "its comments could not be kept" in result.stderr
    assert tomllib.loads(path.read_text()) == {"worker": {"concurrency": 3}}


def test_config_set_takes_a_negative_value_and_refuses_a_bad_one_as_a_config_error(tmp_path: Path) -> None:
    """`config set worker.concurrency -1` needed `--`, and a bad value exited 2 where README says 78."""
    path = tmp_path / "orchd.toml"
    path.write_text("[worker]\nconcurrency = 2\n")
    orchd = Orchd(path, tmp_path / "state")
    for value, words in (("-1", "got -1"), ("abc", "got the string 'abc'")):
        result = orchd("config", "set", "worker.concurrency", value)
        message = f"orchd: error: worker.concurrency: expected an integer from 1 to 10000, {words}"
        one_line_error(result, EX_CONFIG, message)
    assert path.read_text() == "[worker]\nconcurrency = 2\n"
    one_line_error(orchd("config", "set", "worker.concurency", "3"), 2, "did you mean 'worker.concurrency'?")


def test_config_set_refuses_a_value_that_breaks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "orchd.toml"
    path.write_text("[worker]\npools = ['a']\n")
    (tmp_path / "deployments.d").mkdir()
    (tmp_path / "deployments.d" / "x.toml").write_text('[[deployments]]\nname = "x"\ncommand = ["true"]\n')
    orchd = Orchd(path, tmp_path / "state")
    missing = tmp_path / "no-such-file"
    result = orchd("config", "set", "database.url_file", str(missing))
    one_line_error(result, EX_CONFIG, f"database.url_file: cannot read {missing}: No such file")
    assert result.stderr.startswith(f"orchd: error: {path}:")
    assert path.read_text() == "[worker]\npools = ['a']\n"
    assert orchd("config", "set", "worker.concurrency", "2").exit_code == 0  # validated with its drop-in


def test_version_help_and_completion(tmp_path: Path) -> None:
    runner = CliRunner()
    version = runner.invoke(main, ["--version"])
    assert (version.exit_code, version.stdout) == (0, f"orchd, version {__version__}\n")
    usage = runner.invoke(main, ["run", "create", "-h"]).stdout
    assert "Usage: orchd run create [OPTIONS] [DEPLOYMENT]" in usage
    script = runner.invoke(main, [], env={"_ORCHD_COMPLETE": "bash_source"}, prog_name="orchd")
    assert script.exit_code == 0 and "_orchd_completion()" in script.stdout
    path = write_config(tmp_path / "orchd.toml", f"sqlite:///{tmp_path / 'none.db'}")
    words = runner.invoke(
        main,
        [],
        prog_name="orchd",
        env={
            **clean_env(tmp_path, ORCHD_CONFIG=str(path)),
            "_ORCHD_COMPLETE": "bash_complete",
            "COMP_WORDS": "orchd run create mi",
            "COMP_CWORD": "3",
        },
    )
    assert words.stdout.split() == ["plain,minutely"]
