"""Signal handlers must not take locks: a signal that lands while the main thread holds one (or
while another handler runs) would otherwise deadlock the daemon's shutdown."""

from __future__ import annotations

import signal
import threading

from orchd.runtime import Signals
from tests.helpers import wait_for


def test_handlers_do_not_need_the_events_lock() -> None:
    signals = Signals()
    held = signals.stop._cond  # the lock Event.set() would need, held as if a handler were inside it
    with held:
        done = threading.Event()

        def handle() -> None:
            signals._on_stop(signal.SIGINT, None)
            signals._on_reload(signal.SIGHUP, None)
            done.set()

        threading.Thread(target=handle, daemon=True).start()
        assert done.wait(timeout=5), "a signal handler blocked on the Event's lock"


def test_the_relay_turns_requests_into_events() -> None:
    signals = Signals()
    threading.Thread(target=signals._relay, daemon=True).start()
    signals._on_reload(signal.SIGHUP, None)
    wait_for(signals.reload.is_set, timeout=5, what="reload")
    assert not signals.stop.is_set()
    signals._on_stop(signal.SIGTERM, None)
    wait_for(signals.stop.is_set, timeout=5, what="stop")
