"""Child processes of runs: spawning, output pumping, signalling.  The only module that forks
(besides containers.py, which runs the container engine's short commands).

Each run gets its own process group (so a timeout or cancel reaches everything it started), and
the worker's guardian process kills every run's group if the worker dies, so nothing a run
started keeps running while the reaper hands the run to another worker.  (The guardian also
replaces PR_SET_PDEATHSIG, which reaches only the direct child and needs a preexec_fn: that
forces a full fork() and made each spawn four times slower than Python's vfork/posix_spawn.)
A pump thread per run reads stdout/stderr, applies the output cap and posts events to the
worker's queue; the worker's main thread is the only one that touches the database.
"""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchd.worker.output import Line, OutputCapture

#: Variables of the worker's own environment a run must not inherit.
_PRIVATE_PREFIXES = (
    "ORCHD_",
    "NOTIFY_SOCKET",
    "WATCHDOG_",
    "LISTEN_",
    "CREDENTIALS_DIRECTORY",
    "JOURNAL_STREAM",
)
#: Output is handed to the worker in batches at most this old (it writes them within _LOG_FLUSH):
#: a line a run prints reaches a browser tailing it in a few tens of milliseconds.
_FLUSH_EVERY = 0.02
#: How often a silent run is looked at (has its process exited?).
_EXIT_CHECK = 0.1
_EOF_GRACE = 2.0


@dataclass(frozen=True)
class OutputEvent:
    run_id: int
    lines: list[Line]


@dataclass(frozen=True)
class ExitEvent:
    run_id: int
    returncode: int
    #: Why it failed when the exit status alone does not say (e.g. a container out of memory).
    error: str | None = None
    #: When the exit was seen (time.monotonic()): whether a fence had struck by then.
    at: float = field(default_factory=time.monotonic)


class Guardian:
    """The worker's side of orchd/worker/guardian.py: that helper kills the process groups of the
    runs when the worker dies, however it dies, so no process of a run outlives it."""

    SCRIPT = Path(__file__).with_name("guardian.py")

    def __init__(self, remove_containers: Sequence[str] = (), env: Mapping[str, str] | None = None) -> None:
        """``remove_containers``: the engine's force-remove command (run with ``env``), for the
        containers it is told about."""
        self._command = [sys.executable, str(self.SCRIPT), *remove_containers]
        self._env = None if env is None else dict(env)
        self._watched: set[int | str] = set()
        self._deadline: float | None = None  # the fence's (see fence())
        self._lock = threading.Lock()  # the main thread watches, pump threads forget
        self._start()

    def _start(self) -> None:
        read_end, self._write_end = os.pipe()  # not inheritable: runs never hold it open
        self._process = subprocess.Popen(
            self._command,
            env=self._env,
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        os.close(read_end)

    def _say(self, line: str) -> None:
        """One small write (atomic).  If the guardian is gone (the OOM killer, an admin's kill), a
        new one takes over everything the old one watched: the worker goes on, protected again.
        Once closed (the worker is done), there is nothing left to say."""
        if self._write_end < 0:
            return
        try:
            os.write(self._write_end, line.encode())
        except BrokenPipeError:
            os.close(self._write_end)
            self._process.wait(timeout=10)  # it has exited: reap it
            self._start()
            lines = [f"+{what}\n" for what in self._watched]
            lines += [f"@{self._deadline:.3f}\n"] if self._deadline is not None else []
            replay = "".join(lines).encode()
            while replay:  # more than a pipe's atomic size: write it all
                replay = replay[os.write(self._write_end, replay) :]

    def watch(self, what: int | str) -> None:
        """A run's process group (int), or a container's name (str, before it is created)."""
        with self._lock:
            self._watched.add(what)
            self._say(f"+{what}\n")

    def forget(self, what: int | str) -> None:
        with self._lock:
            self._watched.discard(what)
            self._say(f"-{what}\n")

    def fence(self, deadline: float) -> None:
        """Unless told a later one first, kill every run at ``deadline`` (time.monotonic())."""
        with self._lock:
            self._deadline = deadline
            self._say(f"@{deadline:.3f}\n")

    def close(self) -> None:
        """The worker is done: the guardian kills whatever it still watches, then exits."""
        with self._lock:
            if self._write_end < 0:
                return
            os.close(self._write_end)
            self._write_end = -1
        self._process.wait(timeout=10)


def describe_exit(returncode: int) -> str:
    """Why a run's process ended, for its ``error``: any exit status, any signal number (real-time
    signals and the two glibc keeps for itself have no name in Python's ``signal.Signals``)."""
    if returncode >= 0:
        return f"exit code {returncode}"
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        low, high = signal.SIGRTMIN, signal.SIGRTMAX
        name = f"SIGRTMIN+{number - low}" if low < number < high else ""
    return f"killed by signal {number}" + (f" ({name})" if name else "")


def run_environment(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_PREFIXES)}
    env.update(extra)
    return env


class Pumps:
    """The threads that pump runs' output, kept from one run to the next.  A thread started per
    run cost the worker's loop a wait for the new thread to come up (it needs the interpreter's
    lock first) at every spawn, a tenth of a busy worker's time.  Daemon threads, as before: a
    pump blocked on a run that outlives the worker must not keep the worker alive; at most one
    per run at once, so at most ``concurrency`` of them."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._started = 0

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on an idle pump, or on a new one when none is idle."""
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                self._started += 1
                threading.Thread(target=self._serve, name=f"pump-{self._started}", daemon=True).start()
        self._jobs.put(job)

    def _serve(self) -> None:
        while True:
            self._jobs.get()()
            with self._lock:
                self._idle += 1


_PUMPS = Pumps()


class RunProcess:
    """A started run: its process group, its output pumped into ``events`` by one of the
    process's pumps (Pumps) until it exits."""

    def __init__(
        self,
        run_id: int,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        events: queue.Queue[OutputEvent | ExitEvent],
        max_output: int,
        guardian: Guardian,
    ) -> None:
        self.run_id = run_id
        self.events = events
        self.capture = OutputCapture(max_output)
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
        )
        self.pid = self.proc.pid
        self.guardian = guardian
        guardian.watch(self.pid)
        _PUMPS.submit(self._pump_output)

    def terminate(self, grace: float) -> None:
        """Ask the run to stop (SIGTERM to its group); ``grace`` is how long until ``kill``."""
        self.signal_group(signal.SIGTERM)

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)

    def exit_error(self, returncode: int, last_stderr: str) -> str | None:
        """Why the run failed beyond its exit status, if this kind of run can tell."""
        return None

    def signal_group(self, sig: int) -> None:
        """Signal every process of the run (its group); a group already gone is fine."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def _exited(self) -> bool:
        """Has the child exited?  Checked without reaping it, so its pid (and group id) cannot be
        reused before the rest of the group is killed."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _pump_output(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(self.proc.stderr, selectors.EVENT_READ, "stderr")
        pending: list[Line] = []
        last_stderr = ""
        last_flush = time.monotonic()
        eof_deadline: float | None = None
        while sel.get_map():
            wait = _EXIT_CHECK if not pending else max(0.0, last_flush + _FLUSH_EVERY - time.monotonic())
            for key, _ in sel.select(timeout=wait):
                chunk = os.read(key.fd, 65536)
                if chunk:
                    pending += self.capture.feed(key.data, chunk)
                else:
                    sel.unregister(key.fileobj)
            if eof_deadline is None and self._exited():
                # The run is over: whatever it left behind in its group goes too.
                self.signal_group(signal.SIGKILL)
                eof_deadline = time.monotonic() + _EOF_GRACE
            now = time.monotonic()
            if pending and now - last_flush >= _FLUSH_EVERY:
                last_stderr = _last_stderr(pending, last_stderr)
                self.events.put(OutputEvent(self.run_id, pending))
                pending, last_flush = [], now
            if eof_deadline is not None and now > eof_deadline:
                break  # a process that escaped the group still holds the pipe
        sel.close()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()
        if eof_deadline is None:  # it closed its output but runs on: wait, unreaped, then clean up
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
            self.signal_group(signal.SIGKILL)
        returncode = self.proc.wait()
        self.guardian.forget(self.pid)
        pending += self.capture.close()
        if pending:
            last_stderr = _last_stderr(pending, last_stderr)
            self.events.put(OutputEvent(self.run_id, pending))
        error = self.exit_error(returncode, last_stderr) if returncode else None
        self.events.put(ExitEvent(self.run_id, returncode, error))


def _last_stderr(lines: list[Line], before: str) -> str:
    """The last non-empty stderr line (docker's closing "See 'docker run --help'." skipped)."""
    for line in reversed(lines):
        text = line.text.strip()
        if line.stream == "stderr" and text and not text.startswith("See '"):
            return text[:300]
    return before
