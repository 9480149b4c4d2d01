"""The ``orchd`` command: the operator's view of and handle on everything."""

from __future__ import annotations

import click

from orchd import __version__
from orchd.cli.admin import config_group, db_group
from orchd.cli.daemons import up
from orchd.cli.runs import run_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="orchd")
def main() -> None:
    """orchd: a self-hosted, systemd-native workflow scheduler.

    \b
    Example:
      orchd up --config etc/orchd/quickstart.toml   # quick start
      orchd run ls                                  # what ran, what is due
    """


main.add_command(up)
main.add_command(config_group)
main.add_command(db_group)
main.add_command(run_group)
import orchd.cli.systemd  # noqa: E402, F401 (registers `orchd systemd`)
