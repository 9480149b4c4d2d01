"""orchd-web as a daemon: uvicorn serving the app, with the systemd protocol of the other daemons.

READY=1 once the database answers and the socket listens; WATCHDOG=1 from uvicorn's own main
loop (the event loop that serves requests: if it hangs, the pings stop and systemd restarts the
daemon); STOPPING=1 on SIGTERM, after which the live streams are ended so that connections close
and the process exits within seconds.  orchd's own signal handling is used (uvicorn's is
bypassed), so ``orchd up`` can run the server in a thread beside the scheduler and the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
from collections.abc import Iterator

import uvicorn

from orchd.config import Config
from orchd.db.store import Store
from orchd.errors import ConfigError, OrchdError
from orchd.logging import get_logger
from orchd.notify import Notifier
from orchd.web.app import create_app
from orchd.web.auth import Auth
from orchd.web.live import Feed

log = get_logger("orchd.web")
#: How often the server's loop looks at the stop flag and pings the watchdog.
TICK = 0.5


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "" (every interface) or a name that may resolve anywhere


def check_exposure(listen: str, auth: Auth) -> None:
    """Refuse a non-loopback address while nobody has to log in: a dashboard that can start jobs
    would be a remote-execution service for the whole network."""
    host, _ = split_listen(listen)
    if not is_loopback(host) and not auth.enabled:
        raise ConfigError(
            f"web.listen: {listen} is reachable from other machines and no auth is configured: "
            "add a user (`orchd web passwd NAME --role operator`) or a token (web.token_file), "
            "or listen on 127.0.0.1"
        )


def bind(listen: str) -> socket.socket:
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on the connections only then (else Nagle and
    # delayed ACKs add 40 ms to every keep-alive request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    except OSError as exc:
        sock.close()
        raise OrchdError(f"web.listen: cannot listen on {listen}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def url_of(config: Config, sock: socket.socket) -> str:
    """Where people open the dashboard: public_url, else the bound address."""
    if config.web.public_url:
        return config.web.public_url
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = socket.gethostname()
    return f"http://{shown}:{port}{config.web.base_path}"


class Server(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, stop: threading.Event, notifier: Notifier, url: str, feed: Feed
    ) -> None:
        super().__init__(config)
        self.feed = feed
        self.stop = stop
        self.notifier = notifier
        self.url = url

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # orchd's Signals set ``stop``; on_tick turns it into should_exit

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            log.info("serving the dashboard", url=self.url)
            self.notifier.ready(f"serving {self.url}")

    async def main_loop(self) -> None:
        """uvicorn's loop, woken twice a second instead of ten times: idle costs less CPU."""
        while not await self.on_tick(0):  # tick 0: the Date header is renewed every time
            await asyncio.sleep(TICK)

    async def on_tick(self, counter: int) -> bool:
        self.notifier.watchdog()
        if self.stop.is_set() and not self.should_exit:
            self.notifier.stopping()
            log.info("stopping: closing live streams")
            self.should_exit = True
            await self.feed.close()
        return await super().on_tick(counter)


def make_server(
    config: Config, store: Store, auth: Auth, sock: socket.socket, stop: threading.Event, notifier: Notifier
) -> Server:
    app = create_app(config, store, auth=auth)
    settings = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,  # our own access log (app.Observe) has the user and the duration
        proxy_headers=True,
        forwarded_allow_ips=",".join(config.web.trusted_proxies) or "",
        timeout_graceful_shutdown=5,
        lifespan="on",
        server_header=False,
        ws="none",
        http="h11",
        loop="asyncio",
    )
    return Server(settings, stop, notifier, url_of(config, sock), app.state.web.feed)


def serve(
    config: Config, store: Store, auth: Auth, sock: socket.socket, stop: threading.Event, notifier: Notifier
) -> None:
    """Serve until ``stop`` is set."""
    server = make_server(config, store, auth, sock, stop, notifier)
    server.run(sockets=[sock])
    log.info("orchd-web stopped")
