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


def read_result(path: Path) -> object:
    """The stored result of an entrypoint run (None if it wrote none); oversized ones are replaced
    by a note saying so, so one run cannot bloat the runs table."""
    try:
        size = path.stat().st_size
        if size > RESULT_MAX_BYTES:
            return {"orchd_truncated": True, "size": size, "limit": RESULT_MAX_BYTES}
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    finally:
        path.unlink(missing_ok=True)
