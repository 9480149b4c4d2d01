"""PostgreSQL LISTEN/NOTIFY wake-ups: a due run starts within milliseconds instead of a poll later.

LISTEN needs a session of its own (it does not work through a transaction-mode pooler), so this
thread keeps one dedicated connection to PostgreSQL itself (``database.direct_url`` behind
PgBouncer), reconnecting with backoff.  A notification is only a hint:
the worker's claim query stays the truth, and its slow poll stays as the backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import select
import threading
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

from sqlalchemy.engine import URL

from orchd.backoff import Backoff
from orchd.db import wake
from orchd.db.base import CHANNEL
from orchd.db.engine import conninfo
from orchd.db.errors import reason
from orchd.db.wake import WakeEvent
from orchd.logging import get_logger

log = get_logger("orchd.worker")


class Listener:
    def __init__(
        self, url: URL, args: Mapping[str, Any], pools: Collection[str], events: queue.Queue[object]
    ) -> None:
        self._conninfo = conninfo(url)
        self._args = {**args, "autocommit": True}
        self._pools = set(pools)
        self._events = events
        self._stop = threading.Event()
        # stop() writes here: the thread sleeps in poll() on its connection and this pipe, with no
        # timeout (psycopg's notifies(timeout=1) woke ten times a second: 70 ms of CPU a minute)
        self._wakeup, self._wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._listen, name="listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(BlockingIOError):
            os.write(self._wakeup_write, b"\0")
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            os.close(self._wakeup)
            os.close(self._wakeup_write)

    def _listen(self) -> None:
        import psycopg  # only PostgreSQL workers pay for the driver's memory

        backoff = Backoff(0.5, 30.0)
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, **self._args) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    backoff.succeeded()
                    self._events.put(WakeEvent(""))  # (re)connected: look once, we may have missed one
                    poller = select.poll()
                    poller.register(conn.fileno(), select.POLLIN)
                    poller.register(self._wakeup, select.POLLIN)
                    while not self._stop.is_set():
                        poller.poll()  # a notification, the connection's end, or stop()
                        # what arrived, without waiting; a lost connection raises here
                        for note in conn.notifies(timeout=0):
                            if (event := wake.parse(note.payload)).pool in self._pools:
                                self._events.put(event)
            except psycopg.Error as exc:
                log.debug("listen connection lost", error=reason(exc))
                self._stop.wait(backoff.failed())


async def notifications(url: URL, args: Mapping[str, Any], channel: str) -> AsyncIterator[None]:
    """For asyncio code (the web's live feed): LISTEN on ``channel`` over a session of its own at
    ``url`` and yield once when (re)connected, since something may have happened meanwhile, and
    once per notification; forever, reconnecting with backoff when the connection is lost."""
    import psycopg

    backoff = Backoff(0.5, 30.0)
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(conninfo(url), autocommit=True, **args) as conn:
                await conn.execute(f"LISTEN {channel}")
                backoff.succeeded()
                yield
                async for _note in conn.notifies():
                    yield
        except psycopg.Error as exc:
            log.debug("listen connection lost", channel=channel, error=reason(exc))
            await asyncio.sleep(backoff.failed())
