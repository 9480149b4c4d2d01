"""What a person sees on a real terminal (a pty): a run's control characters are shown escaped,
never acted on, unless they ask for --raw; a pipe gets the output exactly as the run wrote it."""

from __future__ import annotations

import os
import pty
import select
import subprocess
from pathlib import Path

import pytest

from orchd.db.store import Store
from tests.cli_support import Orchd, clean_env, now, write_config
from tests.helpers import BIN

NASTY = "bell\a esc\x1b[31mred\x1b[0m cr\rX\ttab"


def on_terminal(args: list[str], env: dict[str, str | None], timeout: float = 30.0) -> str:
    """Run `orchd ARGS` with stdout and stderr on a new pty; return what the terminal received."""
    master, slave = pty.openpty()
    environ = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    proc = subprocess.Popen([str(BIN / "orchd"), *args], stdout=slave, stderr=slave, env=environ)
    os.close(slave)
    received = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise AssertionError(f"orchd {args} printed nothing for {timeout}s")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            received += chunk
    finally:
        os.close(master)
        assert proc.wait(timeout=timeout) == 0
    return received.decode().replace("\r\n", "\n")  # the tty turns \n into \r\n


@pytest.fixture
def run_with_control_bytes(tmp_path: Path, db_url: str, store: Store) -> tuple[Orchd, int]:
    orchd = Orchd(write_config(tmp_path / "orchd.toml", db_url), tmp_path / "state")
    store.sync(orchd.config(), now())
    run_id = store.create_run("hello", now())
    store.append_logs([{"run_id": run_id, "attempt": 1, "at": now(), "stream": "stdout", "line": NASTY}])
    return orchd, run_id


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_control_characters_are_escaped_on_a_terminal_and_raw_on_request(
    run_with_control_bytes: tuple[Orchd, int],
) -> None:
    orchd, run_id = run_with_control_bytes
    env = {**clean_env(orchd.state_dir), "NO_COLOR": "1"}
    config = ["--config", str(orchd.path)]
    shown = "bell\\a esc\\x1b[31mred\\x1b[0m cr\\rX\ttab"
    assert on_terminal(["run", "logs", str(run_id), *config], env) == shown + "\n"
    assert f"  stdout: {shown}\n" in on_terminal(["run", "show", str(run_id), *config], env)
    assert on_terminal(["run", "logs", str(run_id), "--raw", *config], env) == NASTY + "\n"
    assert f"  stdout: {NASTY}\n" in on_terminal(["run", "show", str(run_id), "--raw", *config], env)
    piped = orchd("run", "logs", str(run_id))  # not a terminal: exactly what the run wrote
    assert piped.stdout == NASTY + "\n"
    assert f"output (1 line):\n  stdout: {NASTY}\n" in orchd("run", "show", str(run_id)).stdout
