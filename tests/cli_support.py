"""Helpers of the CLI tests: `orchd` in-process against a test database, and database snapshots."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from sqlalchemy import select

from orchd.cli import main
from orchd.config import Config, load_config
from orchd.db.schema import metadata
from orchd.db.store import Store
from tests import helpers

#: The deployments most CLI tests use.
DEPLOYMENTS = """
[scheduler]
backfill_limit = 50

[[deployments]]
name = "hello"
command = ["sh", "-c", "echo hello; echo oops >&2"]
parameters = { greeting = "hi", days = 1 }
schedules = [{ interval = "1h" }]

[[deployments]]
name = "minutely"
command = ["true"]
retries = 1
schedules = [{ interval = "1m" }, { cron = "30 2 * * *", timezone = "Europe/Berlin" }]

[[deployments]]
name = "fail"
command = ["sh", "-c", "echo failing; exit 3"]

[[pools]]
name = "default"
"""


#: The header of the pools table (`orchd pool ls`, `orchd status`), split into words.
POOL_HEADER = ["POOL", "STATUS", "LIMIT", "WORKERS", "SLOTS", "ACTIVE", "DUE", "OLDEST", "DUE", "UPCOMING"]


def clean_env(state_dir: Path, **env: str) -> dict[str, str | None]:
    """The environment of an in-process `orchd`: none of the machine's ORCHD_* or systemd variables."""
    inherited = ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "NO_COLOR", "ORCHD_DEBUG")
    cleared: dict[str, str | None] = {k: None for k in os.environ if k.startswith("ORCHD_") or k in inherited}
    return {**cleared, "ORCHD_STATE_DIR": str(state_dir), **env}


@dataclass
class Orchd:
    """`orchd ARGS --config PATH` in-process, for one test database and config file."""

    path: Path
    state_dir: Path

    def __call__(self, *args: str, input: str | None = None, **env: str) -> Result:
        return CliRunner().invoke(
            main, [*args, "--config", str(self.path)], input=input, env=clean_env(self.state_dir, **env)
        )

    def config(self) -> Config:
        return load_config(self.path, env={"ORCHD_STATE_DIR": str(self.state_dir)})


def write_config(path: Path, db_url: str, body: str = DEPLOYMENTS) -> Path:
    """tests.helpers.write_config, with the CLI tests' deployments by default."""
    return helpers.write_config(path, db_url, body)


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every orchd table, to show a failed command changed nothing."""
    with store.read() as conn:
        return {
            table.name: sorted((tuple(row) for row in conn.execute(select(table))), key=repr)
            for table in metadata.sorted_tables
        }


def one_line_error(result: Result, code: int, words: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stderr.startswith("orchd: error: "), result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr, result.stderr
    assert result.stdout == "", result.stdout


def now() -> datetime:
    return datetime.now(UTC)
