"""PostgreSQL LISTEN/NOTIFY wake-ups: a due run starts within milliseconds instead of a poll later.

LISTEN needs a session of its own (it does not work through a transaction-mode pooler), so this
thread keeps one dedicated connection to PostgreSQL itself (``database.direct_url`` behind
PgBouncer), reconnecting with backoff.  A notification is only a hint:
the worker's claim query stays the truth, and its slow poll stays as the backstop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

from sqlalchemy.engine import URL

from orchd.backoff import Backoff
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
        self._thread = threading.Thread(target=self._listen, name="listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _listen(self) -> None:
        import psycopg  # only PostgreSQL workers pay for the driver's memory

        backoff = Backoff(0.5, 30.0)
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, **self._args) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    backoff.succeeded()
                    self._events.put(WakeEvent(""))  # (re)connected: look once, we may have missed one
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if note.payload in self._pools:
                                self._events.put(WakeEvent(note.payload))
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
