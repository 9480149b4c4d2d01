"""``orchd systemd install``: the systemd units for a pip installation, pointing at it.

It registers itself on ``orchd`` (imported last by ``orchd.cli``), to keep that file's diff to a line.

The units are kept here as templates, not as files beside the package, because a wheel carries
only the package: the files in the repository's ``systemd/`` (what the Debian package ships) are
these templates rendered for ``/usr/bin``, and a test keeps the two identical.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import click

from orchd.cli.oneline import fail

MARKER = "orchd systemd install"
#: The header of the files in the repository's systemd/, which the Debian package installs.
PACKAGED_HEADER = (
    "# Shipped with orchd.  Override it rather than edit it: `systemctl edit UNIT` for a unit,\n"
    "# a file of the same name under /etc for sysusers.d and tmpfiles.d.\n"
)
PACKAGED_BINDIR = Path("/usr/bin")
UNIT_DIR = Path("/etc/systemd/system")
USER_PATTERN = r"[a-z_][a-z0-9_-]{0,30}"

# The service both daemons share; the parts in {braces} differ ({{user}} and {bindir} are filled
# in at install time).
_SERVICE = """\
[Unit]
Description={description}
Wants=network-online.target
After={after}
PartOf=orchd.target

[Service]
Type=notify
NotifyAccess=main
{execution}Restart=on-failure
RestartSec=2s
# 78 (EX_CONFIG) is a bad config: restarting cannot fix it
RestartPreventExitStatus=78
# WATCHDOG=1 comes from the main loop, so a loop hung this long is killed and restarted
WatchdogSec=60s
# READY=1 comes once the database answers and its schema is current
TimeoutStartSec=5min
{stopping}User={{user}}
Group={{user}}
StateDirectory=orchd
StateDirectoryMode=0750
ConfigurationDirectory=orchd
ConfigurationDirectoryMode=0750
UMask=0027
# Lines that bypass the structured log (a refused config, a crash's traceback) are errors
SyslogLevel=err
# The database URL as a credential instead of in orchd.toml, in a drop-in:
#   LoadCredential=database-url:/etc/orchd/database-url

{sandbox}
[Install]
WantedBy=multi-user.target orchd.target
"""

_HARDENING = """\
NoNewPrivileges=yes
CapabilityBoundingSet=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
PrivateUsers=yes
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
"""
#: What the worker's runs (user code: JITs, /proc readers, resource limits) must be allowed.
_NOT_FOR_RUNS = {"ProcSubset=pid", "MemoryDenyWriteExecute=yes", "SystemCallFilter=~@privileged @resources"}

SCHEDULER = _SERVICE.format(
    description="orchd scheduler: turns schedules into runs",
    after="network-online.target postgresql.service",
    execution="ExecStart={bindir}/orchd-scheduler\nExecReload=/bin/kill -HUP $MAINPID\n",
    stopping="TimeoutStopSec=30s\n",
    sandbox="# Sandbox.  The network stays open: the database may be a PostgreSQL on another host.\n"
    + _HARDENING,
)

WORKER = _SERVICE.format(
    description="orchd worker for pool %i",
    after="network-online.target postgresql.service orchd-scheduler.service",
    execution=(
        "# No ExecReload=: a worker reads deployments from the database, so only the scheduler reloads;\n"
        "# worker settings change with a restart, which lets running runs finish first.\n"
        "ExecStart={bindir}/orchd-worker --pool %i\n"
    ),
    stopping=(
        "# SIGTERM goes to the worker alone: it stops claiming, lets its runs finish for\n"
        "# worker.shutdown_grace (30s), then stops the rest (worker.kill_grace, 10s) and hands them\n"
        "# back.  Whatever is still there after TimeoutStopSec gets SIGKILL.\n"
        "KillMode=mixed\n"
        "TimeoutStopSec=60s\n"
    ),
    sandbox=(
        "# Sandbox, which the runs (user code) share.  Runs may write only to /var/lib/orchd (their\n"
        "# default working directory); relax in a drop-in (systemctl edit orchd-worker@POOL), e.g.\n"
        "#   ReadWritePaths=/srv/backup    ProtectHome=read-only    PrivateDevices=no\n"
        + "".join(f"{line}\n" for line in _HARDENING.splitlines() if line not in _NOT_FOR_RUNS)
    ),
)

#: The drop-in for a worker whose runs are containers of a rootful podman
#: (``systemctl edit orchd-worker@POOL``): exactly what podman, conmon, runc and netavark were
#: refused by the worker's sandbox, found by running podman under it (README: Containers).
CONTAINERS_DROPIN = """\
[Service]
# podman as root: the worker (and its process runs, if any) runs as root
User=root
Group=root
# /var/lib/orchd stays the orchd user's: as a root unit's StateDirectory= systemd would hand it,
# with the SQLite database the scheduler uses too, to root.  The worker writes there as root.
StateDirectory=
Environment=ORCHD_STATE_DIR=/var/lib/orchd
# runc and conmon need every capability, their own user, mount, pid, network namespaces and the
# system calls to make them (mount, pivot_root, setns, unshare)
CapabilityBoundingSet=~
PrivateUsers=no
RestrictNamespaces=no
SystemCallFilter=
# podman's mounts (containers' root file systems, bridge networks' namespaces in /run/netns) must
# be seen by every podman: the worker restarted after a crash, which removes what the dead one
# left, and an administrator's `podman ps`.  So the worker gets no mount namespace of its own,
# which each of these would give it (a read-only system, private /tmp and /dev, hidden files).
ProtectSystem=no
ProtectHome=no
PrivateTmp=no
PrivateDevices=no
PrivateMounts=no
ProtectKernelTunables=no
ProtectKernelModules=no
ProtectKernelLogs=no
ProtectControlGroups=no
ProtectProc=default
# containers get devices (/dev/null, /dev/fuse, GPUs) and a hostname each; netavark talks netlink
DevicePolicy=auto
ProtectHostname=no
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
"""

WEB = _SERVICE.format(
    description="orchd web: the dashboard and HTTP API",
    after="network-online.target postgresql.service",
    execution=(
        "ExecStart={bindir}/orchd-web\n"
        "# The API token (Authorization: Bearer) as a credential instead of web.token_file, in a drop-in:\n"
        "#   LoadCredential=web-password:/etc/orchd/web-token\n"
    ),
    stopping="# SIGTERM ends the live streams, so connections close within seconds\nTimeoutStopSec=15s\n",
    sandbox="# Sandbox.  The network stays open: it serves web.listen and may reach a remote PostgreSQL.\n"
    + _HARDENING,
)

TARGET = """\
[Unit]
Description=orchd scheduler and workers
# start, stop or restart every enabled orchd unit at once: systemctl restart orchd.target

[Install]
WantedBy=multi-user.target
"""

SYSUSERS = 'u {user} - "orchd workflow scheduler" /var/lib/orchd /usr/sbin/nologin\n'

TMPFILES = """\
d /var/lib/orchd 0750 {user} {user} -
d /etc/orchd 0750 root {user} -
d /etc/orchd/deployments.d 0750 root {user} -
z /etc/orchd/orchd.toml 0640 root {user} -
"""


@dataclass(frozen=True)
class File:
    path: Path
    text: str


def render(unit_dir: Path, bindir: Path, user: str, header: str) -> list[File]:
    """Every file of an installation; sysusers.d/ and tmpfiles.d/ go beside ``systemd/system``
    (``/etc/systemd/system`` -> ``/etc/sysusers.d``), or into ``unit_dir`` itself otherwise."""
    base = unit_dir.parent.parent if unit_dir.parts[-2:] == ("systemd", "system") else unit_dir

    def text(template: str) -> str:
        return header + template.format(bindir=bindir, user=user)

    return [
        File(unit_dir / "orchd-scheduler.service", text(SCHEDULER)),
        File(unit_dir / "orchd-worker@.service", text(WORKER)),
        File(unit_dir / "orchd-web.service", text(WEB)),
        File(unit_dir / "orchd.target", text(TARGET)),
        File(base / "sysusers.d" / "orchd.conf", text(SYSUSERS)),
        File(base / "tmpfiles.d" / "orchd.conf", text(TMPFILES)),
    ]


def installed_bindir() -> Path | None:
    """Where this installation's ``orchd-scheduler``, ``orchd-worker`` and ``orchd-web`` scripts are."""
    for candidate in (Path(sysconfig.get_path("scripts")), Path(sys.argv[0]).parent):
        if all((candidate / name).is_file() for name in ("orchd-scheduler", "orchd-worker", "orchd-web")):
            return candidate.absolute()
    return None


def next_steps(files: list[File], user: str) -> str:
    sysusers = next(f.path for f in files if f.path.parent.name == "sysusers.d")
    tmpfiles = next(f.path for f in files if f.path.parent.name == "tmpfiles.d")
    return "\n".join(
        [
            "Next:",
            f"  systemd-sysusers {sysusers}",
            f"  systemd-tmpfiles --create {tmpfiles}",
            "  systemctl daemon-reload",
            "  orchd config validate            # /etc/orchd/orchd.toml; an empty file works",
            "  systemctl enable --now orchd-scheduler.service",
            "  systemctl enable --now orchd-worker@default.service   # one per pool",
            "  systemctl enable --now orchd-web.service   # the dashboard, http://127.0.0.1:4200/",
            f"  journalctl -u orchd-scheduler -u 'orchd-worker@*' -f   # runs as user {user}",
        ]
    )


@click.group("systemd")
def systemd_group() -> None:
    """systemd units for orchd installed with pip (the Debian package ships its own).

    \b
    Example:
      orchd systemd install --dry-run
      sudo orchd systemd install --user orchd
    """


@systemd_group.command("install")
@click.option("--user", default="orchd", show_default=True, help="System user the daemons run as.")
@click.option(
    "--prefix",
    type=click.Path(file_okay=False, path_type=Path),
    default=UNIT_DIR,
    show_default=True,
    help="Directory for the units; sysusers.d/ and tmpfiles.d/ go beside its systemd/system.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be written; write nothing.")
def install(user: str, prefix: Path, dry_run: bool) -> None:
    """Write orchd-scheduler.service, orchd-worker@.service and orchd.target with ExecStart=
    pointing at this installation, plus the sysusers.d and tmpfiles.d entries for the user.

    \b
    Example:
      sudo /opt/orchd/bin/orchd systemd install
      sudo systemctl enable --now orchd-scheduler orchd-worker@default
    """
    if not re.fullmatch(USER_PATTERN, user):
        fail(f"--user: expected a system user name such as 'orchd', got {user!r}", code=2)
    bindir = installed_bindir()
    if bindir is None:
        fail(
            "cannot find orchd-scheduler, orchd-worker and orchd-web beside this orchd: reinstall it with pip"
        )
        return
    if bindir.is_relative_to("/home") or bindir.is_relative_to("/root"):
        click.echo(
            f"orchd: warning: {bindir} is under /home or /root, which ProtectHome=yes hides from the "
            "daemons: install orchd elsewhere (e.g. python3 -m venv /opt/orchd)",
            err=True,
        )
    files = render(prefix.absolute(), bindir, user, f"# Written by `{MARKER}` for {bindir}.\n")
    for file in files:
        if file.path.exists() and MARKER not in file.path.read_text(errors="replace"):
            fail(f"{file.path} exists and was not written by `{MARKER}`: remove it first")
    for file in files:
        if dry_run:
            click.echo(f"--- would write {file.path}\n{file.text}")
            continue
        file.path.parent.mkdir(parents=True, exist_ok=True)
        file.path.write_text(file.text)
        click.echo(f"wrote {file.path}")
    click.echo(next_steps(files, user))
