"""Real receivers for notification tests, the chaos run and the bench: a local HTTP server that
records (and verifies) what orchd POSTs, and a local SMTP server (aiosmtpd)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def signed_by(self, secret: str) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("X-Orchd-Signature-256", ""), expected)


@dataclass
class Receiver:
    """What a local HTTP server got; ``status`` is what it answers (500: a receiver that is down)."""

    url: str
    received: list[Received] = field(default_factory=list)
    status: int = 200
    #: Seconds between receiving a message and answering: deliveries stay in flight that long.
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[Any]:
        with self.lock:
            return [r.json for r in self.received]

    def keys(self) -> list[str]:
        with self.lock:
            return [r.headers.get("Idempotency-Key", "") for r in self.received]


@contextmanager
def http_receiver() -> Iterator[Receiver]:
    """A webhook (and Apprise json://) endpoint on 127.0.0.1, stopped when the block ends."""
    receiver = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.received.append(Received(self.path, dict(self.headers.items()), body, time.time()))
            time.sleep(receiver.delay)
            self.send_response(receiver.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@dataclass
class Mailbox:
    port: int
    messages: list[Any] = field(default_factory=list)


@contextmanager
def smtp_receiver() -> Iterator[Mailbox]:
    """An SMTP server on 127.0.0.1 (aiosmtpd) keeping every message it is sent."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    mailbox = Mailbox(port=0)

    class Keep(Message):  # type: ignore[misc]
        def handle_message(self, message: Any) -> None:
            mailbox.messages.append(message)

    with socket.socket() as probe:  # aiosmtpd's readiness check cannot take port 0: pick a free one
        probe.bind(("127.0.0.1", 0))
        mailbox.port = probe.getsockname()[1]
    controller = Controller(Keep(), hostname="127.0.0.1", port=mailbox.port, ready_timeout=10)
    controller.start()
    try:
        yield mailbox
    finally:
        controller.stop()
