"""The guardian of a worker's runs: kills their process groups and removes their containers when
the worker dies.

When a worker is SIGKILLed, its runs' processes (and whatever they started: a shell's ``sleep``,
a pipeline) would be re-parented and keep running next to the retry of the run; a container run's
container would keep running under its engine even once its client is killed.  The worker starts
this small helper (standard library only, in a session of its own so a terminal's Ctrl-C does not
reach it) and tells it, through a pipe, the process group of every run it starts ("+PGID") and
finishes ("-PGID"), and the name of every container before it is created ("+NAME") and after it
is removed ("-NAME").  When the pipe reaches end-of-file the worker is gone, however it died: the
containers still listed are removed with the command given as arguments (the engine's
force-remove, e.g. ``podman rm --force --time 0 --ignore``), and the groups still listed are
killed once that is done or a moment later (``end_runs``).

It is also the backstop of self-fencing (orchd/worker/fence.py): after each renewal of its leases
the worker says by when its runs must be dead if no further renewal comes ("@DEADLINE", a
CLOCK_MONOTONIC time).  When that moment passes without a newer one, the worker is cut off from
the database or stuck: the guardian kills the groups and removes the containers it knows, as at
the worker's death (without waiting for the engine: the worker may die meanwhile, and that must
be answered at once), and waits for the next deadline.
"""

import contextlib
import math
import os
import select
import signal
import subprocess
import sys
import time

#: At a worker's death, how long its runs' process groups wait for its containers' removal
#: (end_runs; never past the kill deadline).  A fenced worker's are killed at once.
CLIENT_GRACE = 1.0


def main(remove: list[str]) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the end of the pipe ends the guardian
    groups: set[int] = set()
    containers: set[str] = set()
    deadline = math.inf
    pending = b""
    removing: list[subprocess.Popen[bytes]] = []
    while True:
        removing = [proc for proc in removing if proc.poll() is None]
        wait = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
        if removing:
            wait = 1.0 if wait is None else min(wait, 1.0)  # to reap them
        if not select.select([0], [], [], wait)[0]:
            if time.monotonic() >= deadline:  # fenced: no renewal came in time
                removing += end_runs(groups, containers, remove, wait=False)
                deadline = math.inf
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            op, what = line[:1].decode(), line[1:].decode().strip()
            if op == "@":
                deadline = float(what)
            elif what.isdigit():
                (groups.add if op == "+" else groups.discard)(int(what))
            else:
                (containers.add if op == "+" else containers.discard)(what)
    # the worker is gone: its runs must still be dead by the last deadline it gave
    end_runs(groups, containers, remove, wait=True, grace=min(CLIENT_GRACE, deadline - time.monotonic()))


def end_runs(
    groups: set[int], containers: set[str], remove: list[str], wait: bool, grace: float = 0.0
) -> list[subprocess.Popen[bytes]]:
    """Force-remove the containers, SIGKILL the groups; returns the removal still going on.

    The removal starts first and the groups are killed once it is done or after at most
    ``grace``: a container run's group holds its engine client, and a client SIGKILLed while it
    creates the container (podman: between the runtime's create and its own record of it) left
    the container's monitor and the runtime's init process behind for good, unknown to the
    engine (4 of 48 workers SIGKILLed in the client's first 350 ms).  Given the moment, the
    engine finishes the create before the removal, which then takes the container."""
    proc = _start_removal(containers, remove)
    if proc is not None and grace > 0:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    if proc is None:
        return []
    if not wait:
        return [proc]
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=120)
    return []


def _start_removal(containers: set[str], remove: list[str]) -> subprocess.Popen[bytes] | None:
    if not (containers and remove):
        return None
    try:
        return subprocess.Popen(
            [*remove, *sorted(containers)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None


if __name__ == "__main__":
    main(sys.argv[1:])
