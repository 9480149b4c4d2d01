"""The daemons' entry points: ``orchd-scheduler``, ``orchd-worker`` and ``orchd up`` (both at once)."""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import click

from orchd import __version__, metrics
from orchd.cli.common import config_option, friendly, load
from orchd.cli.oneline import OneLineErrors
from orchd.cli.output import plural
from orchd.cli.params import Setting
from orchd.config import Config, WorkerConfig
from orchd.config.fields import parser_of
from orchd.config.model import listen_address, pool_name, worker_name
from orchd.db.locks import check_session
from orchd.errors import ConfigError, OrchdError
from orchd.logging import configure, get_logger
from orchd.notify import Notifier
from orchd.runtime import Signals, freeze_startup, open_store
from orchd.scheduler.daemon import Scheduler
from orchd.worker.daemon import Worker

log = get_logger("orchd")
#: The scheduler ends at most this long after SIGTERM/SIGINT, whatever it is doing: every change it
#: makes is one transaction, so ending it mid-way loses nothing.
STOP_WITHIN = 1.5


def _listen(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else listen_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


metrics_option = click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    callback=_listen,
    help="Serve Prometheus metrics here (default: metrics.listen; each daemon of a host needs its own port).",
)


def _configured(config_path: Path | None, metrics_listen: str | None) -> Config:
    """Load the config, set up logging, and serve metrics when asked: before the database is
    waited for, so a daemon stuck waiting is up for Prometheus (and visibly not leading, not claiming)."""
    config = load(config_path)
    configure(config.logging.level, config.logging.format)
    listen = config.metrics.listen if metrics_listen is None else metrics_listen
    if listen:
        metrics.serve(listen)
        log.info("serving metrics", address=listen)
    return config


def _reloader(signals: Signals, config_path: Path | None) -> Callable[[], Config | None]:
    """Returns the new config after SIGHUP, or None; a broken new config is logged and ignored."""

    def reload() -> Config | None:
        if not signals.reload.is_set():
            return None
        signals.reload.clear()
        try:
            config = load(config_path)
        except ConfigError as exc:
            log.error("reload refused: keeping the running config", error=str(exc))
            return None
        log.info("config reloaded", path=str(config.path))
        return config

    return reload


@click.command("orchd-scheduler", cls=OneLineErrors)
@config_option
@click.option("--once", is_flag=True, help="Run exactly one tick and exit.")
@metrics_option
@click.version_option(__version__, prog_name="orchd-scheduler")
@friendly
def scheduler_main(config_path: Path | None, once: bool, metrics_listen: str | None) -> None:
    """Materialize scheduled runs of deployments into the queue and reap dead workers' runs.

    \b
    Example:
      orchd-scheduler --config /etc/orchd/orchd.toml
      orchd-scheduler --once
    """
    config = _configured(config_path, "" if once else metrics_listen)
    if not once:  # one tick takes no lock
        check_session(config.database)
    signals = Signals(exit_after=STOP_WITHIN).install()
    notifier = Notifier()
    store = open_store(config, "scheduler", signals.stop.is_set, notifier)
    if store is None:
        return
    scheduler = Scheduler(
        config,
        store,
        stop=signals.stop,
        observer=metrics.Metrics(store),
        read_config=lambda: load(config_path),
    )
    if once:
        scheduler.apply_config()
        report = scheduler.tick()
        click.echo(
            f"tick: {plural(report.schedules, 'schedule')}, {plural(report.created, 'run')} created, "
            f"{report.crashed} reaped"
        )
        return
    log.info("scheduler started", version=__version__)
    freeze_startup()
    scheduler.run(signals.stop, _reloader(signals, config_path), notifier)
    log.info("scheduler stopped")


@click.command("orchd-worker", cls=OneLineErrors)
@config_option
@click.option(
    "--pool",
    "pools",
    multiple=True,
    type=Setting(pool_name, "NAME"),
    help="Pool to serve (repeatable; default: worker.pools).",
)
@click.option(
    "--concurrency",
    type=Setting(parser_of(WorkerConfig, "concurrency"), "N"),
    help="Runs at once (default: worker.concurrency).",
)
@click.option(
    "--name",
    type=Setting(worker_name, "NAME"),
    help="Worker name (default: worker.name or HOSTNAME-PID).",
)
@click.option("--burst", is_flag=True, help="Run what is due now, then exit.")
@metrics_option
@click.version_option(__version__, prog_name="orchd-worker")
@friendly
def worker_main(
    config_path: Path | None,
    pools: tuple[str, ...],
    concurrency: int | None,
    name: str | None,
    burst: bool,
    metrics_listen: str | None,
) -> None:
    """Claim due runs of the given pools and execute them as child processes.

    \b
    Example:
      orchd-worker --pool default --concurrency 8
      orchd-worker --pool gpu --metrics-listen 127.0.0.1:9465
    """
    config = _configured(config_path, "" if burst else metrics_listen)
    signals = Signals().install()
    notifier = Notifier()
    store = open_store(config, "worker", signals.stop.is_set, notifier)
    if store is None:
        return
    worker = Worker(
        config,
        store,
        list(pools or config.worker.pools),
        concurrency or config.worker.concurrency,
        name or "",
        burst,
        observer=metrics.Metrics(store),
    )
    freeze_startup()
    worker.run(signals.stop, notifier)


def _web_listen(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    value = _listen(ctx, param, value)
    if value == "":
        raise click.BadParameter("expected HOST:PORT such as 127.0.0.1:4200")
    return value


@click.command("orchd-web", cls=OneLineErrors)
@config_option
@click.option("--listen", metavar="HOST:PORT", callback=_web_listen, help="Serve here (default: web.listen).")
@metrics_option
@click.version_option(__version__, prog_name="orchd-web")
@friendly
def web_main(config_path: Path | None, listen: str | None, metrics_listen: str | None) -> None:
    """Serve the dashboard and the HTTP API (http://127.0.0.1:4200/ by default).

    A non-loopback address is refused (exit 78) until users (`orchd web passwd`) or a token
    (web.token_file) are configured.

    \b
    Example:
      orchd-web --config /etc/orchd/orchd.toml
      orchd-web --listen 127.0.0.1:8080
    """
    from orchd.web.auth import Auth
    from orchd.web.server import bind, check_exposure, serve

    config = _configured(config_path, metrics_listen)
    if listen:
        config = dataclasses.replace(config, web=dataclasses.replace(config.web, listen=listen))
    if not config.web.listen:
        raise ConfigError('web.listen: empty: orchd-web needs an address such as "127.0.0.1:4200"')
    auth = Auth(config)
    check_exposure(config.web.listen, auth)
    sock = bind(config.web.listen)
    signals = Signals().install()
    notifier = Notifier()
    store = open_store(config, "web", signals.stop.is_set, notifier)
    if store is None:
        return
    log.info("orchd-web started", version=__version__)
    freeze_startup()
    serve(config, store, auth, sock, signals.stop, notifier)


def _start_web(config: Config, stop: threading.Event) -> threading.Thread | None:
    """orchd up's dashboard, in a thread; a busy port is a warning, not a reason to stop."""
    if not config.web.listen:
        return None
    from orchd.web.auth import Auth
    from orchd.web.server import bind, check_exposure, make_server, url_of

    auth = Auth(config)
    check_exposure(config.web.listen, auth)
    try:
        sock = bind(config.web.listen)
    except OrchdError as exc:
        log.warning("no dashboard", error=str(exc))
        return None
    web_store = open_store(config, "web", stop.is_set)
    if web_store is None:
        return None
    server = make_server(config, web_store, auth, sock, stop, Notifier())
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="web", daemon=True)
    thread.start()
    click.echo(f"dashboard: {url_of(config, sock)}")
    return thread


@click.command("up")
@config_option
@metrics_option
@friendly
def up(config_path: Path | None, metrics_listen: str | None) -> None:
    """Scheduler, one worker and the dashboard (web.listen) together in the foreground: the quick start.

    \b
    Example:
      orchd up --config etc/orchd/quickstart.toml
    Stop it with Ctrl-C.
    """
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # daemons: a closed pipe is an error to handle, not death
    config = _configured(config_path, metrics_listen)
    check_session(config.database)
    signals = Signals().install()
    # the quick start makes its SQLite file; the daemons alone never make one a config names
    store = open_store(config, "scheduler", signals.stop.is_set, create=True)
    if store is None:
        return
    worker_store = open_store(config, "worker", signals.stop.is_set)
    assert worker_store is not None
    scheduler = Scheduler(
        config, store, observer=metrics.Metrics(store), read_config=lambda: load(config_path)
    )
    thread = threading.Thread(
        target=scheduler.run,
        args=(signals.stop, _reloader(signals, config_path)),
        name="scheduler",
        daemon=True,
    )
    thread.start()
    web = _start_web(config, signals.stop)
    log.info("orchd up: scheduler and worker running; Ctrl-C stops both", database=config.database.url)
    freeze_startup()
    Worker(
        config,
        worker_store,
        list(config.worker.pools),
        config.worker.concurrency,
        observer=metrics.Metrics(worker_store),
    ).run(signals.stop)
    thread.join(timeout=10)
    if web is not None:
        web.join(timeout=10)
    log.info("orchd stopped")
