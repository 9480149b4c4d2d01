"""Simulated hosts for the scale-out tests: network namespaces (``ip netns``, needs root), each
reaching the test machine over a veth pair of its own, so one can be cut off from the database by
taking its link down, as a switch port or a cable would.

The test PostgreSQL (and PgBouncer) listen on 127.0.0.1 only; a ``Forwarder`` on the machine's
side of the veth pairs relays each namespace's connections to them.  It is a plain byte relay
that never closes a connection on its own: during a cut, the server sees what it would see of a
host that vanished (a silent peer), no more.

Names and addresses carry this process's pid and a subnet no interface uses yet, so two test
sessions on one machine do not meet; everything is removed by ``hosts()`` however the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def usable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip (iproute2) is not installed"
    probe = f"orchd-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def require() -> None:
    """Skip without namespaces; in CI that is a failure."""
    reason = usable()
    if reason is not None:
        reason = f"network-partition tests: {reason}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@dataclass
class Host:
    """One namespace: ``address`` is its own end of the veth pair, ``gateway`` the machine's end
    (where the forwarder listens)."""

    name: str
    outside: str  # interface on the machine's side
    address: str
    gateway: str

    def command(self, argv: Sequence[str], hostname: str | None = None) -> list[str]:
        """``argv`` run inside the namespace (with a host name of its own when given)."""
        inner = list(argv)
        if hostname:
            inner = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *inner]
        return ["ip", "netns", "exec", self.name, *inner]

    def cut(self) -> None:
        """The link goes down on the machine's side: packets to and from the host are lost."""
        _ip("link", "set", self.outside, "down")

    def heal(self) -> None:
        _ip("link", "set", self.outside, "up")


def _free_subnet() -> ipaddress.IPv4Network:
    used = _ip("-o", "-4", "addr", "show").stdout
    while True:
        net = ipaddress.IPv4Network(f"10.{random.randrange(64, 250)}.{random.randrange(0, 250)}.0/24")
        if f" {str(net.network_address)[:-1]}" not in used:
            return net


def _make(index: int, subnet: ipaddress.IPv4Network) -> Host:
    tag = f"{os.getpid() % 100000}x{index}"
    pair = list(subnet.subnets(new_prefix=30))[index % 64]
    gateway, address = (str(a) for a in list(pair.hosts())[:2])
    host = Host(f"orchd-{tag}", f"oh{tag}", address, gateway)
    inside = f"on{tag}"
    _ip("netns", "add", host.name)
    _ip("link", "add", host.outside, "type", "veth", "peer", "name", inside)
    _ip("link", "set", inside, "netns", host.name)
    _ip("addr", "add", f"{gateway}/30", "dev", host.outside)
    _ip("link", "set", host.outside, "up")
    for args in (
        ("addr", "add", f"{address}/30", "dev", inside),
        ("link", "set", inside, "up"),
        ("link", "set", "lo", "up"),
    ):
        _ip("-n", host.name, *args)
    return host


def _remove(host: Host) -> None:
    _ip("link", "del", host.outside, check=False)  # takes its peer along
    _ip("netns", "del", host.name, check=False)


@contextlib.contextmanager
def hosts(count: int) -> Iterator[list[Host]]:
    made: list[Host] = []
    subnets: list[ipaddress.IPv4Network] = []
    try:
        for index in range(count):
            if index % 64 == 0:
                subnets.append(_free_subnet())
            made.append(_make(index, subnets[-1]))
        yield made
    finally:
        for host in made:
            _remove(host)


@dataclass
class Forwarder:
    """Relays TCP connections made to ``port`` on the given addresses to 127.0.0.1:``target``,
    in a thread of its own (asyncio: hundreds of connections are a few coroutines each)."""

    addresses: Sequence[str]
    target: int
    port: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _servers: list[asyncio.Server] = field(default_factory=list)

    def start(self) -> Forwarder:
        ready = threading.Event()

        async def serve() -> None:
            for address in self.addresses:
                server = await asyncio.start_server(self._relay, address, self.port)
                self.port = self.port or server.sockets[0].getsockname()[1]
                self._servers.append(server)
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="forwarder", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the forwarder did not start"
        return self

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def stop(self) -> None:
        def close() -> None:
            for server in self._servers:
                server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        if self._thread is not None:
            self._thread.join(timeout=10)
