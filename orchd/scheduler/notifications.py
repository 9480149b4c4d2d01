"""The leading scheduler's notifications: match events into the outbox on each tick, and send what
the outbox holds from threads of their own, so a channel that is down (a webhook that hangs until
its timeout, an SMTP server that refuses) never delays a tick nor the other channels.

Matching (``match``) runs in the tick: a few indexed queries, bounded per tick.  Sending runs in
a small pool of threads fed by one dispatcher thread: it claims due messages (at most one per
rule and channel at a time), sends each with the rule's timeout, and records the outcome; a
failed attempt is retried with backoff (``orchd.notifications.retry_delay``) until the rule's
``attempts`` are spent.  Delivery guarantee: at least once; a message is repeated only when the
scheduler dies after sending it and before recording it (see ``orchd.db.notifications``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from orchd.backoff import Backoff
from orchd.channels import ChannelError, post_webhook, read_secret, run_command, send_apprise, url_lines
from orchd.config import Config
from orchd.config.model import NotificationConfig
from orchd.db.store import Store
from orchd.errors import DatabaseError
from orchd.logging import get_logger
from orchd.models import Delivery
from orchd.notifications import Rule, channel_ids, render, retry_delay

log = get_logger("orchd.notifications")
#: Threads sending at once (each holds one rule and channel: a dead channel holds one).
SENDERS = 4
_PRUNE_EVERY = 60.0
#: Events matched per batch (one short write transaction), and batches per tick at most (the
#: rest on the next tick): 5,000 events a second keep up.
_BATCH = 500
_BATCHES = 10


def rules_of(config: NotificationConfig, env: Mapping[str, str]) -> Rule:
    """A rule with its channels; the URLs of its url_file are read now (a file that cannot be read
    is logged, and the rule's other channels still work)."""
    urls = list(config.urls)
    if config.url_file:
        try:
            urls += url_lines(read_secret(config.url_file, env))
        except ChannelError as exc:
            log.error("notification rule: url_file skipped", rule=config.name, error=str(exc))
    return Rule(config, channel_ids(config, urls))


def send(rule: Rule, delivery: Delivery, env: Mapping[str, str]) -> None:
    """Send one message through its channel; ChannelError says why it did not arrive."""
    cfg = rule.config
    payload = dict(delivery.payload) | {
        "idempotency_key": delivery.idempotency_key,
        "suppressed": delivery.suppressed,
    }
    if delivery.channel == "webhook" and cfg.webhook:
        secret = read_secret(cfg.secret_file, env) if cfg.secret_file else cfg.secret
        post_webhook(cfg.webhook, payload, delivery.idempotency_key, secret, cfg.timeout)
    elif delivery.channel == "command" and cfg.command:
        run_command(list(cfg.command), payload, delivery.idempotency_key, cfg.timeout)
    elif (url := rule.channels.get(delivery.channel)) is not None:
        title, body = render(payload, delivery.suppressed)
        send_apprise(url, title, body, cfg.timeout)
    else:
        raise ChannelError(f"channel {delivery.channel} is no longer in rule {cfg.name!r}")


class Dispatcher:
    """Matches events to the rules of the config in force, and sends the outbox while leader."""

    def __init__(
        self,
        store: Store,
        config: Callable[[], Config],
        clock: Callable[[], datetime],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.store, self.config, self.clock = store, config, clock
        self.env = os.environ if env is None else env
        self.leading = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._rules: tuple[Config | None, list[Rule]] = (None, [])
        #: LATE runs and offline workers are looked for this often, seconds.
        self.scan_every = 5.0
        self._next_scan = 0.0
        self._next_prune = 0.0
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    def rules(self) -> list[Rule]:
        """The rules of the config in force (rebuilt when it changes, e.g. after SIGHUP)."""
        config = self.config()
        if self._rules[0] is not config:
            self._rules = (config, [rules_of(n, self.env) for n in config.notifications])
        return self._rules[1]

    # ------------------------------------------------------------------------------ matching

    def match(self) -> int:
        """One tick's matching: new events (a few batches), LATE runs and offline workers every
        few seconds; wakes the senders when something was queued.  Returns messages queued."""
        rules = self.rules()
        if not rules:
            return 0
        config = self.config()
        now = self.clock()
        queued = 0
        for _ in range(_BATCHES):
            report = self.store.match_events(rules, now, config.web.public_url, _BATCH)
            queued += report.queued
            if report.events < _BATCH:
                break
        if time.monotonic() >= self._next_scan:
            queued += self.store.match_late(rules, now, config.web.public_url)
            queued += self.store.match_offline_workers(rules, now)
            self._next_scan = time.monotonic() + self.scan_every
        retention = config.scheduler.retention
        if retention and time.monotonic() >= self._next_prune:
            self.store.prune_notifications(now - timedelta(seconds=retention))
            self._next_prune = time.monotonic() + _PRUNE_EVERY
        if queued:
            self._wake.set()
        return queued

    # ------------------------------------------------------------------------------ sending

    def start(self) -> None:
        """Start the dispatcher thread (once); it sends only while ``leading`` is set."""
        if self._thread is None:
            self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="notify")
            self._thread = threading.Thread(target=self._loop, name="notifications", daemon=True)
            self._thread.start()

    def stop(self, wait: float = 2.0) -> None:
        """Stop sending; messages still being sent after ``wait`` seconds are left ``sending`` and
        retried by the next leader once their deadline passes (they may arrive twice)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(wait)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        backoff = Backoff(1.0, 30.0)
        while not self._stop.is_set():
            self._wake.wait(backoff.delay or 1.0)
            self._wake.clear()
            if not self.leading.is_set() or not self.rules():
                continue
            try:
                while self.send_due():
                    pass
                backoff.succeeded()
            except DatabaseError as exc:
                log.warning(
                    "notifications: database error, retrying", error=exc.reason, retry_in=backoff.failed()
                )

    def send_due(self, wait: bool = False) -> int:
        """Claim what is due and hand it to the senders (``wait``: send here, one by one, as a test
        or `--once` does); return how many were claimed."""
        with self._lock:
            free = SENDERS - len(self._busy) if not wait else SENDERS
            busy = set(self._busy)
        if free <= 0 or self._stop.is_set():
            return 0
        deadline = 2 * max((r.config.timeout for r in self.rules()), default=10.0) + 5.0
        claimed = self.store.claim_deliveries(self.clock(), busy, free, deadline)
        for delivery in claimed:
            if wait or self._pool is None:
                self._deliver(delivery)
                continue
            with self._lock:
                self._busy.add((delivery.rule, delivery.channel))
            self._pool.submit(self._deliver, delivery)
        return len(claimed)

    def _deliver(self, delivery: Delivery) -> None:
        started = self.clock()
        rule = next((r for r in self.rules() if r.name == delivery.rule), None)
        error: str | None = None
        try:
            if rule is None:
                raise ChannelError(f"rule {delivery.rule!r} is no longer in the config")
            send(rule, delivery, self.env)
        except ChannelError as exc:
            error = str(exc)
        except Exception as exc:  # a bug in a channel (or Apprise) must not end the dispatcher
            error = f"{type(exc).__name__}: {exc}"
        now = self.clock()
        retry_at = None
        if error is not None and rule is not None and delivery.attempt < delivery.max_attempts:
            retry_at = now + timedelta(seconds=retry_delay(delivery.attempt))
        try:
            self.store.finish_delivery(
                delivery, ok=error is None, error=error, started=started, now=now, retry_at=retry_at
            )
        except DatabaseError as exc:  # left sending: retried after its deadline
            log.warning("notifications: outcome not recorded", id=delivery.id, error=exc.reason)
        finally:
            with self._lock:
                self._busy.discard((delivery.rule, delivery.channel))
            self._wake.set()
        fields = {"rule": delivery.rule, "channel": delivery.channel, "on": delivery.event}
        if error is None:
            log.info("notification sent", attempt=delivery.attempt, **fields)
        else:
            (log.warning if retry_at else log.error)(
                "notification not sent" + ("; retrying" if retry_at else "; giving up"),
                error=error,
                attempt=f"{delivery.attempt}/{delivery.max_attempts}",
                **fields,
            )
