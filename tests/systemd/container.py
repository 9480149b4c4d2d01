"""A throwaway container with a real systemd 252 as PID 1, for testing the units and the package.

``systemd-nspawn --directory=/ --volatile=yes`` boots the host's own ``/usr`` over an empty tmpfs
root in about a second, with nothing to build.  ``/usr`` gets a writable overlay (the upper layer
in a temp dir) so the .deb can be installed for real with dpkg, and a copy of the host's dpkg
database makes its dependencies resolve against what that ``/usr`` holds.  The host is never
written to except the temp dir, a private cgroup (so nspawn's leftovers can be removed) and the
empty directories nspawn leaves in ``/run``, which are removed too.

Commands run inside through ``nsenter`` (there is no machined or D-Bus on the host); ``systemctl``
talks to the container's PID 1 over its private socket.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The environment of commands run inside: nothing of the host's (its PATH may point at /root).
INNER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0"}


class ContainerError(RuntimeError):
    """The container could not be booted (the caller decides whether that skips or fails)."""


def unavailable_reason() -> str | None:
    """Why a container cannot be tried here at all, or None."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn)"
    if shutil.which("systemd-nspawn") is None or shutil.which("nsenter") is None:
        return "needs systemd-nspawn (apt-get install systemd-container) and nsenter"
    if not Path("/usr/lib/systemd/systemd").exists():
        return "needs systemd installed on the host"
    return None


def _cgroup_hierarchies() -> list[Path]:
    """Where a private cgroup must be made: both trees of a hybrid layout, or the unified one."""
    hybrid = [CGROUP_ROOT / "systemd", CGROUP_ROOT / "unified"]
    if all(p.is_dir() for p in hybrid):
        return hybrid
    return [CGROUP_ROOT]


class Container:
    """One booted container; ``close()`` halts it and removes everything it left on the host."""

    def __init__(
        self, name: str, share: Path | None = None, boot_timeout: float = 60.0, engine_room: bool = False
    ) -> None:
        """``engine_room``: what a container engine inside needs of nspawn.  A cgroup v2 tree of
        its own (its part of the host's cgroup2 mount) instead of the host's hybrid layout, where
        nspawn mounts the v1 controllers read-only and runc cannot make a container's cgroups (the
        host's v1-bound controllers, memory, pids and the rest, are not in it); and system calls
        nspawn denies everything it starts: the keyring's (runc gives each container a session
        keyring of its own) and bpf (runc's device filter on cgroup v2)."""
        self.name = f"{name}-{os.getpid()}"
        self.engine_room = engine_room
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir="/var/tmp"))
        self.cgroups = [h / self.name for h in _cgroup_hierarchies()]
        self.console = self.tmp / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        try:
            self._boot(share, boot_timeout)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ life cycle

    def _boot(self, share: Path | None, timeout: float) -> None:
        (self.tmp / "usr").mkdir()
        for cgroup in self.cgroups:
            cgroup.mkdir()
        procs = [str(c / "cgroup.procs") for c in self.cgroups]

        def into_private_cgroup() -> None:  # in the child before exec: nspawn's cgroups nest here
            for path in procs:
                with open(path, "w") as f:
                    f.write(str(os.getpid()))

        args = [
            "systemd-nspawn",
            "--directory=/",
            "--volatile=yes",
            f"--overlay=/usr:{self.tmp / 'usr'}:/usr",
            f"--machine={self.name}",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--console=passive",
        ]
        if share is not None:
            args.append(f"--bind-ro={share}:/mnt/share")
        if self.engine_room:
            args.append("--system-call-filter=add_key keyctl request_key bpf")
        # basic.target: journald and the units we start ourselves, not every unit the host's
        # packages enable by preset (their /etc is empty here, so every preset applies).
        args += ["--", "systemd.firstboot=off", "systemd.unit=basic.target"]
        env = {k: v for k, v in os.environ.items() if k != "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"}
        if self.engine_room:
            env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        with open(self.console, "wb") as log:
            self.proc = subprocess.Popen(
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=into_private_cgroup,
            )
        deadline = time.monotonic() + timeout
        while not self.leader:
            self.leader = self._pid1()
            self._check_alive(deadline, "no PID 1")
        state = ""
        while state not in ("running", "degraded"):
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            self._check_alive(deadline, f"is-system-running: {state!r}")

    def _pid1(self) -> int:
        """The container's PID 1 as a host PID, or 0: the child of nspawn that is PID 1 of a PID
        namespace of its own (nspawn first forks a helper that sets up the mounts and exits: taken
        for PID 1, every command inside would fail once it is gone)."""
        assert self.proc is not None
        with contextlib.suppress(OSError):  # nspawn or its child gone meanwhile
            for child in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
                status = Path(f"/proc/{child}/status").read_text()
                nspid = next(line for line in status.splitlines() if line.startswith("NSpid:")).split()
                if len(nspid) > 2 and nspid[-1] == "1":
                    return int(child)
        return 0

    def _check_alive(self, deadline: float, waiting_for: str) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None or time.monotonic() > deadline:
            code = self.proc.returncode
            ended = "timed out" if code is None else f"nspawn exited {code}"
            raise ContainerError(
                f"the container did not boot ({ended}, {waiting_for}):\n"
                f"{self.console.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.05)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        nspawn = Path("/run/systemd/nspawn")
        leftovers = [
            nspawn / "propagate" / self.name,
            nspawn / "propagate",
            nspawn,
            Path("/run/systemd/nspawn-root"),
        ]
        for cgroup in self.cgroups:
            leftovers[:0] = sorted(cgroup.glob("**/"), key=lambda p: len(p.parts), reverse=True)
        for path in leftovers:
            with contextlib.suppress(OSError):  # absent, or not empty: in use by another container
                path.rmdir()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ inside

    @property
    def root(self) -> Path:
        """The container's root as seen from the host (its / is a tmpfs only the container mounts)."""
        return Path(f"/proc/{self.leader}/root")

    def run(
        self, *command: str, check: bool = True, timeout: float = 60.0, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside; ``user`` runs it as that user (setpriv: runuser needs PAM's /etc)."""
        if user is not None:
            command = ("setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--", *command)
        result = subprocess.run(
            ["nsenter", f"--target={self.leader}", "--all", "--", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=INNER_ENV,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def write(self, path: str, text: str) -> None:
        """Write a file inside (an existing file keeps its owner and mode)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def copy_dpkg_database(self) -> None:
        """Give the container the host's dpkg database, which matches the /usr it runs on (without
        its stat overrides, which name groups of the host's /etc that the container lacks), and the
        alternatives' links."""
        shutil.copytree("/var/lib/dpkg", self.root / "var/lib/dpkg", symlinks=True, dirs_exist_ok=True)
        (self.root / "var/lib/dpkg/statoverride").write_text("")
        # and the alternatives' links (/usr/sbin/iptables -> /etc/alternatives/iptables -> ...)
        alternatives = self.root / "etc/alternatives"
        shutil.copytree("/etc/alternatives", alternatives, symlinks=True, dirs_exist_ok=True)

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "--property", prop, "--value", unit).stdout.strip()

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", *args).stdout
