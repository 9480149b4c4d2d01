"""`orchd --version` and `--help` import no command and no database library; a database command
imports what it needs and not the daemons' (metrics, logging, migrations, the other driver).
Times are measured by `make bench` (the cli step); here only what is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import event
from sqlalchemy.pool import Pool

from orchd.cli import COMMANDS, LazyGroup, main
from tests import cli_reference
from tests.cli_support import clean_env, write_config

HEAVY = ("sqlalchemy", "alembic", "structlog", "prometheus_client", "psycopg", "apscheduler", "orchd.db")
DAEMONS_ONLY = ("alembic", "structlog", "prometheus_client", "orchd.worker", "orchd.scheduler")
#: The driver a database command must not load: the other backend's (SQLite's costs a PostgreSQL
#: process 0.8 MB of RSS; psycopg costs a SQLite command 50 ms).
OTHER_DRIVER = {"sqlite": ("psycopg",), "postgresql": ("sqlite3", "_sqlite3")}


def imported_by(args: list[str], env: dict[str, str | None] | None = None) -> set[str]:
    """The modules a fresh `orchd ARGS` process has imported when it exits."""
    script = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))\n"
        "from orchd.cli import main\n"
        f"main({args!r})\n"
    )
    environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environ, timeout=60
    )
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


def loaded(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.startswith(prefixes))


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_version_and_help_import_no_command(args: list[str]) -> None:
    modules = imported_by(args)
    assert loaded(modules, HEAVY) == []
    assert loaded(modules, ("orchd.cli.",)) == ["orchd.cli.oneline"]


def test_a_database_command_imports_no_daemon_library(backend: str, db_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "orchd.toml", db_url)
    modules = imported_by(["run", "ls", "--config", str(config)], clean_env(tmp_path))
    assert "sqlalchemy.engine" in modules and "orchd.cli.runs" in modules  # it did its work
    assert loaded(modules, DAEMONS_ONLY + OTHER_DRIVER[backend]) == []


def test_the_help_lists_each_command_with_its_own_first_line() -> None:
    """COMMANDS says what each command's docstring says, so `orchd --help` need not import it."""
    assert isinstance(main, LazyGroup)
    commands = cli_reference.subcommands(main)
    assert sorted(commands) == sorted(COMMANDS)
    for name, command in commands.items():
        assert COMMANDS[name][1] == command.get_short_help_str(limit=1000), name
    assert main.get_command(click.Context(main), "nosuch") is None


def test_a_database_command_opens_one_connection(db_url: str, tmp_path: Path) -> None:
    """Its ping, schema check and queries share one connection: on PostgreSQL each new one is a
    server process started (several ms of every command), and one was opened per statement."""
    config = write_config(tmp_path / "orchd.toml", db_url)
    opened: list[object] = []

    def connected(dbapi_connection: object, record: object) -> None:
        opened.append(dbapi_connection)

    event.listen(Pool, "connect", connected)
    try:
        result = CliRunner().invoke(main, ["run", "ls", "--config", str(config)], env=clean_env(tmp_path))
    finally:
        event.remove(Pool, "connect", connected)
    assert result.exit_code == 0, result.output
    assert len(opened) == 1
