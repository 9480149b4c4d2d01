"""Every mistake is one line on stderr, with the exit status a script can act on.

Kept apart from the commands (and free of database imports) because `orchd --help` and
`orchd --version` load it and nothing else.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from orchd.errors import EX_USAGE


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"orchd: error: {message}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
    """Something that works but is likely not what was meant: one line, and no failure."""
    click.echo(f"orchd: warning: {message}", err=True)


def usage_error(message: str) -> NoReturn:
    fail(message, EX_USAGE)


def debug() -> None:
    """ORCHD_DEBUG=1 adds the traceback to the one line."""
    if os.environ.get("ORCHD_DEBUG"):
        traceback.print_exc()


class OneLineErrors(click.Command):
    """A usage mistake (unknown option, bad value) is one line too, naming the --help to read."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # `orchd run`: the help of the group
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            debug()
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            fail(f"{exc.format_message()}{hint}", exc.exit_code)
        except click.Abort:
            click.echo(err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


class OneLineErrorsGroup(OneLineErrors, click.Group):
    pass
