"""The Prometheus endpoint, scraped over real HTTP and parsed with prometheus-client's own parser:
in-process with a scheduler tick and a worker burst, and from a real `orchd up` process."""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchd import metrics
from orchd.config import load_config
from orchd.db.engine import make_engine
from orchd.db.store import Store
from orchd.errors import ConfigError, OrchdError
from orchd.scheduler.daemon import Scheduler
from orchd.worker.daemon import Worker
from tests.cli_support import now, write_config
from tests.conftest import MakeConfig
from tests.helpers import daemons, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def endpoint() -> Iterator[int]:
    port = free_port()
    server = metrics.serve(f"127.0.0.1:{port}")
    yield port
    server.shutdown()
    server.server_close()


def test_scheduler_and_worker_metrics(endpoint: int, make_config: MakeConfig, store: Store) -> None:
    config = make_config(
        """
        [[deployments]]
        name = "job"
        command = ["true"]
        [[deployments]]
        name = "bad"
        command = ["false"]
        """
    )
    store.sync(config, now())
    for name in ("job", "job", "bad"):
        store.create_run(name, now())
    observer = metrics.Metrics(store)  # what orchd-scheduler and orchd-worker are given
    observer.leading(False)  # forget readings of other tests' databases
    observer.leading(True)
    before = scrape(endpoint)
    Scheduler(config, store, observer=observer).tick()
    ticked = scrape(endpoint)
    assert value(ticked, "orchd_scheduler_leader") == 1
    assert value(ticked, "orchd_scheduler_ticks_total") == value(before, "orchd_scheduler_ticks_total") + 1
    ticks = "orchd_scheduler_tick_seconds_count"
    assert value(ticked, ticks) == value(before, ticks) + 1
    assert value(ticked, "orchd_queue_depth", pool="default") == 3
    assert value(ticked, "orchd_runs", state="SCHEDULED", pool="default") == 3
    assert ("orchd_runs", (("pool", "default"), ("state", "RUNNING"))) in ticked  # zero, not absent
    assert value(ticked, "orchd_queue_oldest_seconds", pool="default") >= 0
    Worker(config, store, ["default"], 4, name="w", burst=True, observer=observer).run(threading.Event())
    after = scrape(endpoint)
    assert value(after, "orchd_runs_claimed_total") == value(before, "orchd_runs_claimed_total") + 3
    completed = ("orchd_run_duration_seconds_count", {"deployment": "job", "state": "COMPLETED"})
    assert value(after, completed[0], **completed[1]) == value(before, completed[0], **completed[1]) + 2
    assert value(after, "orchd_run_duration_seconds_count", deployment="bad", state="FAILED") >= 1
    assert value(after, "orchd_schedule_lag_seconds_count", deployment="job") >= 2
    assert (
        value(after, "orchd_run_duration_seconds_bucket", deployment="job", state="COMPLETED", le="+Inf") >= 2
    )
    assert value(after, "orchd_claim_seconds_count") > value(before, "orchd_claim_seconds_count")
    names = (
        "orchd_heartbeats_total",
        "orchd_runs_reaped_total",
        "orchd_runs_missed_total",
        "orchd_runs_fenced_total",
    )
    for name in names:
        assert (name, ()) in after
    observer.leading(False)
    standby = scrape(endpoint)
    assert value(standby, "orchd_scheduler_leader") == 0
    assert not [key for key in standby if key[0] == "orchd_queue_depth"]  # only the leader reports the queue


def test_database_errors_are_counted(endpoint: int, tmp_path: Path) -> None:
    config = load_config(
        write_config(tmp_path / "orchd.toml", "postgresql://u:pw@127.0.0.1:1/gone", ""), env={}
    )
    before = value(scrape(endpoint), "orchd_database_errors_total", daemon="scheduler")
    stop = threading.Event()
    store = Store(make_engine(config.database), "scheduler")
    scheduler = Scheduler(config, store, observer=metrics.Metrics(store))
    thread = threading.Thread(target=scheduler.run, args=(stop,))
    thread.start()
    try:
        wait_for(
            lambda: value(scrape(endpoint), "orchd_database_errors_total", daemon="scheduler") > before,
            what="a database error counted",
        )
    finally:
        stop.set()
        thread.join(timeout=10)


def test_a_busy_port_is_one_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(
            OrchdError, match=rf"metrics: cannot listen on 127.0.0.1:{port}: Address already in use"
        ):
            metrics.serve(f"127.0.0.1:{port}")


@pytest.mark.parametrize("listen", ["", "127.0.0.1:9464", ":9464", "[::1]:9464", "metrics.local:80"])
def test_listen_addresses(listen: str, tmp_path: Path) -> None:
    path = tmp_path / "orchd.toml"
    path.write_text(f'[metrics]\nlisten = "{listen}"\n')
    assert load_config(path, env={}).metrics.listen == listen
    assert load_config("/dev/null", env={"ORCHD_METRICS_LISTEN": listen}).metrics.listen == listen


@pytest.mark.parametrize("listen", ["9464", "localhost", "127.0.0.1:0", "127.0.0.1:70000", "a b:1"])
def test_bad_listen_addresses(listen: str, tmp_path: Path) -> None:
    path = tmp_path / "orchd.toml"
    path.write_text(f'[metrics]\nlisten = "{listen}"\n')
    with pytest.raises(ConfigError, match=r"orchd.toml:2: metrics.listen: expected \"HOST:PORT\""):
        load_config(path, env={})


@pytest.mark.slow
def test_orchd_up_serves_both_daemons_metrics(tmp_path: Path, db_url: str) -> None:
    path = write_config(
        tmp_path / "orchd.toml",
        db_url,
        """
        [worker]
        poll_interval = "1s"
        [[deployments]]
        name = "tick"
        command = ["true"]
        schedules = [{ interval = "1s" }]
        """,
    )
    port = free_port()
    with daemons(tmp_path) as group:
        proc = group.start("orchd", "up", "--config", str(path), "--metrics-listen", f"127.0.0.1:{port}")

        def ran() -> Samples | None:
            try:
                samples = scrape(port)
            except OSError:
                return None
            done = value(samples, "orchd_run_duration_seconds_count", deployment="tick", state="COMPLETED")
            return samples if done and ("orchd_queue_depth", (("pool", "default"),)) in samples else None

        try:
            samples = wait_for(ran, timeout=30, what="a completed run in the metrics")
        except AssertionError:
            raise AssertionError(group.output()) from None
        assert value(samples, "orchd_scheduler_leader") == 1
        assert value(samples, "orchd_runs_materialized_total") >= 1
        assert value(samples, "orchd_runs_claimed_total") >= 1
        assert ("process_resident_memory_bytes", ()) in samples
        assert group.stop(proc) == 0
