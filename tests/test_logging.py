"""Log formats: what journald gets under systemd (priority prefix, key=value, no timestamp, one
line per event), and that a real worker writes a run's output there with its run_id."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from orchd.config import load_config
from orchd.db.engine import make_engine
from orchd.db.store import Store
from orchd.logging import configure, get_logger, resolve_format
from tests.helpers import BIN

JOURNAL_LINE = re.compile(r"<[0-7]>\S")


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _journal_stream(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def _log_to(path: Path, monkeypatch: pytest.MonkeyPatch, level: str = "debug") -> None:
    """Configure logging into ``path`` as if systemd had connected it as the journal stream."""
    path.touch()
    monkeypatch.setenv("JOURNAL_STREAM", _journal_stream(path))
    configure(level, "auto", open(path, "a", buffering=1))  # noqa: SIM115 (closed with the test's tmp dir)


def test_auto_picks_journald_only_when_the_stream_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal, other = tmp_path / "journal", tmp_path / "other"
    journal.touch()
    other.touch()
    monkeypatch.setenv("JOURNAL_STREAM", _journal_stream(journal))
    with open(journal) as j, open(other) as o:
        assert resolve_format("auto", j) == "journald"
        # a child whose stderr was redirected elsewhere inherits JOURNAL_STREAM: not the journal
        assert resolve_format("auto", o) == "logfmt"
        assert resolve_format("json", j) == "json"
    monkeypatch.delenv("JOURNAL_STREAM")
    with open(journal) as j:
        assert resolve_format("auto", j) == "logfmt"


def test_journald_lines_have_priority_fields_and_no_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "journal"
    _log_to(out, monkeypatch)
    log = get_logger("test").bind(run_id=7, deployment="nightly-backup", pool="docker-test-pool", attempt=2)
    log.debug("claim considered")
    log.info("run started", pid=1234)
    log.warning("run failed", error="exit code 3")
    log.error("database unavailable", error='FATAL: "orchd" does not exist')
    log.critical("giving up", retry=None)
    assert out.read_text().splitlines() == [
        "<7>claim considered run_id=7 deployment=nightly-backup pool=docker-test-pool attempt=2",
        "<6>run started run_id=7 deployment=nightly-backup pool=docker-test-pool attempt=2 pid=1234",
        "<4>run failed run_id=7 deployment=nightly-backup pool=docker-test-pool attempt=2 "
        'error="exit code 3"',
        "<3>database unavailable run_id=7 deployment=nightly-backup pool=docker-test-pool attempt=2 "
        'error="FATAL: \\"orchd\\" does not exist"',
        "<2>giving up run_id=7 deployment=nightly-backup pool=docker-test-pool attempt=2",
    ]


def test_journald_keeps_a_traceback_in_one_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "journal"
    _log_to(out, monkeypatch, level="info")
    try:
        raise ValueError("bad value")
    except ValueError:
        get_logger("test").exception("tick failed\nbadly")
    get_logger("test").debug("filtered out")
    [line] = out.read_text().splitlines()
    assert line.startswith('<3>tick failed\\nbadly exception="Traceback (most recent call last):\\n')
    assert line.endswith('ValueError: bad value"')


def test_json_on_request(tmp_path: Path) -> None:
    out = tmp_path / "log.json"
    with open(out, "w") as stream:
        configure("info", "json", stream)
        get_logger("test").info("run completed", run_id=3, exit_code=0)
    record = json.loads(out.read_text())
    assert record["event"] == "run completed" and record["run_id"] == 3 and record["level"] == "info"
    assert "timestamp" in record


def test_a_real_worker_logs_run_output_with_its_run_id_to_the_journal(tmp_path: Path, db_url: str) -> None:
    """The worker as a process whose stderr is "the journal": every line is one prefixed event,
    and what the run printed is there with run_id=, as ``journalctl -u orchd-worker@p`` shows it."""
    config = tmp_path / "orchd.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n'
        + textwrap.dedent(
            """
            [[deployments]]
            name = "hello"
            pool = "docker-test-pool"
            command = ["sh", "-c", "echo 'hello from the run'; echo 'to stderr' >&2"]
            """
        )
    )
    store = Store(make_engine(load_config(config).database), "test")
    store.sync(load_config(config), datetime.now(UTC))
    run_id = store.create_run("hello", datetime.now(UTC))
    journal = tmp_path / "journal"
    with open(journal, "wb") as stderr:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHD_")}
        env["JOURNAL_STREAM"] = _journal_stream(journal)
        result = subprocess.run(
            [str(BIN / "orchd-worker"), "--config", str(config), "--pool", "docker-test-pool", "--burst"],
            stderr=stderr,
            stdout=subprocess.DEVNULL,
            env=env,
            timeout=60,
        )
    assert result.returncode == 0, journal.read_text()
    lines = journal.read_text().splitlines()
    assert lines and all(JOURNAL_LINE.match(line) for line in lines), lines
    assert f"<6>hello from the run run_id={run_id} stream=stdout" in lines
    assert f"<6>to stderr run_id={run_id} stream=stderr" in lines
    [completed] = [line for line in lines if line.startswith("<6>run completed ")]
    assert f"run_id={run_id} deployment=hello attempt=1 exit_code=0" in completed
    assert not any(re.search(r"\d{4}-\d\d-\d\dT\d\d:", line) for line in lines if "run_id" in line)


LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"=]+)(?: |$)')


def test_logfmt_is_key_value_pairs_with_double_quotes_and_an_iso_8601_offset(tmp_path: Path) -> None:
    """What a pipe or file gets: every field key=value, values quoted only when they must be, with
    JSON-style escapes; the timestamp says its UTC offset."""
    out = tmp_path / "log"
    with open(out, "w") as stream:
        configure("info", "logfmt", stream)
        log = get_logger("test").bind(run_id=7, deployment="hello")
        log.info("run started", command='/bin/sh -c echo "hi"', pid=12, retry=True, empty="")
        log.info("bell\a and \x1b[31mred\x1b[0m", stream="stdout")
    first, second = out.read_text().splitlines()
    pairs = LOGFMT_PAIR.findall(first)
    assert "".join(f"{k}={v} " for k, v in pairs).rstrip() == first  # nothing but pairs
    fields = dict(pairs)
    assert datetime.fromisoformat(fields.pop("timestamp")).utcoffset() is not None
    assert first.split(" ", 1)[1] == (
        'level=info event="run started" run_id=7 deployment=hello '
        'command="/bin/sh -c echo \\"hi\\"" pid=12 retry=true empty=""'
    )
    assert second.endswith(
        ' level=info event="bell\\a and \\x1b[31mred\\x1b[0m" run_id=7 deployment=hello stream=stdout'
    )
    assert "'" not in first  # no Python repr quoting
