"""``orchd web ...``: who may use the dashboard and the HTTP API (orchd-web)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from orchd.cli.common import common_options, config_option, friendly, load
from orchd.cli.oneline import fail
from orchd.cli.output import print_json, print_table
from orchd.web.auth import ROLES, read_users, remove_user, users_path, write_user


@click.group("web")
def web_group() -> None:
    """Users of orchd-web (the dashboard and HTTP API) and their roles.

    \b
    Example:
      sudo orchd web passwd alice --role operator
      orchd web users
      sudo orchd web remove alice
    """


@web_group.command("passwd")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    default="viewer",
    show_default=True,
    help="viewer reads; operator also creates, cancels, retries and pauses.",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@config_option
@friendly
def web_passwd(name: str, role: str, password_stdin: bool, config_path: Path | None) -> None:
    """Add user NAME or set their password and role; only a scrypt hash is stored, in
    web.users_file (default web-users.toml beside orchd.toml).  A running orchd-web picks the
    change up within a second; the user's open sessions end when the password changes.

    \b
    Example:
      sudo orchd web passwd alice --role operator
      echo "$PASSWORD" | orchd web passwd ci-bot --role viewer --password-stdin
    """
    config = load(config_path)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt="again")
    if len(password) < 8:
        raise click.UsageError("the password must be at least 8 characters")
    path = users_path(config)
    try:
        created = write_user(path, name, role, password)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    click.echo(f"{'added' if created else 'updated'} {name} ({role}) in {path}")


@web_group.command("users")
@common_options
def web_users(config_path: Path | None, as_json: bool) -> None:
    """List the users of orchd-web with their roles (never their hashes).

    \b
    Example:
      orchd web users --json
    """
    config = load(config_path)
    users = read_users(users_path(config)).values()
    if as_json:
        print_json([{"name": u.name, "role": u.role} for u in users])
    else:
        print_table(["NAME", "ROLE"], [[u.name, u.role] for u in users])


@web_group.command("remove")
@click.argument("name")
@config_option
@friendly
def web_remove(name: str, config_path: Path | None) -> None:
    """Remove user NAME from web.users_file.  A running orchd-web picks the change up within a
    second: the user's open sessions end and their password no longer logs in.

    \b
    Example:
      sudo orchd web remove alice
    """
    path = users_path(load(config_path))
    try:
        remove_user(path, name)
    except ValueError as exc:
        fail(str(exc))
    click.echo(f"removed {name} from {path}")
