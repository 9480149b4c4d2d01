"""The README's CLI reference, generated from the click tree so it cannot fall behind the commands
(and the table of the config keys' ranges, generated from their declarations).

``.venv/bin/python -m tests.cli_reference`` rewrites both in README.md; tests/test_docs.py fails
while one is out of date.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click

from orchd.cli import main
from orchd.cli.daemons import scheduler_main, web_main, worker_main
from orchd.config.template import RANGES_BEGIN as ranges_begin
from orchd.config.template import RANGES_END as ranges_end
from orchd.config.template import ranges

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- CLI reference: generated from the click tree by `python -m tests.cli_reference` -->\n"
END = "<!-- end of the CLI reference -->\n"
#: Said once above the reference instead of under every command.
COMMON = {"config_path", "help"}


def subcommands(group: click.Group) -> dict[str, click.Command]:
    """A group's commands, also those of a group that imports them only when asked."""
    ctx = click.Context(group)
    return {name: command for name in group.list_commands(ctx) if (command := group.get_command(ctx, name))}


def commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    if isinstance(command, click.Group):
        for name, sub in sorted(subcommands(command).items()):
            yield from commands(sub, f"{path} {name}")
    else:
        yield path, command


def entry(path: str, command: click.Command) -> str:
    ctx = click.Context(command, info_name=path)
    arguments = " ".join(p.make_metavar(ctx) for p in command.params if isinstance(p, click.Argument))
    lines = [
        f"#### `{path}{' ' + arguments if arguments else ''}`",
        "",
        command.get_short_help_str(limit=300),
    ]
    options = [
        record
        for p in command.params
        if isinstance(p, click.Option) and p.name not in COMMON and (record := p.get_help_record(ctx))
    ]
    if options:
        lines.append("")
        lines += [f"- `{opts}`: {text}" if text else f"- `{opts}`" for opts, text in options]
    return "\n".join(lines) + "\n"


def render() -> str:
    tree = [
        *commands(main, "orchd"),
        ("orchd-scheduler", scheduler_main),
        ("orchd-web", web_main),
        ("orchd-worker", worker_main),
    ]
    return BEGIN + "\n" + "\n".join(entry(path, command) for path, command in tree) + "\n" + END


def current() -> str:
    text = README.read_text()
    return text[text.index(BEGIN) : text.index(END) + len(END)]


def current_ranges() -> str:
    text = README.read_text()
    return text[text.index(ranges_begin) : text.index(ranges_end) + len(ranges_end)]


if __name__ == "__main__":
    README.write_text(README.read_text().replace(current(), render()).replace(current_ranges(), ranges()))
