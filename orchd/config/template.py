"""The documented configuration file, rendered from the key declarations themselves so that the
shipped etc/orchd/orchd.toml (checked by a test) and `orchd config init` can never drift from
what the loader accepts."""

from __future__ import annotations

import dataclasses
import textwrap

import tomli_w

from orchd.config.fields import Bounded
from orchd.config.model import ARRAYS, SECTIONS, ContainerConfig

RANGES_BEGIN = "<!-- ranges: generated from the key declarations by `python -m tests.cli_reference` -->\n"
RANGES_END = "<!-- end of the ranges -->\n"

HEADER = """\
# /etc/orchd/orchd.toml: read by orchd-scheduler, every orchd-worker and the orchd CLI.
#
# Every key is shown with its default.  Precedence: command-line flag > environment
# (ORCHD_<SECTION>_<KEY>, e.g. ORCHD_DATABASE_URL) > this file > default.
# Deployments may also live in deployments.d/*.toml beside this file.
# Durations are strings such as "500ms", "30s", "5m", "2h", "7d".
# Check it with: orchd config validate
"""

EXAMPLES = """\
# Pools group workers: `orchd-worker --pool NAME` serves one.  Pools used by deployments are
# created automatically; declare one to limit or pause it.
#
# [[pools]]
# name = "default"
# concurrency_limit = 0      # runs of this pool active at once across all workers; 0 = no limit
# paused = false

# A deployment is a command plus when to run it.  Nothing runs until you add one.
#
# [[deployments]]
# name = "nightly-backup"
# description = "Dump the database to /srv/backup."
# pool = "default"
# command = ["/usr/local/bin/backup", "--full"]   # argv list, run without a shell
# parameters = { target = "/srv/backup" }          # JSON in $ORCHD_PARAMETERS
# env = { PGHOST = "db1" }
# working_dir = "/srv/backup"
# timeout = "2h"               # then SIGTERM, SIGKILL after worker.kill_grace: TIMED_OUT
# retries = 2                  # extra attempts after FAILED, TIMED_OUT or CRASHED
# retry_delay = "1m"
# retry_backoff = 2.0
# catchup = "latest"           # after downtime: none | latest | all (default: scheduler.catchup)
# priority = 0                 # higher is claimed first within the pool
# max_active_runs = 1          # runs of this deployment active at once (0 = no limit)
# overlap = "skip"             # due while max_active_runs are active: allow | skip | queue | cancel_previous
# tags = ["backup"]
# schedules = [
#   { cron = "30 2 * * *", timezone = "Europe/Berlin" },   # crontab(5) semantics
#   { interval = "15m" },                                  # at :00, :15, :30, :45 (epoch-anchored)
#   { at = 2026-12-24T18:00:00, timezone = "Europe/Berlin", parameters = { target = "/srv/xmas" } },
# ]
#
# [[deployments]]
# name = "refresh-report"
# entrypoint = "reports.jobs:refresh"          # called as refresh(**parameters); its return value is stored
# python = "/opt/reports/venv/bin/python"      # the deployment's own interpreter (default: the worker's)
# parameters = { days = 7 }
# schedules = [{ cron = "0 6 * * mon-fri", timezone = "Europe/Berlin" }]
#
# [[deployments]]
# name = "publish-report"
# command = ["/usr/local/bin/publish"]         # gets $ORCHD_UPSTREAM_RUN_ID and $ORCHD_UPSTREAM_RESULT
# triggers = [{ after = "refresh-report", on = ["COMPLETED"] }]   # after each COMPLETED refresh-report

# Notifications: who hears about what runs do.  Sent by the leading scheduler, at least once,
# with a stable idempotency key (see README, "Notifications").
#
# [[notifications]]
# name = "ops-failures"
# on = ["FAILED", "CRASHED", "TIMED_OUT", "LATE", "RECOVERED", "WORKER_OFFLINE"]
# deployments = ["nightly-*"]         # globs; or tags = ["critical"]; neither: all deployments
# final_only = true                   # failures only when no retry follows
# throttle = "10m"                    # one message per deployment per 10 minutes; the next says "+N more"
# late_after = "1m"                   # LATE: still waiting for a worker this long after its due time
# urls = ["mailtos://user:pass@smtp.example.com?to=ops@example.com", "ntfy://ntfy.sh/orchd-ops"]
# url_file = "notify-urls"            # more Apprise URLs: a file, or a systemd credential NAME
# webhook = "https://hooks.example.com/orchd"
# secret_file = "/etc/orchd/webhook-secret"   # X-Orchd-Signature-256: sha256=HMAC of the body
# command = ["/usr/local/bin/page-oncall"]    # the event as JSON on stdin and in $ORCHD_EVENT
# timeout = "10s"
# attempts = 8
"""


def render() -> str:
    parts = [HEADER]
    for name, cls in SECTIONS.items():
        parts.append(f"\n[{name}]")
        for fd in dataclasses.fields(cls):
            default = fd.default_factory() if fd.default_factory is not dataclasses.MISSING else fd.default
            doc = fd.metadata["doc"]
            if isinstance(fd.metadata["parser"], Bounded):
                doc += f" Accepts {fd.metadata['parser'].describe()}."
            for line in textwrap.wrap(doc, 96):
                parts.append(f"# {line}")
            parts.append(tomli_w.dumps({fd.name: default}).rstrip())
    parts.append("")
    parts.append(EXAMPLES)
    return "\n".join(parts)


def ranges() -> str:
    """The README's table of what each number and duration key accepts (kept current by a test)."""
    rows = ["| key | accepts |", "|---|---|"]
    tables = [
        *SECTIONS.items(),
        *((f"{name}[]", cls) for name, cls in ARRAYS.items()),
        ("deployments[].container", ContainerConfig),
    ]
    for label, cls in tables:
        for fd in dataclasses.fields(cls):
            if isinstance(parser := fd.metadata["parser"], Bounded):
                rows.append(f"| `{label}.{fd.name}` | {parser.describe()} |")
    return RANGES_BEGIN + "\n".join(rows) + "\n" + RANGES_END
