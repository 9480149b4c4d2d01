"""``orchd db ...``: the database schema: upgrade it, check it, wipe it."""

from __future__ import annotations

from pathlib import Path

import click

from orchd.cli.common import (
    common_options,
    load,
    open_store,
)
from orchd.cli.oneline import usage_error
from orchd.cli.output import print_json
from orchd.db import migrate
from orchd.db.admin import wipe
from orchd.db.engine import describe, mask, ping
from orchd.errors import DatabaseMissing


@click.group("db")
def db_group() -> None:
    """Manage the database schema.

    \b
    Example:
      orchd db upgrade
      orchd db status
    """


@db_group.command("upgrade")
@common_options
def db_upgrade(config_path: Path | None, as_json: bool) -> None:
    """Apply pending schema migrations, creating the database's tables (or SQLite file) if need be.

    Safe while daemons run.

    \b
    Example:
      orchd db upgrade --config /etc/orchd/orchd.toml
    """
    store = open_store(load(config_path), schema=False, create=True)
    before = migrate.current_revision(store.engine)
    migrate.upgrade(store.engine)
    after = migrate.current_revision(store.engine)
    url = mask(store.engine.url)
    if as_json:
        print_json({"url": url, "from": before, "to": after})
    elif before == after:
        click.echo(f"{url}: schema already at {after}")
    else:
        click.echo(f"{url}: schema upgraded {before or 'empty'} -> {after}")


@db_group.command("status")
@common_options
def db_status(config_path: Path | None, as_json: bool) -> None:
    """Database URL (masked), server version and schema revision; exit 1 when not current.

    \b
    Example:
      orchd db status --json
    """
    config = load(config_path)
    head = migrate.head_revision()
    try:
        store = open_store(config, schema=False)
    except DatabaseMissing:
        current, server, url = None, "none (no file yet)", mask(config.database.url)
    else:
        current, server, url = (
            migrate.current_revision(store.engine),
            ping(store.engine),
            mask(store.engine.url),
        )
    info = {"url": url, "server": server, "revision": current, "head": head, "current": current == head}
    if as_json:
        print_json(info)
    else:
        state = "up to date" if current == head else "needs `orchd db upgrade`"
        click.echo(f"{url}\n  server:   {server}\n  schema:   {current or 'empty'} ({state})")
    if current != head:
        raise SystemExit(1)


@db_group.command("reset")
@click.option("--yes", is_flag=True, help="Really wipe the database.")
@common_options
def db_reset(yes: bool, config_path: Path | None, as_json: bool) -> None:
    """Delete everything orchd stored (runs, history, output, deployments, pools, workers) and
    re-create the empty schema.  Stop the daemons first.

    \b
    Example:
      orchd db reset --yes --config etc/orchd/quickstart.toml
    """
    store = open_store(load(config_path), schema=False)
    where = describe(store.engine.url)
    if not yes:
        usage_error(
            f"`orchd db reset` deletes every run, deployment and worker in {where}: add --yes to do it"
        )
    wipe(store.engine)
    revision = migrate.current_revision(store.engine)
    if as_json:
        print_json({"database": where, "revision": revision})
    else:
        click.echo(f"{where}: wiped; schema re-created at {revision}")
