"""Start-up shared by the daemons and ``orchd up``: signals, waiting for the database, migrating."""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from orchd.config import Config
from orchd.db import migrate
from orchd.db.engine import check_sqlite_file, make_engine, mask, parse_url, wait_for_database
from orchd.db.store import Store
from orchd.errors import ConfigError, DatabaseError, DatabaseForbidden, DatabaseMissing, DatabaseUnavailable
from orchd.logging import get_logger
from orchd.notify import Notifier

log = get_logger("orchd")
#: How often the signal relay looks at the flags without a wakeup byte (see Signals), and, for a
#: second after one, how often until the signal's handler has set its flag.
_RELAY_CHECK, _HANDLER_CHECK = 1.0, 0.01


def freeze_startup() -> None:
    """Leave what start-up built (the modules, the config, the engine: some 70,000 objects, and
    as many again per 100,000 schedules) out of the cyclic collector's full passes, which walked
    them all (15 ms on an idle machine, far more on a busy one) in the middle of whatever the
    daemon was doing, a claim or a tick.  They live as long as the process (gc.freeze)."""
    gc.freeze()


class Signals:
    """SIGTERM/SIGINT set ``stop``; SIGHUP sets ``reload``.

    The handlers only assign plain attributes.  Setting a threading.Event from a handler takes the
    Event's lock, and a second signal arriving while the first handler holds it (Ctrl-C pressed
    twice, systemd's SIGTERM after a Ctrl-C) deadlocks the main thread; so a small relay thread
    turns the signals into the events the loops wait on.  It sleeps on the interpreter's wakeup
    fd, which gets each signal's number the moment it arrives (even while the main thread is busy
    in C, before any Python handler runs), so an idle daemon is not woken ten times a second to
    look at flags; it still looks once a second, in case something else (an asyncio loop) took
    the wakeup fd over.

    ``exit_after``: a process whose every change is one transaction (the scheduler) must answer a
    stop within a second or two whatever it is computing (a sync of 100,000 schedules, a slow
    query): when it has not finished that long after the stop request, the relay ends it.
    """

    def __init__(self, exit_after: float | None = None) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.exit_after = exit_after
        self._stop_requested = False
        self._reload_requested = False
        self._wakeup, self._wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def install(self) -> Signals:
        _clear_inherited_signals()
        signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        threading.Thread(target=self._relay, name="signals", daemon=True).start()
        return self

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_requested = True

    def _on_reload(self, signum: int, _frame: FrameType | None) -> None:
        self._reload_requested = True

    def _relay(self) -> None:
        pending = 0.0  # until when a signal's handler may still be about to run
        while not self.stop.is_set():
            wait = _RELAY_CHECK if time.monotonic() >= pending else _HANDLER_CHECK
            if select.select([self._wakeup], [], [], wait)[0]:
                with contextlib.suppress(BlockingIOError):
                    numbers = os.read(self._wakeup, 512)
                    # a stop is told at once, even if the main thread is stuck in C; the flags
                    # (a reload) are set by the handlers, in the main thread, a moment later
                    self._stop_requested |= any(n in (signal.SIGTERM, signal.SIGINT) for n in numbers)
                    pending = time.monotonic() + _RELAY_CHECK
            if self._reload_requested:
                self._reload_requested = False
                self.reload.set()
            if self._stop_requested:
                self.stop.set()
        if self.exit_after is not None:
            time.sleep(self.exit_after)  # a daemon thread: the process normally ends before this
            log.warning("still busy after the stop request: exiting now", waited=self.exit_after)
            os._exit(0)


#: Ignored by Python itself on purpose (a write to a closed pipe raises instead of killing us);
#: subprocess gives children their default action back (``restore_signals``).
_PYTHON_IGNORES = {signal.SIGPIPE, signal.SIGXFSZ}


def _clear_inherited_signals() -> None:
    """Give the signals a daemon inherited ignored or blocked back their default action.

    An ignored signal and the signal mask survive exec: a worker started from a shell in the
    background (``&``, nohup) or by a supervisor that blocks some signals passed that on to every
    run it started, so a run shrugged off SIGINT or SIGQUIT, and one killed by such a signal was
    reported as a plain exit.  Runs must start as they would under systemd: nothing ignored,
    nothing blocked.  (Signals 32 and 33 are glibc's own: it refuses to change them, and
    ``valid_signals`` leaves them out.)
    """
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for number in signal.valid_signals() - _PYTHON_IGNORES:
        if signal.getsignal(number) == signal.SIG_IGN:
            signal.signal(number, signal.SIG_DFL)


def open_store(
    config: Config,
    actor: str,
    should_stop: Callable[[], bool],
    notifier: Notifier | None = None,
    *,
    create: bool = False,
) -> Store | None:
    """Wait for the database (with backoff), migrate or check the schema, and return a Store;
    None if told to stop while waiting.

    An SQLite file is created only when it is the default one (no database.url) or ``create``
    (the quick start): a path someone wrote that does not exist is a typo, and the daemon refuses
    to start (exit 78) rather than run on an empty database.  A file it may not write is refused
    too: it is no outage, and waiting would only hide it."""
    default = config.sources.get("database.url") == "default"
    try:
        check_sqlite_file(parse_url(config.database.url), create=create or default)
    except (DatabaseMissing, DatabaseForbidden) as exc:
        raise ConfigError(f"database.url: {exc}") from None
    engine = make_engine(config.database)
    notify = notifier or Notifier()

    def waiting(reason: str, retry_in: float) -> None:
        log.warning("waiting for database", error=reason, retry_in=retry_in)
        notify.status(f"waiting for database: {reason}")
        notify.watchdog()

    while True:
        if not wait_for_database(engine, should_stop=should_stop, on_wait=waiting):
            return None
        try:
            if config.database.migrate_on_start:
                migrate.upgrade(engine)
            else:
                migrate.ensure_current(engine)
            break
        except DatabaseUnavailable as exc:  # it went away again between the ping and the schema check
            waiting(exc.reason, 0.5)
            time.sleep(0.5)
        except DatabaseError as exc:  # not an outage: a role that may not change the schema (orchd db roles)
            raise ConfigError(
                f"database: cannot upgrade the schema ({exc.reason}): run `orchd db upgrade` as the owner of "
                "orchd's tables, or set database.migrate_on_start = false"
            ) from None
    log.info("database ready", url=mask(engine.url))
    return Store(engine, actor)
