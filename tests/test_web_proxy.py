"""orchd-web behind a real nginx, configured with the README's snippet: the dashboard under
``base_path``, server-sent events through the proxy as they happen (buffering off), and the
client address taken from X-Forwarded-For only when the proxy is one of ``web.trusted_proxies``.

Every process is real: nginx (Debian's nginx-light, as .ci/run installs it) and orchd-web on
loopback.  The browser side speaks from 127.0.0.5 (any 127/8 address is this machine), so the
address the proxy forwards differs from the proxy's own, 127.0.0.1.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.helpers import Daemons, daemons, wait_for
from tests.test_web_daemon import BEARER, Stream
from tests.web_support import free_port, load, synced_store, write_web_config

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parent.parent / "README.md"
#: where "the browser" connects from
CLIENT = "127.0.0.5"
NGINX = """
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port};
{location}
    }}
}}
"""


def readme_location(upstream_port: int) -> str:
    """The README's nginx ``location`` block, pointed at ``upstream_port``."""
    block = re.search(r"```nginx\n(location /orchd/ \{.*?\n\})\n```", README.read_text(), re.S)
    assert block, "README: the nginx snippet for the reverse proxy is gone"
    return textwrap.indent(block.group(1).replace("127.0.0.1:4200", f"127.0.0.1:{upstream_port}"), " " * 8)


class Site:
    def __init__(self, group: Daemons, proxy: str, direct: str, log: Path) -> None:
        self.group, self.proxy, self.direct, self.log = group, proxy, direct, log

    def client(self, base: str) -> httpx2.Client:
        """A client connecting from CLIENT, as a browser elsewhere would."""
        transport = httpx2.HTTPTransport(local_address=CLIENT)
        return httpx2.Client(base_url=base, transport=transport, headers=BEARER, timeout=20)

    def seen_as(self, path: str) -> str:
        """The client address orchd-web logged for the last request of ``path``."""

        def last() -> str | None:
            lines = [line for line in self.log.read_text().splitlines() if f"path={path} " in line]
            found = re.search(r"client=(\S+)", lines[-1]) if lines else None
            return found.group(1) if found else None

        return wait_for(last, 10, what=f"the access log line of {path}")


def _site(tmp_path: Path, db_url: str, trusted: str) -> Iterator[Site]:
    if not shutil.which("nginx", path="/usr/sbin:/usr/bin"):
        pytest.fail("the reverse-proxy tests need nginx: apt-get install nginx-light")
    web_port, proxy_port = free_port(), free_port()
    extra = f'listen = "127.0.0.1:{web_port}"\nbase_path = "/orchd/"\ntrusted_proxies = {trusted}\n'
    path = write_web_config(tmp_path, db_url, auth=True, extra=extra)
    store = synced_store(load(path, tmp_path))
    (tmp_path / "nginx.conf").write_text(
        NGINX.format(tmp=tmp_path, port=proxy_port, location=readme_location(web_port))
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        with daemons(logs) as group:
            web = group.start("orchd-web", "--config", str(path), env={"ORCHD_STATE_DIR": str(tmp_path)})
            nginx = group.spawn(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], "nginx")
            site = Site(group, f"http://127.0.0.1:{proxy_port}/orchd/", f"http://127.0.0.1:{web_port}/orchd/",
                        logs / "orchd-web-0.log")  # fmt: skip
            wait_for(lambda: _answers(site.proxy + "api/health"), 20, what="orchd-web through nginx")
            yield site
            assert group.stop(nginx) == 0, (tmp_path / "nginx-error.log").read_text()
            assert group.stop(web) == 0, group.output()
    finally:
        store.engine.dispose()


def _answers(url: str) -> bool:
    try:
        return httpx2.get(url, timeout=2).status_code == 200
    except httpx2.HTTPError:
        return False


@pytest.fixture
def behind_trusted(tmp_path: Path, db_url: str) -> Iterator[Site]:
    """orchd-web trusting the default (loopback): nginx on 127.0.0.1 is believed."""
    yield from _site(tmp_path, db_url, '["127.0.0.1", "::1"]')


@pytest.fixture
def behind_untrusted(tmp_path: Path, db_url: str) -> Iterator[Site]:
    """orchd-web trusting another proxy only: nginx's headers are not believed."""
    yield from _site(tmp_path, db_url, '["192.0.2.1"]')


def test_the_dashboard_under_its_base_path_and_live_events_through_nginx(behind_trusted: Site) -> None:
    site = behind_trusted
    with site.client(site.proxy) as client:
        assert client.get("api/health").json()["status"] == "ok"
        page = httpx2.Client(base_url=site.proxy, timeout=20).get("runs", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/orchd/login?next=/orchd/runs"
        login = client.get("login")
        assert 'href="/orchd/static/orchd.css' in login.text
        assert client.get("static/orchd.css").status_code == 200
        # server-sent events pass as they are sent: the stream opens (its first bytes arrive
        # through the proxy unbuffered) and an event created through the proxy reaches it
        events = Stream(site.proxy + "api/events/stream").start()
        created = client.post("api/deployments/hello/runs", json={"parameters": {}})
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        seen = events.wait("state", lambda d: d["run_id"] == run_id)
        assert (seen["to"], seen["deployment"]) == ("SCHEDULED", "hello")
        assert client.post(f"api/runs/{run_id}/cancel").json()["state"] == "CANCELLED"
        assert events.wait("state", lambda d: d["run_id"] == run_id and d["to"] == "CANCELLED")


def test_x_forwarded_for_is_believed_from_a_trusted_proxy_only(behind_trusted: Site) -> None:
    site = behind_trusted
    with site.client(site.proxy) as client:
        assert client.get("api/pools").status_code == 200
        assert site.seen_as("/orchd/api/pools") == CLIENT  # nginx said who asked
        # a forged header is one more hop to the left of what nginx adds: the client is still
        # the address the trusted proxy saw
        assert client.get("api/workers", headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 200
        assert site.seen_as("/orchd/api/workers") == CLIENT
    # straight to orchd-web from an address that is not a trusted proxy: the header is ignored
    with site.client(site.direct) as client:
        assert client.get("api/deployments", headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 200
        assert site.seen_as("/orchd/api/deployments") == CLIENT


def test_x_forwarded_for_of_a_proxy_not_trusted_is_ignored(behind_untrusted: Site) -> None:
    site = behind_untrusted
    with site.client(site.proxy) as client:
        assert client.get("api/pools").status_code == 200
    assert site.seen_as("/orchd/api/pools") == "127.0.0.1"  # the proxy itself, not what it claims
