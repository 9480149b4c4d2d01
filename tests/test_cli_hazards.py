"""A command whose reader goes away stops quietly; a daemon whose log reader goes away keeps
working; a database error carries the schema hint only when an old schema is its likely cause."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text

from orchd.db.store import Store
from tests.cli_support import Orchd, now, one_line_error, write_config
from tests.helpers import BIN

BODY = """
[[deployments]]
name = "chatty"
command = ["sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done"]
schedules = [{ interval = "1h" }]
"""


def _without_reader(args: list[str], tmp_path: Path, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """Run a command whose stdout is a pipe nobody reads any more: its first write fails."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [str(BIN / args[0]), *args[1:]],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            env={**os.environ, "ORCHD_STATE_DIR": str(tmp_path / "state")},
            **kwargs,  # type: ignore[arg-type]
        )
    finally:
        os.close(write_end)


@pytest.fixture
def chatty(tmp_path: Path, store: Store, db_url: str) -> tuple[Path, int]:
    config = write_config(tmp_path / "orchd.toml", db_url, BODY)
    orchd = Orchd(config, tmp_path / "state")
    store.sync(orchd.config(), now())
    run_id = store.create_run("chatty", now())
    for _ in range(60):  # enough rows that `run ls` writes more than a pipe holds
        store.create_run("chatty", now())
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO run_logs (run_id, attempt, at, stream, line) VALUES (:r, 1, :at, 'stdout', :l)"
            ),
            [{"r": run_id, "at": now(), "l": f"line {i}"} for i in range(3000)],
        )
    return config, run_id


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "command",
    ["run ls", "run logs {run}", "status", "deployment show chatty", "schedule preview chatty", "--help"],
)
def test_a_command_whose_reader_went_away_stops_quietly(
    chatty: tuple[Path, int], tmp_path: Path, command: str
) -> None:
    """`orchd run ls | head -1` printed `[Errno 32] Broken pipe` and exited 1."""
    config, run_id = chatty
    args = ["orchd", *command.format(run=run_id).split(), "--config", str(config)]
    if command == "--help":
        args = ["orchd", "--help"]
    result = _without_reader(args, tmp_path)
    assert result.stderr == b"", result.stderr.decode()
    assert result.returncode == -signal.SIGPIPE, result  # a shell says 141


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_worker_whose_log_reader_went_away_keeps_working(
    chatty: tuple[Path, int], tmp_path: Path, store: Store
) -> None:
    """Every line a run prints is logged: with stderr gone, the first one used to kill the worker."""
    config, run_id = chatty
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [str(BIN / "orchd-worker"), "--config", str(config), "--burst", "--concurrency", "8"],
            stdout=write_end,
            stderr=write_end,
            timeout=120,
            env={**os.environ, "ORCHD_STATE_DIR": str(tmp_path / "state"), "ORCHD_LOGGING_FORMAT": "logfmt"},
        )
    finally:
        os.close(write_end)
    assert result.returncode == 0
    row = store.get_run(run_id)
    assert row is not None and row.state == "COMPLETED"


def test_the_schema_hint_only_when_the_schema_is_the_likely_cause(
    tmp_path: Path, store: Store, db_url: str, backend: str
) -> None:
    orchd = Orchd(write_config(tmp_path / "orchd.toml", db_url, BODY), tmp_path / "state")
    store.sync(orchd.config(), now())
    run_id = store.create_run("chatty", now())
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE run_logs"))
    one_line_error(orchd("run", "logs", str(run_id)), 1, "(is the schema current? `orchd db status`)")
    if backend == "sqlite":  # a file that is not a database at all
        store.engine.dispose()
        path = Path(db_url.removeprefix("sqlite:///"))
        for extra in ("-wal", "-shm"):
            Path(f"{path}{extra}").unlink(missing_ok=True)
        path.write_bytes(b"not a database, " * 512)
        result = orchd("run", "ls")
        one_line_error(result, 1, "(is database.url an orchd SQLite database?)")
        assert "schema" not in result.stderr
