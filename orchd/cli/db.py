"""``orchd db ...``: the database schema (upgrade it, check it, wipe it) and the roles that use it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from orchd.cli.common import (
    common_options,
    load,
    open_store,
)
from orchd.cli.oneline import usage_error
from orchd.cli.output import print_json
from orchd.db import migrate, roles
from orchd.db.engine import describe, mask, ping
from orchd.db.migrate import wipe
from orchd.errors import DatabaseMissing, OrchdError
from orchd.scheduler.daemon import SEEN_EVERY


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
@click.option("--force", is_flag=True, help="Even while daemons use it (they then re-register and re-apply).")
@common_options
def db_reset(yes: bool, force: bool, config_path: Path | None, as_json: bool) -> None:
    """Delete everything orchd stored (runs, history, output, deployments, pools, workers) and
    re-create the empty schema.  Refused while daemons use the database (stop them first, or
    --force: a worker then registers again at its next heartbeat, the scheduler re-applies the
    config within half a minute).

    \b
    Example:
      orchd db reset --yes --config etc/orchd/quickstart.toml
    """
    config = load(config_path)
    store = open_store(config, schema=False)
    where = describe(store.engine.url)
    if not yes:
        usage_error(
            f"`orchd db reset` deletes every run, deployment and worker in {where}: add --yes to do it"
        )
    if not force and migrate.current_revision(store.engine) is not None:
        alive = store.daemons_alive(
            datetime.now(UTC),
            worker_within=config.scheduler.worker_timeout,
            scheduler_within=3 * SEEN_EVERY,
        )
        if alive:
            raise OrchdError(
                f"{where} is in use by {', '.join(alive)}: stop them first "
                "(or add --force: they re-register and re-apply the config)"
            )
    wipe(store.engine)
    revision = migrate.current_revision(store.engine)
    if as_json:
        print_json({"database": where, "revision": revision})
    else:
        click.echo(f"{where}: wiped; schema re-created at {revision}")


def _prefix(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        roles.role_names(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@db_group.command("roles")
@click.option("--apply", "apply_", is_flag=True, help="Create the roles and grant them, in one transaction.")
@click.option(
    "--prefix",
    default=roles.DEFAULT_PREFIX,
    show_default=True,
    callback=_prefix,
    help="The roles are PREFIX_scheduler, PREFIX_worker and PREFIX_viewer.",
)
@common_options
def db_roles(apply_: bool, prefix: str, config_path: Path | None, as_json: bool) -> None:
    """Least-privilege PostgreSQL roles: print (or --apply) the SQL creating a role for the
    scheduler, one for the workers and a read-only one, each granted what it needs and no more.

    --apply runs it as the configured user, who must own orchd's tables and may create roles.
    The roles have no password: set one (ALTER ROLE ... PASSWORD) or use certificates.  Run it
    again after an `orchd db upgrade` that adds tables.

    \b
    Example:
      orchd db roles > roles.sql
      orchd db roles --apply --prefix orchd
    """
    store = open_store(load(config_path))
    if store.engine.dialect.name != "postgresql":
        raise OrchdError(
            "roles are a PostgreSQL matter: an SQLite database is guarded by its file's permissions"
        )
    sql = roles.statements(store.engine, prefix)
    if apply_:
        roles.apply(store.engine, sql)
    names = roles.role_names(prefix)
    if as_json:
        print_json({"roles": names, "statements": sql, "applied": apply_})
    elif apply_:
        click.echo(f"{describe(store.engine.url)}: roles {', '.join(names.values())} created and granted")
    else:
        click.echo("-- orchd db roles: run as the owner of orchd's tables (or `orchd db roles --apply`)")
        click.echo("".join(f"{statement};\n" for statement in sql), nl=False)
