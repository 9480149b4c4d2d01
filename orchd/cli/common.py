"""What every command shares: --config and --json, loading the config and the database, and
turning orchd's and the database's errors into one line on stderr (orchd.cli.oneline)."""

from __future__ import annotations

import atexit
import functools
import getpass
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from orchd.cli.oneline import debug, fail
from orchd.config import Config, load_config
from orchd.db import migrate
from orchd.db.engine import check_sqlite_file, make_engine, parse_url, ping
from orchd.db.store import Store
from orchd.errors import ConfigError, OrchdError

F = TypeVar("F", bound=Callable[..., Any])

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, readable=False),  # the loader says what is wrong, with exit 78
    default=None,
    help="Config file (default: $ORCHD_CONFIG or /etc/orchd/orchd.toml).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts (see README).")


def common_options(func: F) -> F:
    """What every command reading the database takes: --config, --json, and one-line errors."""
    return config_option(json_option(friendly(func)))


def friendly(func: F) -> F:
    """Turn orchd's errors into one line on stderr and an exit status; ORCHD_DEBUG=1 adds the traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OrchdError as exc:
            debug()
            fail(str(exc), exc.exit_code)
        except OSError as exc:  # a file orchd was told to use cannot be read or written
            debug()
            fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))

    return wrapper  # type: ignore[return-value]


def actor() -> str:
    """Who the run history says acted: the CLI and the person running it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid {os.getuid()}"


def load(config_path: Path | None) -> Config:
    try:
        return load_config(config_path)
    except PermissionError as exc:  # a directory on the way that may not be searched
        raise ConfigError(f"{exc.filename}: permission denied reading the config file") from None


def open_store(config: Config, *, schema: bool = True, create: bool = False) -> Store:
    """A Store for a short command.  The database must answer now (no waiting); with ``schema`` its
    schema must be current.  A missing SQLite file is an error unless ``create``: a typo in a path
    must not leave an empty database behind."""
    check_sqlite_file(parse_url(config.database.url), create=create)
    engine = make_engine(config.database, pool_size=1)
    atexit.register(engine.dispose)  # a server sees a goodbye, not a dropped connection
    ping(engine)
    if schema:
        migrate.ensure_current(engine)
    return Store(engine, actor())
