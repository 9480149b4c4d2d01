"""The typed configuration: one frozen dataclass per section, every key with a default and a doc."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchd.config import fields as f
from orchd.errors import did_you_mean
from orchd.schedules import ScheduleSpec
from orchd.states import FINISHED, RunState

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
LOG_LEVELS = ("debug", "info", "warning", "error")


def database_url(value: Any) -> str:
    """Empty (the SQLite default) or a URL of a supported database: checked here so `config
    validate` refuses what every other command would refuse (the driver parses it later)."""
    text = f.text(value).strip()
    if text and not re.match(r"(sqlite|postgres|postgresql)(\+\w+)?://", text):
        scheme = text.partition("://")[0] if "://" in text else ""
        got = f"the unsupported database {scheme!r}" if scheme else "no URL"
        raise ValueError(f"expected sqlite:///PATH or postgresql://USER@HOST/DB, got {got}")
    return text


def postgres_url(value: Any) -> str:
    """Empty or a PostgreSQL URL (the direct connection behind a pooler)."""
    text = f.text(value).strip()
    if text and not re.match(r"(postgres|postgresql)(\+\w+)?://", text):
        raise ValueError(f"expected postgresql://[USER@]HOST[:PORT][/DB] (or empty), got {value!r}")
    return text


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = f.setting(
        "",
        database_url,
        "SQLAlchemy URL: sqlite:///PATH (a relative PATH is relative to this file) or "
        "postgresql+psycopg://USER@HOST/DB. "
        "Empty: SQLite file orchd.db in /var/lib/orchd when writable, else $XDG_DATA_HOME/orchd.",
        as_text=True,
    )
    url_file: str = f.setting(
        "", f.text, "Read the URL from this file instead (keeps a password out of orchd.toml)."
    )
    migrate_on_start: bool = f.setting(
        True, f.boolean, "Apply pending schema migrations when a daemon starts."
    )
    pool_size: int = f.setting(5, f.integer(1, 1000), "Connections kept per process (PostgreSQL).")
    connect_timeout: float = f.setting(
        "10s", f.duration("0s", "1h"), "How long one connection attempt may take."
    )
    busy_timeout: float = f.setting(
        "5s", f.duration("0s", "1h"), "SQLite: how long a writer waits for the lock."
    )
    pooler: str = f.setting(
        "none",
        f.choice("none", "transaction"),
        'What url reaches: PostgreSQL itself (or a session-mode pooler), or "transaction": a '
        "transaction-mode pooler such as PgBouncer, through which orchd opens no session "
        "(LISTEN, leader lock) and prepares no statement (see prepared_statements).",
    )
    direct_url: str = f.setting(
        "",
        postgres_url,
        "With pooler = transaction: PostgreSQL itself, for the connections that need a session "
        "(LISTEN wake-ups, the leader lock, the live dashboard); user, password and database "
        "default to url's. Empty: workers and the dashboard poll, a scheduler refuses to start.",
        as_text=True,
    )
    prepared_statements: str = f.setting(
        "auto",
        f.choice("auto", "on", "off"),
        'Let psycopg prepare the statements it repeats; auto: on, off when pooler = "transaction" '
        "(PgBouncer >= 1.22 with max_prepared_statements > 0 keeps them: say on).",
    )


@dataclass(frozen=True)
class SchedulerConfig:
    loop_interval: float = f.setting("1s", f.duration("100ms", "1h"), "Time between two scheduler ticks.")
    horizon: float = f.setting("10m", f.duration("0s", "365d"), "How far ahead runs are materialized.")
    max_scheduled_runs: int = f.setting(
        100, f.integer(1, 100_000), "At most this many future runs per schedule."
    )
    catchup: str = f.setting(
        "latest",
        f.choice("none", "latest", "all"),
        "Default for deployments: after downtime run none, the latest, or all missed fire times.",
    )
    catchup_limit: int = f.setting(
        100, f.integer(1, 100_000), 'Cap on missed runs materialized by catchup = "all".'
    )
    misfire_grace: float | None = f.setting(
        "1h",
        f.optional_duration("1s", "3650d"),
        "A run still waiting this long after its due time becomes MISSED; empty: never.",
    )
    retention: float | None = f.setting(
        "30d",
        f.optional_duration("1m", "36500d"),
        "Finished runs (with history and output) older than this are deleted; empty: never.",
    )
    worker_timeout: float = f.setting(
        "2m", f.duration("1s", "30d"), "A worker silent this long is shown offline."
    )
    backfill_limit: int = f.setting(
        1000, f.integer(1, 1_000_000), "`orchd backfill` refuses more runs than this without --yes."
    )


def pool_name(value: Any) -> str:
    """A pool name, wherever it comes from (config, --pool, a pool command): the rule `pool create`
    enforces, so a pool cannot be born with a name that cannot be typed back."""
    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(f"expected a pool name (letters, digits, '.', '_', '-'), got {value!r}")
    return value


def pool_names(value: Any) -> list[str]:
    names = [pool_name(name) for name in f.string_list(value)]
    if not names:
        raise ValueError("expected at least one pool name")
    return names


def worker_name(value: Any) -> str:
    """Empty (HOSTNAME-PID), or a name of printable characters that fits the database's column."""
    text = f.text(value)
    if len(text) > 200 or not text.isprintable():
        raise ValueError(f"expected a name of at most 200 printable characters, got {text!r}")
    return text


@dataclass(frozen=True)
class WorkerConfig:
    pools: list[str] = f.setting(["default"], pool_names, "Pools served when --pool is not given.")
    concurrency: int = f.setting(4, f.integer(1, 10_000), "Runs executed at once by one worker.")
    name: str = f.setting("", worker_name, "Worker name; empty: HOSTNAME-PID.", as_text=True)
    heartbeat: float = f.setting("10s", f.duration("100ms", "1h"), "How often a worker extends its leases.")
    lease_timeout: float = f.setting(
        "60s",
        f.duration("2s", "1d"),
        "A run whose lease is not extended for this long is CRASHED and retried.",
    )
    fence_margin: float | None = f.setting(
        "",
        f.optional_duration("100ms", "1d", empty="a quarter of lease_timeout"),
        "A worker that cannot renew its leases stops its runs this long before they expire (SIGTERM, "
        "SIGKILL halfway), so no retry elsewhere overlaps them; covers clock skew. Empty: lease_timeout / 4.",
    )
    poll_interval: float = f.setting(
        "30s",
        f.duration("100ms", "1h"),
        "Safety-net poll: workers are woken by NOTIFY (PostgreSQL) or by their wake socket (SQLite).",
    )
    shutdown_grace: float = f.setting(
        "30s",
        f.duration("0s", "1d"),
        "On SIGTERM, how long running runs may finish before they are killed and re-queued.",
    )
    kill_grace: float = f.setting(
        "10s", f.duration("0s", "1h"), "Between SIGTERM and SIGKILL of a run's process group."
    )
    log_max_bytes: int = f.setting(
        1_000_000,
        f.integer(1024, 1 << 30),
        "Output kept per run (head and tail); the rest is counted and dropped.",
    )
    work_dir: str = f.setting(
        "", f.text, "Working directory of runs without working_dir (must exist); empty: the state dir."
    )
    container_runtime: str = f.setting(
        "auto",
        f.choice("auto", "podman", "docker"),
        "Engine for runs with an image (through its CLI); auto: podman if installed, else docker.",
    )
    container_binary: str = f.setting(
        "", f.text, "Path of the engine's command; empty: podman or docker found on the PATH."
    )

    @property
    def effective_fence_margin(self) -> float:
        """``fence_margin``, or a quarter of the lease when it is empty."""
        return self.fence_margin or self.lease_timeout / 4


@dataclass(frozen=True)
class LoggingConfig:
    level: str = f.setting("info", f.choice(*LOG_LEVELS), "Least severe level written.")
    format: str = f.setting(
        "auto",
        f.choice("auto", "console", "logfmt", "json", "journald"),
        "auto: journald under systemd, console on a terminal, else logfmt (timestamped key=value lines).",
    )


def listen_address(value: Any) -> str:
    """Empty (off) or HOST:PORT for the metrics endpoint; HOST may be empty (all interfaces) or [IPv6]."""
    text = f.text(value).strip()
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[\w.-]*):(\d{1,5})", text)
    if text and not (match and 0 < int(match.group(2)) < 65536):
        raise ValueError(f'expected "HOST:PORT" such as "127.0.0.1:9464", or "" for off, got {value!r}')
    return text


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = f.setting(
        "",
        listen_address,
        'Prometheus endpoint of each daemon, e.g. "127.0.0.1:9464"; empty: off. '
        "Daemons sharing a host need a port each (--metrics-listen or ORCHD_METRICS_LISTEN).",
    )


def volume_list(value: Any) -> list[str]:
    """Bind mounts and named volumes as the engines take them: SOURCE:DESTINATION[:OPTIONS]."""
    volumes = f.string_list(value)
    for item in volumes:
        parts = item.split(":")
        if not 2 <= len(parts) <= 3 or not parts[0] or not parts[1].startswith("/"):
            raise ValueError(f'expected "SOURCE:/PATH/IN/CONTAINER[:ro]" entries, got {item!r}')
    return volumes


def gpu_request(value: Any) -> str:
    """GPUs in docker's --gpus syntax: "all", a count, or "device=0,1"."""
    text = f.text(value).strip()
    if text and not re.fullmatch(r"all|\d+|device=\w+(,\w+)*", text):
        raise ValueError(f'expected "all", a count such as "2", or "device=0,1", got {value!r}')
    return text


@dataclass(frozen=True)
class ContainerConfig:
    """How a run with an ``image`` is started: the keys of a deployment's (or pool's)
    ``container = {...}``.  A deployment's keys override its pool's one by one."""

    pull: str = f.setting(
        "missing",
        f.choice("missing", "always", "never"),
        "Pull the image when it is missing, before every run, or never (local images only).",
    )
    network: str = f.setting(
        "", f.text, 'Network: "bridge", "host", "none" or a named network; empty: the engine\'s default.'
    )
    volumes: list[str] = f.setting(
        [], volume_list, 'Mounts, e.g. ["/srv/data:/data:ro", "cache:/cache"] (SOURCE:DEST[:OPTIONS]).'
    )
    memory: str = f.setting("", f.size, 'Memory limit, e.g. "2g": above it the run FAILS "out of memory".')
    cpus: float = f.setting(0.0, f.number(0.0, 1024.0), "CPU limit, e.g. 1.5; 0: no limit.")
    user: str = f.setting("", f.text, 'User inside the container, e.g. "1000:1000"; empty: the image\'s.')
    gpus: str = f.setting(
        "",
        gpu_request,
        '"all", a count, or "device=0,1" (docker --gpus; CDI nvidia.com/gpu devices with podman).',
    )
    shm_size: str = f.setting("", f.size, 'Size of /dev/shm, e.g. "1g"; empty: the engine\'s default.')
    init: bool = f.setting(
        True, f.boolean, "Run a tiny init as PID 1 that forwards signals (stop is then prompt)."
    )
    options: list[str] = f.setting(
        [], f.argv, 'More options for the engine\'s run command, e.g. ["--cap-drop=ALL"].'
    )


def base_path(value: Any) -> str:
    """The URL prefix orchd-web is served under: "/" or "/orchd/" (leading and trailing slash)."""
    text = f.text(value).strip()
    if not re.fullmatch(r"/([A-Za-z0-9._~-]+/)*", text):
        raise ValueError(f'expected a path such as "/" or "/orchd/" (with both slashes), got {value!r}')
    return text


def public_url(value: Any) -> str:
    """Empty, or the URL people reach orchd-web at (behind a proxy), ending in "/"."""
    text = f.text(value).strip()
    if text and not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", text):
        raise ValueError(f'expected a URL such as "https://ops.example.com/orchd/", got {value!r}')
    return text if not text or text.endswith("/") else text + "/"


def networks(value: Any) -> list[str]:
    """Addresses or networks ("10.0.0.0/8", "::1"), each checked."""
    items = f.string_list(value)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"expected IP addresses or networks such as 10.0.0.0/8, got {item!r}") from None
    return items


@dataclass(frozen=True)
class WebConfig:
    listen: str = f.setting(
        "127.0.0.1:4200",
        listen_address,
        "Where orchd-web serves the dashboard and API; a non-loopback address needs auth "
        '(users or a token); "" keeps `orchd up` from starting it.',
    )
    base_path: str = f.setting("/", base_path, 'URL prefix behind a reverse proxy, e.g. "/orchd/".')
    public_url: str = f.setting(
        "", public_url, 'The URL people use (behind a proxy), e.g. "https://ops.example.com/orchd/".'
    )
    trusted_proxies: list[str] = f.setting(
        ["127.0.0.1", "::1"],
        networks,
        "Proxies whose X-Forwarded-For/-Proto headers are believed (addresses or networks).",
    )
    users_file: str = f.setting(
        "",
        f.text,
        "Users and password hashes, written by `orchd web passwd`; empty: web-users.toml beside "
        "this config file.",
    )
    token_file: str = f.setting(
        "",
        f.text,
        "A file holding the API token (Authorization: Bearer); empty: the systemd credential "
        "web-password, if any.",
    )
    token_role: str = f.setting("operator", f.choice("viewer", "operator"), "What the API token may do.")
    session_lifetime: float = f.setting("12h", f.duration("1m", "365d"), "A login lasts this long.")
    session_key_file: str = f.setting(
        "",
        f.text,
        "Key signing session cookies (created if missing); empty: web-session-key in the state dir.",
    )
    login_attempts: int = f.setting(
        5, f.integer(1, 1000), "Failed logins allowed per minute from one address or for one user."
    )


@dataclass(frozen=True)
class PoolConfig:
    name: str = f.setting("", f.text, "Pool name (workers serve pools by name).")
    concurrency_limit: int | None = f.setting(
        0,
        f.optional_integer(1, 1_000_000),
        "Runs of this pool active at once across all workers; 0 = no limit.",
    )
    paused: bool = f.setting(False, f.boolean, "A paused pool's runs are not claimed.")
    image: str = f.setting("", f.text, "Default image of the pool's deployments (they run in containers).")
    container: dict[str, Any] = f.setting(
        {}, f.table, "Default container settings of the pool's deployments (see ContainerConfig)."
    )


#: The states a trigger may fire on: those a run ends in (FAILED, TIMED_OUT and CRASHED count once
#: no retry is left).
TRIGGER_STATES: tuple[str, ...] = tuple(s.value for s in RunState if s in FINISHED)


@dataclass(frozen=True)
class TriggerSpec:
    """One entry of a deployment's ``triggers``: a run of the deployment ``after`` that ends in one
    of ``on`` queues a run of this deployment."""

    after: str
    on: tuple[str, ...] = ("COMPLETED",)


def trigger_list(value: Any) -> list[TriggerSpec]:
    """``[{ after = "extract", on = ["COMPLETED"] }, ...]``: each entry's keys and states; whether
    ``after`` names a deployment, and cycles, are checked against the whole config (load.py)."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError('expected a list of tables like [{ after = "extract", on = ["COMPLETED"] }]')
    found: list[TriggerSpec] = []
    for position, item in enumerate(value):
        where = f"[{position}]"
        for key in item:
            if key not in ("after", "on"):
                hint = did_you_mean(key, ["after", "on"]) or " (expected after, on)"
                raise ValueError(f"{where}.{key}: unknown key{hint}")
        after = item.get("after")
        if not isinstance(after, str) or not re.fullmatch(NAME_PATTERN, after):
            got = "nothing" if after is None else repr(after)
            raise ValueError(f"{where}.after: expected the name of a deployment, got {got}")
        states = item.get("on", ["COMPLETED"])
        if isinstance(states, str):
            states = [states]
        if not isinstance(states, list) or not states or any(s not in TRIGGER_STATES for s in states):
            raise ValueError(f"{where}.on: expected a list of {', '.join(TRIGGER_STATES)}, got {states!r}")
        if any(t.after == after for t in found):
            raise ValueError(f"{where}.after: {after!r} is listed twice (give one entry all its states)")
        found.append(TriggerSpec(after, tuple(dict.fromkeys(states))))
    return found


@dataclass(frozen=True)
class DeploymentConfig:
    name: str = f.setting("", f.text, "Unique name; renaming creates a new deployment.")
    description: str = f.setting("", f.text, "Free text shown by the CLI.")
    pool: str = f.setting("default", f.text, "Pool whose workers execute the runs.")
    command: list[str] = f.setting([], f.argv, "argv list executed without a shell (see shell).")
    shell: bool = f.setting(False, f.boolean, "Run command joined by spaces through /bin/sh -c.")
    entrypoint: str = f.setting(
        "", f.text, 'Instead of command: "package.module:function", called with the parameters.'
    )
    python: str = f.setting(
        "", f.text, 'Interpreter for entrypoint; empty: the worker\'s own ("python3" in an image).'
    )
    image: str = f.setting(
        "", f.text, "Run in a container of this image (podman or docker); empty: the pool's, else a process."
    )
    container: dict[str, Any] = f.setting(
        {}, f.table, "Container settings: pull, network, volumes, memory, cpus, user, gpus, shm_size, ..."
    )
    parameters: dict[str, Any] = f.setting(
        {}, f.json_table, "Default parameters, passed as JSON in ORCHD_PARAMETERS (date-times as ISO 8601)."
    )
    env: dict[str, str] = f.setting({}, f.environment, "Extra environment variables for the run.")
    working_dir: str = f.setting(
        "", f.text, "Working directory of the run (must exist, never created); empty: worker.work_dir."
    )
    timeout: float | None = f.setting(
        "", f.optional_duration("100ms", "365d"), "Kill the run (TIMED_OUT) after this long; empty: no limit."
    )
    retries: int = f.setting(0, f.integer(0, 1000), "Extra attempts after FAILED, TIMED_OUT or CRASHED.")
    retry_delay: float = f.setting("10s", f.duration("0s", "1d"), "Delay before the first retry.")
    retry_backoff: float = f.setting(
        2.0, f.number(1.0, 100.0), "Each further retry waits this factor longer."
    )
    catchup: str = f.setting(
        "", f.choice("", "none", "latest", "all"), "Overrides scheduler.catchup for this deployment."
    )
    priority: int = f.setting(
        0, f.integer(-1_000_000, 1_000_000), "Higher runs are claimed first within a pool."
    )
    max_active_runs: int | None = f.setting(
        0,
        f.optional_integer(1, 10_000),
        "Runs of this deployment active at once; 0 = no limit (1 when overlap is set).",
    )
    overlap: str = f.setting(
        "allow",
        f.choice("allow", "skip", "queue", "cancel_previous"),
        "When a run is due while max_active_runs are active: queue it, skip it (MISSED), cancel the others.",
    )
    tags: list[str] = f.setting([], f.string_list, "Labels for filtering.")
    schedules: list[ScheduleSpec] = f.setting(
        [],
        f.raw,
        "List of {cron=..., timezone=...} | {interval=...} | {at=...}, each with active, parameters.",
    )
    triggers: list[TriggerSpec] = f.setting(
        [],
        trigger_list,
        'Run chains: [{ after = "extract", on = ["COMPLETED"] }] queues a run of this deployment '
        "when a run of extract ends in one of on (default COMPLETED).",
    )


#: What a notification rule can be ``on``: the run states, plus the events orchd derives from them.
DERIVED_EVENTS = ("LATE", "RECOVERED", "WORKER_OFFLINE")


def event_names(value: Any) -> list[str]:
    """A non-empty list of run states (``RunState``) and derived events (``DERIVED_EVENTS``)."""
    known = [s.value for s in RunState] + list(DERIVED_EVENTS)
    names = f.string_list(value)
    if not names:
        raise ValueError(f"expected at least one of {', '.join(known)}")
    for name in names:
        if name not in known:
            hint = did_you_mean(name, known) or f" (expected some of {', '.join(known)})"
            raise ValueError(f"unknown event {name!r}{hint}")
    return names


def http_url(value: Any) -> str:
    """Empty, or an http(s) URL (a webhook)."""
    text = f.text(value).strip()
    if text and not re.fullmatch(r"https?://[^/\s?#]+(/\S*)?", text):
        raise ValueError(f'expected an http(s) URL such as "https://hooks.example/orchd", got {value!r}')
    return text


@dataclass(frozen=True)
class NotificationConfig:
    """A notification rule: which events of which deployments, told to which channels."""

    name: str = f.setting("", f.text, "Unique name of the rule (in `orchd notification` and the log).")
    on: list[str] = f.setting(
        [],
        event_names,
        "Events that fire it: run states (FAILED, CRASHED, TIMED_OUT, COMPLETED, MISSED, CANCELLED, ...) "
        "and LATE, RECOVERED (first COMPLETED after failures), WORKER_OFFLINE.",
    )
    deployments: list[str] = f.setting(
        [], f.string_list, 'Deployment names or globs ("nightly-*"); empty (and no tags): all.'
    )
    tags: list[str] = f.setting(
        [], f.string_list, "Deployments with any of these tags (besides those named in deployments)."
    )
    final_only: bool = f.setting(
        True, f.boolean, "FAILED, TIMED_OUT, CRASHED only when no retry follows (the last attempt)."
    )
    throttle: float | None = f.setting(
        "",
        f.optional_duration("1s", "30d"),
        'At most one message per deployment this often; the next says "+N more". Empty: no limit.',
    )
    late_after: float = f.setting(
        "1m", f.duration("1s", "30d"), "LATE: a run still waiting for a worker this long after its due time."
    )
    urls: list[str] = f.setting(
        [], f.string_list, 'Apprise URLs: "mailtos://...", "slack://...", "ntfy://...", "json://...".'
    )
    url_file: str = f.setting(
        "",
        f.text,
        "More Apprise URLs, one a line, read from this file (keeps secrets out of orchd.toml); "
        "a name without a slash is a systemd credential ($CREDENTIALS_DIRECTORY/NAME).",
    )
    webhook: str = f.setting(
        "", http_url, "POST the event as JSON here, with Idempotency-Key and X-Orchd-Signature-256."
    )
    secret: str = f.setting(
        "", f.text, "Webhook HMAC-SHA256 key (X-Orchd-Signature-256: sha256=HEX of the body)."
    )
    secret_file: str = f.setting(
        "", f.text, "Read the webhook secret from this file (or systemd credential NAME) instead."
    )
    command: list[str] = f.setting(
        [], f.argv, "Run this argv (no shell) with the event as JSON on stdin and in ORCHD_EVENT."
    )
    timeout: float = f.setting("10s", f.duration("100ms", "10m"), "One delivery attempt may take this long.")
    attempts: int = f.setting(
        8, f.integer(1, 100), "Delivery attempts per channel (backoff 5s, 15s, 45s, ... up to 1h)."
    )


@dataclass(frozen=True)
class Config:
    """The effective configuration.  ``sources`` says where each "section.key" came from."""

    path: Path | None
    state_dir: Path
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    pools: tuple[PoolConfig, ...] = ()
    deployments: tuple[DeploymentConfig, ...] = ()
    notifications: tuple[NotificationConfig, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)

    def deployment(self, name: str) -> DeploymentConfig | None:
        return next((d for d in self.deployments if d.name == name), None)


SECTIONS: dict[str, type] = {
    "database": DatabaseConfig,
    "scheduler": SchedulerConfig,
    "worker": WorkerConfig,
    "logging": LoggingConfig,
    "metrics": MetricsConfig,
    "web": WebConfig,
}
ARRAYS: dict[str, type] = {
    "pools": PoolConfig,
    "deployments": DeploymentConfig,
    "notifications": NotificationConfig,
}
