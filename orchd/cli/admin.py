"""``orchd config ...`` and ``orchd db ...``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from orchd.cli.common import config_option, friendly, json_option, load, open_store, print_json
from orchd.db import migrate
from orchd.db.engine import mask, ping


@click.group("config")
def config_group() -> None:
    """Check and show the configuration.

    \b
    Example:
      orchd config validate --config /etc/orchd/orchd.toml
    """


@config_group.command("validate")
@config_option
@friendly
def config_validate(config_path: Path | None) -> None:
    """Check the config file and its deployments.d drop-ins; exit 78 on the first error."""
    config = load(config_path)
    where = config.path or "(no file: defaults)"
    click.echo(f"{where}: ok ({len(config.deployments)} deployments, {len(config.pools)} pools)")


@config_group.command("show")
@config_option
@json_option
@click.option("--sources", is_flag=True, help="Say where each value came from.")
@friendly
def config_show(config_path: Path | None, as_json: bool, sources: bool) -> None:
    """Print the effective configuration (secrets masked)."""
    config = load(config_path)
    sections: dict[str, Any] = {}
    for name in ("database", "scheduler", "worker", "logging"):
        values = dataclasses.asdict(getattr(config, name))
        if name == "database":
            values["url"] = mask(values["url"])
        sections[name] = values
    if as_json:
        print_json(
            {
                **sections,
                "deployments": [d.name for d in config.deployments],
                "pools": [p.name for p in config.pools],
            }
        )
        return
    for name, values in sections.items():
        click.echo(f"[{name}]")
        for key, value in values.items():
            origin = f"  # {config.sources.get(f'{name}.{key}', 'default')}" if sources else ""
            click.echo(f"{key} = {value!r}{origin}")
        click.echo()
    click.echo(
        f"# {len(config.deployments)} deployments: {', '.join(d.name for d in config.deployments) or '-'}"
    )


@click.group("db")
def db_group() -> None:
    """Manage the database schema.

    \b
    Example:
      orchd db upgrade
      orchd db status
    """


@db_group.command("upgrade")
@config_option
@friendly
def db_upgrade(config_path: Path | None) -> None:
    """Apply pending schema migrations (safe to run while daemons are up)."""
    store = open_store(load(config_path))
    before = migrate.current_revision(store.engine)
    migrate.upgrade(store.engine)
    after = migrate.current_revision(store.engine)
    if before == after:
        click.echo(f"{mask(store.engine.url)}: schema already at {after}")
    else:
        click.echo(f"{mask(store.engine.url)}: schema upgraded {before or 'empty'} -> {after}")


@db_group.command("status")
@config_option
@json_option
@friendly
def db_status(config_path: Path | None, as_json: bool) -> None:
    """Database URL (masked), server version and schema revision; exit 1 when not current."""
    store = open_store(load(config_path))
    current, head = migrate.current_revision(store.engine), migrate.head_revision()
    info = {
        "url": mask(store.engine.url),
        "server": ping(store.engine),
        "revision": current,
        "head": head,
        "current": current == head,
    }
    if as_json:
        print_json(info)
    else:
        state = "up to date" if current == head else "needs `orchd db upgrade`"
        click.echo(f"{info['url']}\n  server:   {info['server']}\n  schema:   {current or 'empty'} ({state})")
    if current != head:
        raise SystemExit(1)
