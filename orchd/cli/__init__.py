"""The ``orchd`` command: the operator's view of and handle on everything."""

from __future__ import annotations

import click

from orchd import __version__
from orchd.cli.common import OneLineErrorsGroup
from orchd.cli.config import config_group
from orchd.cli.daemons import up
from orchd.cli.db import db_group
from orchd.cli.deployments import deployment_group
from orchd.cli.pools import pool_group, worker_group
from orchd.cli.runs import run_group
from orchd.cli.schedules import backfill, schedule_group
from orchd.cli.status import status


@click.group("orchd", cls=OneLineErrorsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="orchd")
def main() -> None:
    """orchd: a self-hosted, systemd-native workflow scheduler.

    Every command takes --config PATH (default: $ORCHD_CONFIG or /etc/orchd/orchd.toml) and
    --help; listings take --json.  Exit status: 0 ok, 1 error, 2 usage, 78 configuration.

    \b
    Example:
      orchd up --config etc/orchd/quickstart.toml   # quick start
      orchd status                                  # is everything healthy?
      orchd run ls                                  # what ran, what is due
    \b
    Shell completion (bash; zsh and fish alike):
      eval "$(_ORCHD_COMPLETE=bash_source orchd)"
    """


for command in (
    up,
    status,
    config_group,
    db_group,
    deployment_group,
    schedule_group,
    run_group,
    backfill,
    pool_group,
    worker_group,
):
    main.add_command(command)
import orchd.cli.systemd  # noqa: E402, F401 (registers `orchd systemd`)
