"""What a claimed run executes: its argv, environment and working directory.

``command`` runs as given (argv, no shell) unless ``shell = true``; an ``entrypoint`` runs the
small standalone runner in the deployment's interpreter and hands the result back in a file.
"""

from __future__ import annotations

import json
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from orchd.config.model import ContainerConfig
from orchd.models import ClaimedRun
from orchd.worker.containers import ContainerHost, Engine, EngineUnavailable, client_environment
from orchd.worker.process import run_environment

RUNNER = Path(__file__).with_name("entrypoint_runner.py")
RESULT_MAX_BYTES = 64 * 1024
#: Where the runner and the result file are mounted inside a container.
IN_CONTAINER = "/orchd"


@dataclass(frozen=True)
class ContainerLaunch:
    engine: Engine
    name: str
    memory: str


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    result_file: Path | None
    container: ContainerLaunch | None = None

    def prepare(self) -> None:
        """Create the result file a container's runner writes through a bind mount: writable by
        any user the image runs as (it sits in the worker's own private directory)."""
        if self.container is not None and self.result_file is not None:
            self.result_file.touch(mode=0o666)
            self.result_file.chmod(0o666)


def invocation(run: ClaimedRun, work_dir: Path, containers: ContainerHost | None = None) -> Invocation:
    """How to execute ``run``; EngineUnavailable if it needs a container engine there is not."""
    spec = run.spec
    extra = {
        **spec.env,
        "ORCHD_RUN_ID": str(run.id),
        "ORCHD_DEPLOYMENT": run.deployment,
        "ORCHD_ATTEMPT": str(run.attempt),
        "ORCHD_SCHEDULED_FOR": run.scheduled_for.isoformat(),
        "ORCHD_PARAMETERS": json.dumps(run.parameters, sort_keys=True),
    }
    if run.upstream is not None:  # a run chain: what the run that triggered this one left
        extra["ORCHD_UPSTREAM_RUN_ID"] = str(run.upstream.run_id)
        extra["ORCHD_UPSTREAM_RESULT"] = json.dumps(run.upstream.result, sort_keys=True)
    result_file = None
    if spec.entrypoint:
        result_file = work_dir / f".orchd-result-{run.id}-{run.attempt}.json"
    if spec.image:
        return _in_container(run, extra, work_dir, result_file, containers)
    cwd = Path(spec.working_dir or work_dir)
    if result_file is not None:
        extra["ORCHD_RESULT_FILE"] = str(result_file)
        argv = [spec.python or sys.executable, str(RUNNER), spec.entrypoint]
    elif spec.shell:
        argv = ["/bin/sh", "-c", " ".join(spec.command)]
    else:
        argv = list(spec.command)
    return Invocation(argv, run_environment(extra), cwd, result_file)


def _in_container(
    run: ClaimedRun,
    extra: dict[str, str],
    work_dir: Path,
    result_file: Path | None,
    containers: ContainerHost | None,
) -> Invocation:
    """The engine's ``run`` command: the deployment's command (or the image's default), or the
    standalone runner mounted read-only beside a result file, labelled for cleanup by label."""
    if containers is None:
        containers = ContainerHost(None, "no container engine configured", "", "")
    engine = containers.usable()
    spec = run.spec
    settings = ContainerConfig(**spec.container)
    mounts = []
    if result_file is not None:
        runner = f"{IN_CONTAINER}/{RUNNER.name}"
        mounts = [f"{RUNNER}:{runner}:ro", f"{result_file}:{IN_CONTAINER}/result.json"]
        extra["ORCHD_RESULT_FILE"] = f"{IN_CONTAINER}/result.json"
        command = [spec.python or "python3", runner, spec.entrypoint]
    elif spec.shell:
        command = ["/bin/sh", "-c", " ".join(spec.command)]
    else:
        command = list(spec.command)
    # unique, so a leftover of an earlier start can never block this one
    name = f"orchd-{run.id}-{run.attempt}-{secrets.token_hex(3)}"
    labels = {
        "database": containers.database,
        "run_id": str(run.id),
        "attempt": str(run.attempt),
        "worker": containers.worker,
        "deployment": run.deployment,
    }
    argv = engine.run_argv(
        name,
        spec.image,
        command,
        settings,
        labels=labels,
        env_names=sorted(extra),
        working_dir=spec.working_dir,
        mounts=mounts,
    )
    launch = ContainerLaunch(engine, name, settings.memory)
    return Invocation(argv, client_environment(extra), work_dir, result_file, launch)


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
    if isinstance(exc, CannotStart | EngineUnavailable):
        return str(exc)
    program = repr(argv[0]) if argv else "the command"
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        if exc.filename and argv and exc.filename != argv[0]:
            return f"cannot start {program}: {exc.filename}: {what}"
        return f"cannot start {program}: {what}"
    return f"cannot start {program}: {exc}"


def read_result(path: Path) -> tuple[object, str | None]:
    """The result an entrypoint run stored and, when its function raised, the exception's line
    (``None``, ``None`` if it wrote nothing).  An oversized result, or one that is not JSON (the
    runner was killed while writing it, or the function overwrote the file), is replaced by a note
    saying so, so one run can neither bloat the runs table nor hand the database something it
    refuses.  NaN and infinities (Python's json writes them, JSON has none) are stored as strings."""
    try:
        size = path.stat().st_size
        if size > RESULT_MAX_BYTES:
            return {"orchd_truncated": True, "size": size, "limit": RESULT_MAX_BYTES}, None
        if not size:  # a container run's result file exists from the start: empty is no result
            return None, None
        stored = json.loads(path.read_bytes().decode("utf-8"), parse_constant=str)
    except FileNotFoundError:
        return None, None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return {"orchd_unreadable": True, "error": str(exc)[:200]}, None
    else:
        if isinstance(stored, dict) and set(stored) == {"result"}:
            return stored["result"], None
        if isinstance(stored, dict) and set(stored) == {"error"} and isinstance(stored["error"], str):
            return None, stored["error"]
        return stored, None  # what the function itself wrote there
    finally:
        path.unlink(missing_ok=True)
