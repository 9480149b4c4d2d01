"""The guardian of a worker's runs: kills their process groups and removes their containers when
the worker dies.

When a worker is SIGKILLed, its runs' processes (and whatever they started: a shell's ``sleep``,
a pipeline) would be re-parented and keep running next to the retry of the run; a container run's
container would keep running under its engine even once its client is killed.  The worker starts
this small helper (standard library only, in a session of its own so a terminal's Ctrl-C does not
reach it) and tells it, through a pipe, the process group of every run it starts ("+PGID") and
finishes ("-PGID"), and the name of every container before it is created ("+NAME") and after it
is removed ("-NAME").  When the pipe reaches end-of-file the worker is gone, however it died: the
groups still listed are killed, and the containers removed with the command given as arguments
(the engine's force-remove, e.g. ``podman rm --force --time 0 --ignore``).
"""

import contextlib
import os
import signal
import subprocess
import sys


def main(remove: list[str]) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the end of the pipe ends the guardian
    groups: set[int] = set()
    containers: set[str] = set()
    for line in sys.stdin:
        op, what = line[:1], line[1:].strip()
        if what.isdigit():
            (groups.add if op == "+" else groups.discard)(int(what))
        else:
            (containers.add if op == "+" else containers.discard)(what)
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    if containers and remove:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [*remove, *sorted(containers)],
                stdin=subprocess.DEVNULL,
                timeout=120,
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
