"""The dashboard's figures (`make bench`, step "web"): with a million finished runs in history,
how fast the pages and the API answer, how soon a line a run prints reaches a browser, what
orchd-web costs idle, and 50 live clients held for a minute.

Everything is real: an orchd-web process, an orchd-worker executing the run whose output is
tailed, HTTP over a socket, server-sent events read as a browser reads them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
from sqlalchemy import select, text

from orchd.db.schema import deployments
from orchd.db.store import Store
from tests.bench.common import (
    Databases,
    Figure,
    cpu_seconds,
    daemons,
    percentile,
    rss_mb,
    start,
    store_for,
    wait_until,
    write_config,
)
from tests.bench.quiet import Meter, postmaster_pid
from tests.web_support import free_port

DEPLOYMENTS = 20
#: prints the time, 60 times, 50 ms apart (TOML escapes: \n is a newline of the script)
TICKER = "import time\\nfor i in range(60):\\n print(repr(time.time()), flush=True)\\n time.sleep(0.05)"


def config_body(port: int) -> str:
    jobs = "".join(
        f'[[deployments]]\nname = "job-{n:02d}"\ncommand = ["true"]\n'
        f'schedules = [{{ cron = "{n} * * * *" }}]\n'
        for n in range(DEPLOYMENTS)
    )
    return (
        f'[worker]\npoll_interval = "1s"\n[web]\nlisten = "127.0.0.1:{port}"\n'
        f'[[deployments]]\nname = "ticker"\ncommand = ["python3", "-c", "{TICKER}"]\n{jobs}'
    )


def history(store: Store, count: int) -> None:
    """``count`` finished runs over the last 30 days, spread over the deployments, one in fifty
    FAILED with an error, each with its three history rows: inserted by the database itself;
    and 20 runs planned for the next hours."""
    with store.engine.begin() as conn:
        ids = conn.execute(select(deployments.c.id).where(deployments.c.name.like("job-%"))).scalars().all()
        low, high = min(ids), max(ids)
        span = 30 * 86400 / count
        if store.engine.dialect.name == "postgresql":
            series = "SELECT i FROM generate_series(1, :n) AS s(i)"
            at = "now() - make_interval(secs => i * :span)"
            later = f"{at} + interval '1 second'"
        else:
            series = "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n) "
            series += "SELECT i FROM s"
            at = "strftime('%Y-%m-%d %H:%M:%f000', 'now', '-' || (i * :span) || ' seconds')"
            later = "strftime('%Y-%m-%d %H:%M:%f000', 'now', '-' || (i * :span - 1) || ' seconds')"
        conn.execute(
            text(
                "INSERT INTO runs (deployment_id, pool, state, priority, scheduled_for, due_at, attempt, "
                "max_attempts, parameters, started_at, finished_at, exit_code, error, worker, "
                "created_at, updated_at) "
                f"SELECT :low + i % (:high - :low + 1), 'default', "
                "CASE WHEN i % 50 = 0 THEN 'FAILED' ELSE 'COMPLETED' END, 0, "
                f"{at}, {at}, 1, 1, '{{}}', {at}, {later}, CASE WHEN i % 50 = 0 THEN 1 ELSE 0 END, "
                "CASE WHEN i % 50 = 0 THEN 'exit code 1: connection refused' END, 'bench', "
                f"{at}, {at} FROM ({series}) AS g"
            ),
            {"n": count, "span": span, "low": low, "high": high},
        )
        for source, target in ((None, "SCHEDULED"), ("SCHEDULED", "PENDING"), ("PENDING", "RUNNING")):
            conn.execute(
                text(
                    "INSERT INTO run_states (run_id, from_state, to_state, attempt, at, actor) "
                    "SELECT id, :source, :target, 1, scheduled_for, 'bench' FROM runs"
                ),
                {"source": source, "target": target},
            )
        conn.execute(
            text(
                "INSERT INTO run_states (run_id, from_state, to_state, attempt, at, actor) "
                "SELECT id, 'RUNNING', state, 1, finished_at, 'bench' FROM runs"
            )
        )
    # runs planned for later, as a scheduler keeps them: statistics taken of a queue that never
    # holds any would tell SQLite's planner the waiting runs' index is no help
    now = datetime.now(UTC)
    for hour in range(1, 21):
        store.create_run(f"job-{hour % DEPLOYMENTS:02d}", now, at=now + timedelta(hours=hour))
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        else:
            conn.execute(text("ANALYZE"))
            conn.commit()


def _timed(client: httpx2.Client, url: str, repeats: int) -> list[float]:
    client.get(url)  # warm: templates compiled, statements prepared
    took = []
    for _ in range(repeats):
        began = time.perf_counter()
        answer = client.get(url)
        took.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200, (url, answer.status_code, answer.text[:200])
    return took


def _tail_latency(base: str, count: int) -> list[float]:
    """Create a ticker run, follow its output stream; each line is the time it was printed."""
    run_id = httpx2.post(f"{base}/api/deployments/ticker/runs", json={}).json()["id"]
    delays: list[float] = []
    with httpx2.stream(
        "GET", f"{base}/api/runs/{run_id}/logs/stream", timeout=httpx2.Timeout(10, read=60)
    ) as s:
        for line in s.iter_lines():
            if line.startswith("data: ") and '"line"' in line:
                data = json.loads(line[6:])
                delays.append((time.time() - float(data["line"])) * 1000)
                if len(delays) >= count:
                    break
    return delays


def _hold_clients(base: str, clients: int, seconds: float) -> tuple[int, list[int], int]:
    """``clients`` event streams held for ``seconds`` while a run is created every second:
    (errors, events received per client, runs created)."""
    received = [0] * clients
    errors = [0]
    stop = threading.Event()
    opened = threading.Barrier(clients + 1, timeout=60)

    def client(n: int) -> None:
        try:
            with httpx2.stream("GET", f"{base}/api/events/stream", timeout=httpx2.Timeout(10, read=30)) as s:
                opened.wait()
                for line in s.iter_lines():
                    if line.startswith("data: "):
                        received[n] += 1
                    if stop.is_set():
                        return
        except Exception:
            errors[0] += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    opened.wait()
    created = 0
    deadline = time.monotonic() + seconds
    with httpx2.Client() as api:
        while time.monotonic() < deadline:
            assert api.post(f"{base}/api/deployments/job-00/runs", json={"at": "1h"}).status_code == 201
            created += 1
            time.sleep(1.0)
    time.sleep(1.0)
    stop.set()
    with httpx2.Client() as api:  # one more event wakes every client to see ``stop``
        api.post(f"{base}/api/deployments/job-00/runs", json={"at": "1h"})
    for thread in threads:
        thread.join(timeout=30)
    return errors[0], received, created


def bench_web(dbs: Databases, backend: str, tmp: Path, quick: bool, settle: float) -> list[Figure]:
    count = 100_000 if quick else 1_000_000
    repeats = 20 if quick else 100
    url = dbs.new(backend)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    path = tmp / f"web-{backend}.toml"
    config = write_config(path, url, config_body(port))
    store = store_for(url)
    store.sync(config, datetime.now(UTC))
    began = time.perf_counter()
    history(store, count)
    print(
        f"[bench] web on {backend}: {count} runs of history in {time.perf_counter() - began:.0f}s", flush=True
    )
    # written to disk now, not by the kernel's writeback during the page timings: its threads'
    # CPU (counted as other processes') and its I/O would land in them
    os.sync()
    figures: list[Figure] = []
    with daemons(tmp) as procs:
        web = start(procs, tmp, "orchd-web", "--config", str(path))
        wait_until(lambda: _healthy(base), 60, "orchd-web")
        httpx2.get(f"{base}/")
        time.sleep(2)
        fresh_rss = rss_mb(web.pid)
        cpu0 = cpu_seconds(web.pid)
        idle = 10 if quick else 30
        time.sleep(idle)
        idle_cpu = (cpu_seconds(web.pid) - cpu0) * 60 / idle
        figures += [
            Figure(
                "web idle RSS (after the first page)",
                backend,
                "MB",
                [fresh_rss],
                "<= 70 MB",
                lambda v: v <= 70,
            ),
            Figure("web idle CPU", backend, "CPU-s/min", [idle_cpu], "<= 0.2 CPU-s/min", lambda v: v <= 0.2),
        ]
        sample = httpx2.get(f"{base}/api/runs?limit=1&state=FAILED").json()["runs"][0]["id"]
        pages = {
            "overview /": "/",
            "runs page /runs": "/runs",
            "runs page, FAILED of one deployment": "/runs?state=FAILED&deployment=job-07",
            "runs page, CRASHED or TIMED_OUT (none)": "/runs?state=CRASHED&state=TIMED_OUT",
            "run detail /runs/ID": f"/runs/{sample}",
            "deployments /deployments": "/deployments",
            "API /api/runs": "/api/runs",
            "API /api/runs, 3rd page": None,
            "API /api/runs/ID": f"/api/runs/{sample}",
        }
        # The page timings get a quiet verdict of their own: the step's (run.py) also covers
        # seeding a million runs and the SSE minute, and a neighbour busy then says nothing
        # about these 30 seconds, nor a neighbour busy now about those.
        meter = Meter(lambda: postmaster_pid(dbs.pg.data_dir if dbs.pg else None))
        if not meter.settle(settle):
            print(f"[bench] the machine stayed busy for {settle:.0f}s before the web pages: going on")
        timed = len(figures)
        before = meter.begin()
        with httpx2.Client(base_url=base, timeout=30) as client:
            cursor = client.get("/api/runs").json()["next_cursor"]
            cursor = client.get("/api/runs", params={"cursor": cursor}).json()["next_cursor"]
            pages["API /api/runs, 3rd page"] = f"/api/runs?cursor={cursor}"
            for name, target in pages.items():
                took = _timed(client, str(target), repeats)
                figures.append(Figure(f"web p50 {name}", backend, "ms", [percentile(took, 50)]))
                figures.append(
                    Figure(
                        f"web p95 {name}",
                        backend,
                        "ms",
                        [percentile(took, 95)],
                        "<= 50 ms",
                        lambda v: v <= 50,
                    )
                )
        section = meter.end("web pages", backend, before)
        print(f"[bench] {section.line()}", flush=True)
        for figure in figures[timed:]:
            figure.section, figure.quiet = section.name, section.quiet
        figures.append(Figure("web RSS after the page runs", backend, "MB", [rss_mb(web.pid)]))
        start(procs, tmp, "orchd-worker", "--config", str(path))
        delays = _tail_latency(base, 50)
        figures.append(
            Figure("web log tail p50 (print -> SSE client)", backend, "ms", [percentile(delays, 50)])
        )
        figures.append(
            Figure(
                "web log tail p95 (print -> SSE client)",
                backend,
                "ms",
                [percentile(delays, 95)],
                "<= 250 ms",
                lambda v: v <= 250,
            )
        )
        hold = 10 if quick else 60
        errors, received, created = _hold_clients(base, 50, hold)
        complete = sum(n >= created for n in received)
        figures += [
            Figure(
                f"web 50 SSE clients for {hold}s: errors", backend, "errors", [errors], "0", lambda v: v == 0
            ),
            Figure(
                f"web 50 SSE clients: got every event ({created} runs)",
                backend,
                "clients",
                [complete],
                "50",
                lambda v: v == 50,
            ),
            Figure("web RSS with 50 SSE clients", backend, "MB", [rss_mb(web.pid)]),
        ]
    store.engine.dispose()
    return figures


def _healthy(base: str) -> bool:
    try:
        return httpx2.get(f"{base}/api/health", timeout=2).status_code == 200
    except httpx2.HTTPError:
        return False
