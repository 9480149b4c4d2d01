"""Live data for the browser and for scripts: server-sent events of run state changes and of a
run's output as it is written.

One ``Feed`` per daemon does the watching, however many clients are connected, and only while
at least one is: an idle dashboard costs the database nothing.

* PostgreSQL: a dedicated LISTEN connection on ``orchd_events`` (every statement recording state
  changes notifies it, see migration 0003), open while someone is connected, wakes the feed the
  moment a change commits.  Behind a
  transaction-mode pooler without ``database.direct_url`` there is no session to LISTEN on: the
  feed then looks every second.
* SQLite: ``PRAGMA data_version`` on a connection of the feed's own, every 25 ms; it answers from
  shared memory and changes only when another connection committed.

A notification is a hint: what changed is read from ``run_states`` after the feed's cursor, so
nothing is missed across a lost connection (the next wake-up catches up).  A run's new output is
read for the runs someone is tailing, one query per run per wake-up; on PostgreSQL, where output
does not notify, the feed also looks every 25 ms while a tailed run is active.  A client that
reconnects sends ``Last-Event-ID`` and gets what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from orchd.cli.output import iso
from orchd.config import DatabaseConfig
from orchd.db.engine import connect_args, session_url
from orchd.db.listen import notifications
from orchd.db.store import Store
from orchd.logging import get_logger
from orchd.models import LogLine, StateChange
from orchd.states import FINISHED, RunState

log = get_logger("orchd.web")

CHANNEL = "orchd_events"
#: How often the SQLite change check runs (free: shared memory), and a tailed run's output is
#: looked at on PostgreSQL (one indexed query): only while someone is connected.
TICK = 0.025
#: How often the feed looks for changes on PostgreSQL when it cannot LISTEN.
POLL = 1.0
#: A comment line this often keeps proxies and browsers from closing an idle stream.
KEEPALIVE = 15.0
#: Messages a slow client may fall behind by before it is dropped (it reconnects and catches up).
BACKLOG = 2000


def sse(data: Any, event: str | None = None, id: int | None = None) -> str:
    """One server-sent event; ``data`` as JSON on one line (a JSON string has no raw newline)."""
    head = (f"id: {id}\n" if id is not None else "") + (f"event: {event}\n" if event else "")
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n"


def event_json(row: StateChange) -> dict[str, Any]:
    """A state change as the events stream sends it (the history entry of `run show --json`, plus
    its id, run id and deployment)."""
    return {
        "id": row.id,
        "run_id": row.run_id,
        "deployment": row.deployment,
        "from": row.from_state,
        "to": row.to_state,
        "at": iso(row.at),
        "attempt": row.attempt,
        "actor": row.actor,
        "reason": row.reason,
    }


def line_json(row: LogLine) -> dict[str, Any]:
    """A line of output: the object of `orchd run logs --json`, plus its id (the cursor)."""
    return {
        "id": row.id,
        "run_id": row.run_id,
        "attempt": row.attempt,
        "at": iso(row.at),
        "stream": row.stream,
        "line": row.line,
    }


@dataclass(eq=False)
class Subscriber:
    """One connected client: every state change (``run_id`` None), or one run's changes and output.
    ``events_after`` and ``log_after`` are what it has seen: it gets each later event and line once."""

    events_after: int
    run_id: int | None = None
    log_after: int = 0
    queue: asyncio.Queue[str | None] = field(default_factory=lambda: asyncio.Queue(BACKLOG))

    def put(self, message: str | None) -> bool:
        try:
            self.queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            return False


class Feed:
    def __init__(self, store: Store, make_watch_store: Callable[[], Store], db: DatabaseConfig) -> None:
        self.store = store
        self._session = session_url(db)
        self._session_args = connect_args(db, "orchd-web-listen", url=self._session)
        self._make_watch_store = make_watch_store
        self._subscribers: set[Subscriber] = set()
        self._wake = asyncio.Event()
        self._someone = asyncio.Event()
        #: set once the last client has gone (the LISTEN connection closes)
        self._nobody = asyncio.Event()
        self._closed = asyncio.Event()
        #: history id up to which every subscriber has been served
        self._cursor = 1 << 62
        #: tailed runs still active (their output may grow without a notification on PostgreSQL)
        self._live_runs: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._postgres = store.engine.dialect.name == "postgresql"

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def clients(self) -> int:
        return len(self._subscribers)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="orchd-feed")

    async def close(self) -> None:
        """End every stream (the server is stopping) and the watcher."""
        self._closed.set()
        for sub in list(self._subscribers):
            sub.put(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ------------------------------------------------------------------ clients

    async def stream(self, sub: Subscriber, first: list[str]) -> AsyncIterator[str]:
        """What one client receives: ``first`` (its catch-up), then live messages, with keep-alive
        comments, until it disconnects or the server stops."""
        self._subscribers.add(sub)
        # it may have seen less than the others (what happened while it connected): read again
        # from there; each subscriber's own cursor keeps the others from getting anything twice
        self._cursor = min(self._cursor, sub.events_after)
        self._someone.set()
        self._nobody.clear()
        self._wake.set()
        try:
            yield "retry: 2000\n\n"
            for catch_up in first:
                yield catch_up
            while not self._closed.is_set():
                try:
                    message = await asyncio.wait_for(sub.queue.get(), KEEPALIVE)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if message is None:
                    return
                yield message
        finally:
            self._subscribers.discard(sub)
            if not self._subscribers:
                self._someone.clear()
                self._nobody.set()

    # ------------------------------------------------------------------ watching

    async def _run(self) -> None:
        if not self._postgres:
            watcher = self._poll_data_version()
        else:
            watcher = self._listen(self._session) if self._session is not None else self._poll()
        watch = asyncio.get_running_loop().create_task(watcher, name="orchd-feed-watch")
        try:
            while True:
                if not self._subscribers:
                    self._someone.clear()
                    self._cursor = 1 << 62  # the next subscriber says where to start
                    await self._someone.wait()
                timeout = TICK if (self._postgres and self._live_runs) else KEEPALIVE
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
                try:
                    await self._publish()
                except Exception as exc:  # the database is away: clients keep their streams
                    log.warning("live feed: cannot read changes", error=str(exc).splitlines()[0])
                    await asyncio.sleep(1.0)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    def _read(
        self, cursor: int, tailed: dict[int, int]
    ) -> tuple[list[StateChange], dict[int, list[LogLine]]]:
        """What changed after ``cursor``, and the new output of the tailed runs (run id -> after)
        (in a worker thread: the loop only delivers)."""
        events: list[StateChange] = []
        while True:
            batch = self.store.changes_after(cursor)
            events += batch
            if len(batch) < 500:
                break
            cursor = batch[-1].id
        lines = {
            run_id: self.store.run_logs(run_id, after_id=after, limit=5000)
            for run_id, after in tailed.items()
        }
        return events, lines

    async def _publish(self) -> None:
        tailed: dict[int, list[Subscriber]] = {}
        for sub in self._subscribers:
            if sub.run_id is not None:
                tailed.setdefault(sub.run_id, []).append(sub)
        after = {run_id: min(s.log_after for s in subs) for run_id, subs in tailed.items()}
        events, lines = await asyncio.to_thread(self._read, self._cursor, after)
        finished: set[int] = set()
        for row in events:
            data = event_json(row)
            for sub in list(self._subscribers):
                if row.id <= sub.events_after:
                    continue
                sub.events_after = row.id
                if sub.run_id is None:
                    self._deliver(sub, sse(data, "state", row.id))
                elif sub.run_id == row.run_id:
                    self._deliver(sub, sse(data, "state"))
            if RunState(row.to_state) in FINISHED:
                finished.add(row.run_id)
            self._cursor = row.id
        for run_id, subs in tailed.items():
            for sub in subs:
                for line in lines[run_id]:
                    if line.id > sub.log_after:
                        self._deliver(sub, sse(line_json(line), "line", line.id))
                        sub.log_after = line.id
        self._live_runs = {r for r in self._live_runs if r in tailed} - finished

    def _deliver(self, sub: Subscriber, message: str) -> None:
        if not sub.put(message):  # too far behind: drop it; it reconnects with Last-Event-ID
            self._subscribers.discard(sub)
            with contextlib.suppress(asyncio.QueueEmpty):
                sub.queue.get_nowait()
            sub.put(None)

    def track(self, run_id: int, active: bool) -> None:
        """A client started tailing ``run_id``; ``active``: it may still write output."""
        if active:
            self._live_runs.add(run_id)

    async def _listen(self, url: Any) -> None:
        """LISTEN only while someone is connected: psycopg looks at a listening connection ten
        times a second (0.16 CPU-s a minute for nothing), and an idle dashboard holds no session.
        A new LISTEN wakes the feed once, which reads what happened meanwhile."""
        while True:
            await self._someone.wait()
            listening = asyncio.get_running_loop().create_task(self._wake_on_notify(url))
            try:
                await self._nobody.wait()
            finally:
                listening.cancel()
                # asyncio.wait, not awaiting the task: a cancel of this task while it waits must
                # not be taken for the listener's own
                await asyncio.wait([listening])

    async def _wake_on_notify(self, url: Any) -> None:
        async for _ in notifications(url, self._session_args, CHANNEL):
            self._wake.set()

    async def _poll(self) -> None:
        """No session to LISTEN on: wake the feed every POLL while someone watches (it reads the
        events after its cursor, one indexed query)."""
        while True:
            await self._someone.wait()
            self._wake.set()
            await asyncio.sleep(POLL)

    async def _poll_data_version(self) -> None:
        watch = self._make_watch_store()
        try:
            while True:
                await self._someone.wait()
                try:
                    if await asyncio.to_thread(watch.changed):
                        self._wake.set()
                except Exception as exc:
                    log.debug("live feed: change check failed", error=str(exc).splitlines()[0])
                await asyncio.sleep(TICK)
        finally:
            watch.engine.dispose()
