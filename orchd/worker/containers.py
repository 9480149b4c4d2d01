"""Container runs: a run with an ``image`` executes ``ENGINE run ... IMAGE COMMAND`` as its child.

The engine's client (podman or docker, through its CLI) attaches to the container and streams its
stdout and stderr, so the pump, the output cap and the exit status work as for any process run.
What differs is stopping: a signal to the client would leave the container running (it lives on
under conmon or dockerd), so timeouts, cancels and shutdown stop the *container*, by name ("stop"
with the kill grace, then "kill").

Every container is labelled with the database, run id, attempt and worker, so whatever a dead
worker left behind can be found and removed: by the worker's guardian the moment it dies, by any
worker of the host at its start and periodically (``sweep``), and before a retry of the run
starts on the same host.  Containers of another orchd database are never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchd.config.model import ContainerConfig
from orchd.worker.process import RunProcess, run_environment

LABEL = "orchd"
#: Engine commands other than ``run`` are short; a hung engine must not hang the worker.
_TIMEOUT = 30.0
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")  # netavark and iptables live there
#: The exit statuses the engines use for their own failures (docker run(1), podman-run(1)).
ENGINE_STATUSES = {125: "container engine error", 126: "cannot run the command", 127: "command not found"}


class EngineUnavailable(Exception):
    """No usable container engine; the message is one line saying why and what to do."""


def database_label(url: str) -> str:
    """A short, stable id of the database (hash of its URL, password masked): leftovers are
    matched only among containers of the same database."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ContainerHost:
    """What a worker knows to start containers: its engine (or why it has none), and the labels
    that tie a container to this database and worker."""

    engine: Engine | None
    problem: str
    database: str
    worker: str

    def usable(self) -> Engine:
        if self.engine is None:
            raise EngineUnavailable(self.problem)
        return self.engine


@dataclass(frozen=True)
class Leftover:
    id: str
    run_id: int
    attempt: int
    worker: str


@dataclass(frozen=True)
class Engine:
    """One container engine's CLI: ``flavour`` is podman or docker, ``binary`` its path."""

    flavour: str
    binary: str

    @classmethod
    def find(cls, kind: str, binary: str = "") -> Engine:
        """The engine ``worker.container_runtime`` and ``container_binary`` ask for (``auto``:
        podman if installed, else docker)."""
        search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin"])
        names = [binary] if binary else (["podman", "docker"] if kind == "auto" else [kind])
        for name in names:
            path = shutil.which(name, path=search)
            if path:
                flavour = kind if kind != "auto" else ("docker" if "docker" in Path(name).name else "podman")
                return cls(flavour, path)
        hint = "fix worker.container_binary" if binary else "install podman, or set worker.container_runtime"
        raise EngineUnavailable(f"no container engine: {' or '.join(names)} not found ({hint})")

    # ------------------------------------------------------------------ commands

    def _call(self, *args: str, timeout: float = _TIMEOUT) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.binary, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=client_environment({}),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EngineUnavailable(f"{self.flavour} {args[0]}: {exc}") from None

    def check(self) -> str:
        """``podman 4.3.1``: the engine answers (docker: its daemon too); else EngineUnavailable."""
        result = self._call("info", "--format", "{{json .}}")
        if result.returncode != 0:
            reason = last_line(result.stderr) or f"exit status {result.returncode}"
            raise EngineUnavailable(f"{self.flavour} does not work: {reason}")
        version = self._call("version", "--format", "{{.Client.Version}}").stdout.strip()
        return f"{self.flavour} {version}".strip()

    def run_argv(
        self,
        name: str,
        image: str,
        command: Sequence[str],
        settings: ContainerConfig,
        *,
        labels: Mapping[str, str],
        env_names: Sequence[str],
        working_dir: str = "",
        mounts: Sequence[str] = (),
    ) -> list[str]:
        """The ``run`` command of one run.  Environment values are not in the argv (other users
        can read a command line): ``--env NAME`` takes each from the client's environment."""
        argv = [self.binary, "run", "--name", name, f"--pull={settings.pull}"]
        for key, value in labels.items():
            argv += ["--label", f"{LABEL}.{key}={value}"]
        for env_name in env_names:
            argv += ["--env", env_name]
        if working_dir:
            argv += ["--workdir", working_dir]
        if settings.init:
            argv.append("--init")
        if settings.network:
            argv += ["--network", settings.network]
        for volume in [*settings.volumes, *mounts]:
            argv += ["--volume", volume]
        if settings.memory:  # swap included: the limit is a limit, and exceeding it is an OOM
            argv += ["--memory", settings.memory, "--memory-swap", settings.memory]
        if settings.cpus:
            argv += ["--cpus", f"{settings.cpus:g}"]
        if settings.user:
            argv += ["--user", settings.user]
        if settings.shm_size:
            argv += ["--shm-size", settings.shm_size]
        argv += self._gpus(settings.gpus)
        argv += self._limits()
        return [*argv, *settings.options, image, *command]

    def _gpus(self, gpus: str) -> list[str]:
        """docker's --gpus; podman takes GPUs as CDI devices (nvidia-ctk cdi generate)."""
        if not gpus:
            return []
        if self.flavour == "docker":
            return ["--gpus", gpus]
        if gpus == "all":
            devices = ["all"]
        elif gpus.isdigit():
            devices = [str(i) for i in range(int(gpus))]
        else:
            devices = gpus.removeprefix("device=").split(",")
        return [arg for d in devices for arg in ("--device", f"nvidia.com/gpu={d}")]

    def _limits(self) -> list[str]:
        """Podman (as root) asks for open-file and process limits above the worker's own, which a
        host without CAP_SYS_RESOURCE refuses: a container gets the worker's limits instead, as a
        process run does.  (docker's containers get dockerd's, which the daemon can grant.)"""
        if self.flavour != "podman":
            return []
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        limits = []
        for name, which, cap in (
            ("nofile", resource.RLIMIT_NOFILE, math.inf),
            ("nproc", resource.RLIMIT_NPROC, pid_max),
        ):
            soft, hard = (
                int(min(v if v != resource.RLIM_INFINITY else math.inf, cap, 1 << 20))
                for v in resource.getrlimit(which)
            )
            limits += ["--ulimit", f"{name}={soft}:{hard}"]
        return limits

    def stop(self, name: str, grace: float) -> None:
        """SIGTERM (or the image's stop signal), then SIGKILL after ``grace``; blocks meanwhile."""
        self._call("stop", "-t", str(math.ceil(grace)), name, timeout=grace + _TIMEOUT)

    def kill(self, name: str) -> None:
        self._call("kill", name)

    def remove_argv(self) -> list[str]:
        """Force-remove containers (killing running ones at once); names follow."""
        extra = ["--time", "0", "--ignore"] if self.flavour == "podman" else []
        return [self.binary, "rm", "--force", *extra]

    def remove(self, names: Sequence[str]) -> None:
        if names:
            self._call(*self.remove_argv()[1:], *names)

    def oom_killed(self, name: str) -> bool:
        result = self._call("inspect", "--format", "{{.State.OOMKilled}}", name)
        return result.stdout.strip() == "true"

    def leftovers(self, database: str, run_id: int | None = None, running: bool = False) -> list[Leftover]:
        """Containers of this database on this host (of one run, if given), running or not."""
        filters = ["--filter", f"label={LABEL}.database={database}"]
        if run_id is not None:
            filters += ["--filter", f"label={LABEL}.run_id={run_id}"]
        states = ["--filter", "status=running"] if running else ["--all"]
        ids = self._call("ps", *states, "--quiet", "--no-trunc", *filters).stdout.split()
        if not ids:
            return []
        result = self._call("inspect", "--format", "{{.Id}} {{json .Config.Labels}}", *ids)
        found = []
        for line in result.stdout.splitlines():
            ident, _, labels_json = line.partition(" ")
            with contextlib.suppress(ValueError, TypeError, KeyError):
                labels = json.loads(labels_json)
                found.append(
                    Leftover(
                        ident,
                        int(labels[f"{LABEL}.run_id"]),
                        int(labels[f"{LABEL}.attempt"]),
                        labels[f"{LABEL}.worker"],
                    )
                )
        return found


def client_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The engine client's environment: the run's (without orchd's private variables), and a
    PATH that includes the sbin directories where netavark and iptables are found."""
    env = run_environment(extra)
    parts = env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    env["PATH"] = os.pathsep.join(parts + [d for d in _SBIN if d not in parts])
    return env


def last_line(text: str) -> str:
    """The last meaningful line of an engine's stderr (docker ends with "See 'docker run --help'.")."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("See '")]
    return lines[-1][:300] if lines else ""


class ContainerRun(RunProcess):
    """A run whose child is the engine's client: stopped and killed through the engine, by name.

    ``terminate`` and ``kill`` run the engine's commands on a thread of their own (``stop``
    blocks for the grace), so the worker's loop never waits for them.
    """

    def __init__(self, engine: Engine, name: str, memory: str, **kwargs: Any) -> None:
        self.engine, self.name, self.memory = engine, name, memory
        super().__init__(**kwargs)

    def _engine_command(self, action: Any, *args: Any) -> None:
        def call() -> None:
            with contextlib.suppress(EngineUnavailable):
                action(*args)

        threading.Thread(target=call, name=f"engine-{self.run_id}", daemon=True).start()

    def terminate(self, grace: float) -> None:
        self._engine_command(self.engine.stop, self.name, grace)

    def kill(self) -> None:
        """The engine kills the container; if its client still has not exited a few seconds
        later (a hung engine), the client's group is killed so the run can end."""

        def kill_then_client() -> None:
            with contextlib.suppress(EngineUnavailable):
                self.engine.kill(self.name)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
                return
            self.signal_group(signal.SIGKILL)

        threading.Thread(target=kill_then_client, name=f"engine-{self.run_id}", daemon=True).start()

    def exit_error(self, returncode: int, last_stderr: str) -> str | None:
        """Why the run failed, when the engine knows better than the exit status: an engine error
        (bad image, image missing with pull "never", registry unreachable), or out of memory."""
        if returncode in ENGINE_STATUSES and last_stderr:
            return f"{ENGINE_STATUSES[returncode]}: {last_stderr}"
        if returncode == 137:  # SIGKILL: from orchd (then this is not used), or the OOM killer
            limit = f"container memory limit {self.memory or 'none'}"
            with contextlib.suppress(EngineUnavailable):
                if self.engine.oom_killed(self.name):
                    return f"out of memory ({limit})"
            if self.memory:  # engines miss some OOM kills (podman with cgroups v1)
                return f"killed (exit code 137) at a {limit}: most likely out of memory"
        return None
