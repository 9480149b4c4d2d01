"""systemd readiness and watchdog protocol (sd_notify), a no-op when NOTIFY_SOCKET is not set.

READY=1 is sent only once the database answers and the schema is current; WATCHDOG=1 comes from
the daemon's main loop itself (never a helper thread), so a hung loop stops the pings and
systemd kills and restarts the daemon.
"""

from __future__ import annotations

import os
import time

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self._socket = sdnotify.SystemdNotifier() if os.environ.get("NOTIFY_SOCKET") else None
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        # as sd_watchdog_enabled(): the watchdog is meant for WATCHDOG_PID only, if given
        self._pings = os.environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())
        # ping at a quarter of the watchdog period (at most once a second when none is set)
        self._every = watchdog_usec / 4_000_000 if watchdog_usec else 1.0
        self._last_ping = 0.0
        self._status = ""

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def _send(self, *lines: str) -> None:
        if self._socket is not None:
            self._socket.notify("\n".join(lines))

    def ready(self, status: str) -> None:
        self._status = status
        self._send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        now = time.monotonic()
        if self._pings and now - self._last_ping >= self._every:
            self._last_ping = now
            self._send("WATCHDOG=1")

    def reloading(self) -> None:
        self._send("RELOADING=1", "STATUS=reloading configuration")

    def stopping(self, status: str = "stopping") -> None:
        self._send("STOPPING=1", f"STATUS={status}")
