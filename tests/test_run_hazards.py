"""Nothing a run prints, no way it dies and no deployment it is started from may kill its worker
(and with it, through the guardian, every other run of that worker), on either database.

Each test also runs a healthy run beside the hazard and checks it COMPLETED: a worker that died
would have left it CRASHED or stuck.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from orchd.config import Config
from orchd.db.store import Store
from orchd.retries import MAX_DELAY, retry_delay
from orchd.worker.daemon import Worker
from orchd.worker.output import decode_line, encode_line
from orchd.worker.process import Guardian, describe_exit
from tests.conftest import MakeConfig

NOW = datetime.now(UTC)
#: Prints the bytes given as hex in the run's parameters, on stdout and (reversed) on stderr.
PRINT_HEX = (
    "import json, os, sys; p = json.loads(os.environ['ORCHD_PARAMETERS']); "
    "data = bytes.fromhex(p['hex']) * p['times']; "
    "sys.stdout.buffer.write(data); sys.stderr.buffer.write(data[::-1])"
)
HEALTHY = """
[[deployments]]
name = "healthy"
command = ["sh", "-c", "sleep 0.3; echo fine"]
"""


def _burst(config: Config, store: Store, concurrency: int = 8) -> None:
    Worker(config, store, ["default"], concurrency, name="w", burst=True).run(threading.Event())


def _stored_bytes(store: Store, run_id: int, stream: str) -> bytes:
    return b"\n".join(decode_line(r.line) for r in store.run_logs(run_id) if r.stream == stream)


def _assert_healthy_completed(store: Store, run_id: int) -> None:
    row = store.get_run(run_id)
    assert row is not None and row.state == "COMPLETED", row


# ---------------------------------------------------------------- output


@settings(max_examples=300)
@given(st.binary(max_size=300).filter(lambda b: b"\n" not in b))
def test_output_lines_are_stored_losslessly_as_text_both_databases_accept(raw: bytes) -> None:
    text = encode_line(raw)
    assert "\x00" not in text
    text.encode("utf-8")  # no lone surrogate: strict UTF-8, as PostgreSQL's text needs
    assert decode_line(text) == raw


@settings(max_examples=200)
@given(st.text().filter(lambda t: "\n" not in t and "\x00" not in t and "\\" not in t))
def test_plain_text_is_stored_as_it_is(line: str) -> None:
    assert encode_line(line.encode("utf-8", errors="surrogatepass")) == line or any(
        0xD800 <= ord(c) <= 0xDFFF for c in line
    )


def test_only_what_needs_it_is_escaped() -> None:
    plain = "caf\u00e9 \x1b[31mred\x1b[0m\t\\n C:\\temp"
    assert encode_line(plain.encode()) == plain
    assert encode_line(b"a\x00b\xffc") == "a\\x00b\\xffc"
    assert encode_line(b"printf '\\x41'") == "printf '\\\\x41'"  # the text \x41, not the byte A
    assert decode_line("printf '\\\\x41'") == b"printf '\\x41'"


def test_any_bytes_a_run_prints_are_stored_losslessly(store: Store, make_config: MakeConfig) -> None:
    """NUL, invalid UTF-8, every control character, escapes look-alikes: on PostgreSQL a NUL
    used to kill the worker ("cannot contain NUL"); on SQLite invalid UTF-8 was replaced."""
    rng = random.Random(20260510)
    blobs = [(bytes(range(256)), 2), (b"\\x00\\\\xff\x00\r\n\xc3\n\\", 1), (b"\x00\xff", 40_000)]
    blobs += [(rng.randbytes(rng.randrange(1, 5000)), 1) for _ in range(12)]
    config = make_config(
        f"""
    [[deployments]]
    name = "binary"
    command = [{sys.executable!r}, "-c", "{PRINT_HEX}"]
    {HEALTHY}"""
    )
    store.sync(config, NOW)
    runs = {
        store.create_run("binary", NOW, parameters={"hex": blob.hex(), "times": times}): blob * times
        for blob, times in blobs
    }
    healthy = store.create_run("healthy", NOW)
    _burst(config, store)
    _assert_healthy_completed(store, healthy)
    for run_id, blob in runs.items():
        row = store.get_run(run_id)
        assert row is not None and row.state == "COMPLETED", (row, blob[:40])
        for stream, data in (("stdout", blob), ("stderr", blob[::-1])):
            expected = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
            if expected[-1] == b"":
                expected.pop()
            lines = [decode_line(r.line) for r in store.run_logs(run_id) if r.stream == stream]
            # lines longer than 64 KiB are split: join them back before comparing
            assert b"".join(lines) == b"".join(expected), (run_id, stream)


# ---------------------------------------------------------------- exit status


def test_every_exit_status_and_signal_number_is_described() -> None:
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by signal 9 (SIGKILL)"
    assert describe_exit(-40) == "killed by signal 40 (SIGRTMIN+6)"
    assert describe_exit(-32) == "killed by signal 32"
    for code in range(-70, 256):
        assert describe_exit(code)


#: Signals whose default action does not end a process: it ignores them, or they stop it (and
#: SIGTSTP/SIGTTIN/SIGTTOU are discarded for a run, whose process group is orphaned).
_NOT_LETHAL = {signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH} | {
    signal.SIGSTOP,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
}


def _status_after(number: int) -> int:
    """What signal ``number`` does to a shell started from here: the test process may have
    inherited it ignored or blocked (glibc's own 32 and 33 cannot even be given back their
    default), and a run inherits the same, so the run must end the way this shell does."""
    return subprocess.run(["sh", "-c", f"kill -{number} $$; exit 7"], timeout=10).returncode


def test_every_signal_number_ends_only_its_run(store: Store, make_config: MakeConfig) -> None:
    """`os.kill(os.getpid(), 40)` used to kill the worker (`40 is not a valid Signals`)."""
    config = make_config(
        """
    [worker]
    kill_grace = "200ms"
    [[deployments]]
    name = "die"
    command = ["sh", "-c", "n=$(echo \\"$ORCHD_PARAMETERS\\" | tr -dc 0-9); kill -$n $$; exit 7"]
    timeout = "2s"
    """
        + HEALTHY
    )
    store.sync(config, NOW)
    runs = {store.create_run("die", NOW, parameters={"n": n}): n for n in range(1, 65)}
    healthy = store.create_run("healthy", NOW)
    _burst(config, store, concurrency=32)
    _assert_healthy_completed(store, healthy)
    for run_id, number in runs.items():
        row = store.get_run(run_id)
        assert row is not None
        expected = 7 if number in _NOT_LETHAL else _status_after(number)
        if expected == 7:  # the run went on after the signal and exited 7 (or hung, stopped)
            assert (row.state, row.error) == ("FAILED", "exit code 7") or row.state == "TIMED_OUT", row
        else:
            assert (row.state, row.exit_code) == ("FAILED", expected), row
            assert row.error.startswith(f"killed by signal {number}"), row


# ---------------------------------------------------------------- starting


def _unchecked(config: Config, **deployments: dict[str, object]) -> Config:
    """The config with deployments the loader would refuse (as an older orchd stored them)."""
    base = config.deployments[0]
    extra = tuple(dataclasses.replace(base, name=name, **values) for name, values in deployments.items())
    return dataclasses.replace(config, deployments=(*config.deployments, *extra))


def test_a_run_that_cannot_start_fails_alone_with_the_reason(
    store: Store, make_config: MakeConfig, tmp_path: Path
) -> None:
    """An argv with a NUL, an environment variable name with '=', and friends used to kill the
    worker with ValueError and leave the run PENDING."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    config = _unchecked(
        make_config(HEALTHY),
        nul_argv={"command": ["/bin/echo", "a\x00b"]},
        bad_env_name={"env": {"A=B": "x"}},
        nul_env_value={"env": {"A": "x\x00y"}},
        missing_dir={"working_dir": str(tmp_path / "missing")},
        file_dir={"working_dir": str(a_file)},
        missing_program={"command": ["/nonexistent/program"]},
        nul_python={"command": [], "entrypoint": "m:f", "python": "/usr/bin/py\x00thon"},
    )
    store.sync(config, NOW)
    runs = {store.create_run(d.name, NOW): d.name for d in config.deployments if d.name != "healthy"}
    healthy = store.create_run("healthy", NOW)
    _burst(config, store)
    _assert_healthy_completed(store, healthy)
    errors = {}
    for run_id, name in runs.items():
        row = store.get_run(run_id)
        assert row is not None and row.state == "FAILED", row
        errors[name] = row.error
    assert errors["missing_dir"] == f"working_dir {str(tmp_path / 'missing')!r} does not exist"
    assert errors["file_dir"] == f"working_dir {str(a_file)!r} is not a directory"
    assert errors["missing_program"] == "cannot start '/nonexistent/program': No such file or directory"
    assert "embedded null byte" in errors["nul_argv"]
    assert "environment variable" in errors["bad_env_name"]
    assert not (tmp_path / "missing").exists()  # a typo is reported, not created


def test_an_explicit_work_dir_that_does_not_exist_is_refused(
    store: Store, make_config: MakeConfig, tmp_path: Path
) -> None:
    from orchd.errors import ConfigError

    config = make_config(f'[worker]\nwork_dir = "{tmp_path / "typo"}"\n')
    with pytest.raises(ConfigError, match=r"worker\.work_dir: .*typo' does not exist"):
        _burst(config, store)
    assert not (tmp_path / "typo").exists()


# ---------------------------------------------------------------- results and outcomes


def test_entrypoint_results_the_database_would_refuse_are_stored_as_notes(
    store: Store, make_config: MakeConfig, tmp_path: Path
) -> None:
    (tmp_path / "hazards.py").write_text(
        "import os\n"
        "def nan():\n    return {'x': float('nan'), 'y': float('inf'), 'z': 'a\\x00b'}\n"
        "def garbage():\n"
        "    with open(os.environ['ORCHD_RESULT_FILE'], 'w') as f:\n        f.write('{not json')\n"
        "    os._exit(0)\n"
    )
    config = make_config(
        f"""
    [[deployments]]
    name = "nan"
    entrypoint = "hazards:nan"
    working_dir = "{tmp_path}"
    [[deployments]]
    name = "garbage"
    entrypoint = "hazards:garbage"
    working_dir = "{tmp_path}"
    """
        + HEALTHY
    )
    store.sync(config, NOW)
    nan, garbage, healthy = (store.create_run(n, NOW) for n in ("nan", "garbage", "healthy"))
    _burst(config, store)
    _assert_healthy_completed(store, healthy)
    nan_row, garbage_row = store.get_run(nan), store.get_run(garbage)
    assert nan_row is not None and nan_row.state == "COMPLETED", nan_row
    assert nan_row.result == {"x": "NaN", "y": "Infinity", "z": "a\x00b"}
    assert garbage_row is not None and garbage_row.state == "COMPLETED"
    assert garbage_row.result["orchd_unreadable"] is True


def test_an_outcome_the_state_machine_refuses_is_a_warning_not_a_success(
    store: Store, make_config: MakeConfig
) -> None:
    """The worker used to log "run completed" for a run the reaper had already CRASHED."""
    config = make_config('[[deployments]]\nname = "slow"\ncommand = ["sh", "-c", "sleep 1"]\n')
    store.sync(config, NOW)
    run_id = store.create_run("slow", NOW)
    worker = Worker(config, store, ["default"], 1, name="w", burst=True)
    reaped = threading.Event()

    def reap_when_running() -> None:
        while store.get_run(run_id).state != "RUNNING":  # type: ignore[union-attr]
            threading.Event().wait(0.02)
        far = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1)
        store.upkeep(far, None, 3600)
        reaped.set()

    helper = threading.Thread(target=reap_when_running, daemon=True)
    helper.start()
    with capture_logs() as logs:
        worker.run(threading.Event())
    helper.join(timeout=10)
    assert reaped.is_set()
    assert store.get_run(run_id).state == "CRASHED"  # type: ignore[union-attr]
    events = [(e["log_level"], e["event"]) for e in logs if e.get("run_id") == run_id]
    assert ("info", "run completed") not in events, events
    assert any(level == "warning" and "not recorded" in event for level, event in events), events


def test_retry_delays_never_overflow() -> None:
    """2.0 ** 1100 does not fit a float: the 1,100th retry used to raise OverflowError in the worker."""
    rng = random.Random(1)
    for attempt in (1, 2, 50, 1100, 10**6):
        for backoff in (1.0, 2.0, 100.0, 1e300):
            assert 0 <= retry_delay(10, backoff, attempt, rng) <= MAX_DELAY * 1.1
    assert retry_delay(0, 2.0, 10**6) == 0.0


def test_a_guardian_that_died_is_replaced_and_still_guards_every_run() -> None:
    """The worker used to die with BrokenPipeError at its next run once its guardian was gone."""
    sleepers = [
        subprocess.Popen(["sleep", "60"], start_new_session=True, stdout=subprocess.DEVNULL) for _ in range(2)
    ]
    guardian = Guardian()
    try:
        guardian.watch(sleepers[0].pid)
        first = guardian._process.pid
        os.kill(first, signal.SIGKILL)
        guardian._process.wait(timeout=10)
        guardian.watch(sleepers[1].pid)  # finds it gone: a new one, told about both groups
        assert guardian._process.pid != first and guardian._process.poll() is None
    finally:
        guardian.close()  # as when the worker dies: the groups still watched are killed
    for sleeper in sleepers:
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
