"""The ``orchd`` command: the operator's view of and handle on everything.

Commands are imported when they are run, not when ``orchd`` starts: most of them need SQLAlchemy,
whose import alone takes longer than ``orchd --version`` should.  ``COMMANDS`` says where each one
lives and its one-line help for ``orchd --help`` (tests/test_cli_startup.py keeps that line equal
to the command's own).
"""

from __future__ import annotations

import gc
import importlib
import signal
from typing import Any

import click

from orchd import __version__
from orchd.cli.oneline import OneLineErrorsGroup

#: name -> ("module:attribute", the command's short help)
COMMANDS: dict[str, tuple[str, str]] = {
    "backfill": (
        "orchd.cli.schedules:backfill",
        "Create the runs DEPLOYMENT's schedules would have fired between --from and --to.",
    ),
    "config": ("orchd.cli.config:config_group", "Check, show, change and create the configuration."),
    "db": ("orchd.cli.db:db_group", "Manage the database schema."),
    "deployment": (
        "orchd.cli.deployments:deployment_group",
        "What is deployed: list, inspect, apply the config now, pause and resume.",
    ),
    "notification": (
        "orchd.cli.notifications:notification_group",
        "Notification rules ([[notifications]]) and what they sent.",
    ),
    "pool": ("orchd.cli.pools:pool_group", "Pools: the queues workers serve."),
    "run": ("orchd.cli.runs:run_group", "Look at runs and act on them."),
    "schedule": ("orchd.cli.schedules:schedule_group", "Look at schedules before they fire."),
    "status": (
        "orchd.cli.status:status",
        "Is orchd healthy? Database, scheduler leader, workers per pool, queue, late and stuck runs, "
        "failures of the last hour, the server's connections (PostgreSQL), and the container engine "
        "when deployments need one.",
    ),
    "systemd": (
        "orchd.cli.systemd:systemd_group",
        "systemd units for orchd installed with pip (the Debian package ships its own).",
    ),
    "up": (
        "orchd.cli.daemons:up",
        "Scheduler, one worker and the dashboard (web.listen) together in the foreground: the quick start.",
    ),
    "web": ("orchd.cli.web:web_group", "Users of orchd-web (the dashboard and HTTP API) and their roles."),
    "worker": ("orchd.cli.pools:worker_group", "Workers: the daemons that execute runs."),
}


class LazyGroup(OneLineErrorsGroup):
    """A group whose commands are imported only when one of them is looked up."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The ``orchd`` program itself (tests call ``main.main``).  A reader that goes away
        (`orchd run ls | head -1`) ends it as it ends any Unix tool: by SIGPIPE, quietly, status
        141, whatever it was writing (Python ignores SIGPIPE and raises BrokenPipeError instead).
        Its database connections never see SIGPIPE: libpq sends with MSG_NOSIGNAL.  `orchd up`
        runs daemons and ignores SIGPIPE again."""
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            # What a command imported (SQLAlchemy's classes and caches, the data layer) lives until
            # the process ends: freezing it spares the interpreter's exit a last collection that
            # walks every one of those objects (~60-90 ms of every database command here).
            gc.freeze()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, _, attribute = COMMANDS[cmd_name][0].partition(":")
        gc.disable()
        try:
            command: click.Command = getattr(importlib.import_module(module), attribute)
        finally:
            gc.enable()
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list of commands from COMMANDS, laid out as click would, without importing them."""
        width = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [
            (name, click.Command(name, help=COMMANDS[name][1]).get_short_help_str(width))
            for name in sorted(COMMANDS)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group("orchd", cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
