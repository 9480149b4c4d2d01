"""What a claimed run executes: its argv, environment and working directory.

``command`` runs as given (argv, no shell) unless ``shell = true``; an ``entrypoint`` runs the
small standalone runner in the deployment's interpreter and hands the result back in a file.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from orchd.db.store import ClaimedRun
from orchd.worker.process import run_environment

RUNNER = Path(__file__).with_name("entrypoint_runner.py")
RESULT_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    result_file: Path | None


def invocation(run: ClaimedRun, work_dir: Path) -> Invocation:
    spec = run.spec
    cwd = Path(spec.get("working_dir") or work_dir)
    extra = {
        **spec.get("env", {}),
        "ORCHD_RUN_ID": str(run.id),
        "ORCHD_DEPLOYMENT": run.deployment,
        "ORCHD_ATTEMPT": str(run.attempt),
        "ORCHD_SCHEDULED_FOR": run.scheduled_for.isoformat(),
        "ORCHD_PARAMETERS": json.dumps(run.parameters, sort_keys=True),
    }
    result_file = None
    if spec.get("entrypoint"):
        result_file = work_dir / f".orchd-result-{run.id}-{run.attempt}.json"
        extra["ORCHD_RESULT_FILE"] = str(result_file)
        argv = [spec.get("python") or sys.executable, str(RUNNER), spec["entrypoint"]]
    elif spec.get("shell"):
        argv = ["/bin/sh", "-c", " ".join(spec["command"])]
    else:
        argv = list(spec["command"])
    return Invocation(argv, run_environment(extra), cwd, result_file)


class CannotStart(Exception):
    """The run's process cannot be started; the message says why, for the run's ``error``."""


def check_working_dir(cwd: Path, explicit: bool) -> None:
    """A deployment's ``working_dir`` must exist: creating it would hide a typo (the worker's own
    work_dir is created at start)."""
    if not explicit:
        return
    if not cwd.exists():
        raise CannotStart(f"working_dir {str(cwd)!r} does not exist")
    if not cwd.is_dir():
        raise CannotStart(f"working_dir {str(cwd)!r} is not a directory")


def start_error(argv: list[str], exc: BaseException) -> str:
    """Why spawning failed, in one line naming what was wrong (the program, or the directory)."""
    if isinstance(exc, CannotStart):
        return str(exc)
    program = repr(argv[0]) if argv else "the command"
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        if exc.filename and argv and exc.filename != argv[0]:
            return f"cannot start {program}: {exc.filename}: {what}"
        return f"cannot start {program}: {what}"
    return f"cannot start {program}: {exc}"


def read_result(path: Path) -> object:
    """The stored result of an entrypoint run (None if it wrote none).  An oversized one, or one
    that is not JSON (the runner was killed while writing it, or the function overwrote the file),
    is replaced by a note saying so, so one run can neither bloat the runs table nor hand the
    database something it refuses.  NaN and infinities (Python's json writes them, JSON has none)
    are stored as strings."""
    try:
        size = path.stat().st_size
        if size > RESULT_MAX_BYTES:
            return {"orchd_truncated": True, "size": size, "limit": RESULT_MAX_BYTES}
        return json.loads(path.read_bytes().decode("utf-8"), parse_constant=str)
    except FileNotFoundError:
        return None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return {"orchd_unreadable": True, "error": str(exc)[:200]}
    finally:
        path.unlink(missing_ok=True)
