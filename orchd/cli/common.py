"""What every command shares: --config, loading it, one-line errors with the right exit status,
and the formatting of times and JSON."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.exc import OperationalError

from orchd.config import Config, load_config
from orchd.db.engine import describe, make_engine
from orchd.db.store import Store
from orchd.errors import DatabaseUnavailable, OrchdError

F = TypeVar("F", bound=Callable[..., Any])

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Config file (default: $ORCHD_CONFIG or /etc/orchd/orchd.toml).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def fail(message: str, code: int = 1) -> None:
    click.echo(f"orchd: error: {message}", err=True)
    sys.exit(code)


def friendly(func: F) -> F:
    """Turn orchd's errors into one line on stderr and an exit status; ORCHD_DEBUG=1 adds the traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OrchdError as exc:
            if os.environ.get("ORCHD_DEBUG"):
                traceback.print_exc()
            fail(str(exc), exc.exit_code)
        except OperationalError as exc:
            if os.environ.get("ORCHD_DEBUG"):
                traceback.print_exc()
            lines = [ln for ln in str(exc.orig).splitlines() if ln.strip()]
            fail(f"database error: {lines[-1].strip() if lines else exc}")

    return wrapper  # type: ignore[return-value]


def load(config_path: Path | None) -> Config:
    return load_config(config_path)


def open_store(config: Config, actor: str = "cli") -> Store:
    """A Store for a short CLI command; the database must answer now (no waiting)."""
    engine = make_engine(config.database, pooled=False)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        lines = [ln for ln in str(exc.orig).splitlines() if ln.strip()]
        raise DatabaseUnavailable(f"cannot reach {describe(engine.url)}: {lines[-1].strip()}") from None
    return Store(engine, actor)


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def relative(value: datetime | None, now: datetime | None = None) -> str:
    """'12s ago' / 'in 4m' next to a local time, for tables."""
    if value is None:
        return "-"
    now = now or datetime.now(UTC)
    delta = (value - now).total_seconds()
    size = abs(delta)
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if size >= secs or unit == "s":
            amount = f"{int(size // secs)}{unit}"
            break
    local = value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return f"{local} ({'in ' + amount if delta > 0 else amount + ' ago'})"


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
