"""The guardian of a worker's runs: kills their process groups when the worker dies.

When a worker is SIGKILLed, its runs' processes (and whatever they started: a shell's ``sleep``,
a pipeline) would be re-parented and keep running next to the retry of the run.  The worker
starts this small helper (standard library only, in a session of its own so a terminal's
Ctrl-C does not reach it) and tells it, through a pipe, the process group of every run it starts
("+PGID") and finishes ("-PGID").  When the pipe reaches end-of-file the worker is gone, however
it died, and the groups still listed are killed.
"""

import contextlib
import os
import signal
import sys


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the end of the pipe ends the guardian
    groups: set[int] = set()
    for line in sys.stdin:
        op, pgid = line[:1], int(line[1:])
        if op == "+":
            groups.add(pgid)
        else:
            groups.discard(pgid)
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":
    main()
