"""Reading orchd.toml (+ deployments.d/*.toml), environment overrides, defaults and validation.

Precedence: command-line flag > environment (ORCHD_<SECTION>_<KEY>) > file > default.  Every
error is a ConfigError whose one-line message names the file, the line when it can be found,
the key, and what was expected, so a person can fix it without reading a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tomllib
from array import array
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from orchd.config.fields import typed
from orchd.config.model import (
    ARRAYS,
    NAME_PATTERN,
    SECTIONS,
    Config,
    ContainerConfig,
    DeploymentConfig,
    NotificationConfig,
    PoolConfig,
)
from orchd.durations import format_duration
from orchd.errors import ConfigError, closest, did_you_mean
from orchd.limits import nul_path
from orchd.schedules import parse_schedule

DEFAULT_PATH = Path("/etc/orchd/orchd.toml")
ENTRYPOINT_PATTERN = r"[A-Za-z_][\w.]*:[A-Za-z_]\w*"
SYSTEM_STATE_DIR = Path("/var/lib/orchd")
CREDENTIAL_NAME = "database-url"
#: The escapes that write a NUL character in a TOML string (the last one is TOML 1.1's); the
#: character itself is refused by the parser.
_NUL_ESCAPES = ("\\u0000", "\\U00000000", "\\x00")


def default_config_path(env: Mapping[str, str]) -> Path:
    return Path(env.get("ORCHD_CONFIG") or DEFAULT_PATH)


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the configuration.

    ``path`` None means ``$ORCHD_CONFIG`` or /etc/orchd/orchd.toml; a missing default file is
    an empty configuration (everything defaulted), a missing explicit file is an error.
    """
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get("ORCHD_CONFIG"))
    cfg_path = Path(path) if path is not None else default_config_path(env)
    files: list[Path] = []
    if cfg_path.exists() or explicit:
        files.append(cfg_path)
        drop_in = cfg_path.parent / "deployments.d"
        if drop_in.is_dir():
            files += sorted(drop_in.glob("*.toml"))
    try:
        return _build(cfg_path if files else None, [_Document.read(p) for p in files], env)
    except _Uncut:
        return _build(cfg_path, [_Document.read(p, cut=False) for p in files], env)


class _Uncut(Exception):
    """A [[deployments]] table cut out of its file does not read alone as one table: the file
    has a layout ``_Document._parse`` did not foresee, and is read again, parsed whole."""


class _Document:
    """One parsed TOML file, remembering its text so keys can be traced back to a line.

    A config may hold 100,000 schedules (6 MB of TOML, 50 MB once parsed whole), so the file is
    never in memory three times over: the text is kept once, with where each line starts (not a
    list of lines: a string each), and each ``[[deployments]]`` table is parsed on its own when
    it is read (``deployments``), so the parsed file is never whole next to the config built
    from it.  The tables are cut out only where that cannot change what the file means (see
    ``_parse``); any other file is parsed whole."""

    _HEADER = re.compile(r"^\s*\[\[?\s*([^\]\s]+)\s*\]\]?\s*(#.*)?$")

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text
        #: The file, without its [[deployments]] tables when ``deployments`` reads them.
        self.data: dict[str, Any] = {}
        self.starts = array("q", [0])  # the offset of each line in the text, and of its end
        # line numbers of each table header, found once: a config with thousands of deployments
        # must not be rescanned for every key
        self.headers: dict[str, list[int]] = {}
        #: The lines [first, end) of each [[deployments]] table with its sub-tables.
        self.tables: list[tuple[int, int]] = []
        first = None
        for number, line in enumerate(text.split("\n")):
            self.starts.append(self.starts[-1] + len(line) + 1)
            if line.lstrip().startswith("[") and (match := self._HEADER.match(line)):
                name = match.group(1)
                self.headers.setdefault(name, []).append(number)
                if first is not None and not name.startswith("deployments."):
                    self.tables.append((first, number))
                    first = None
                if name == "deployments" and line.lstrip().startswith("[["):
                    first = number
        if first is not None:
            self.tables.append((first, len(self.starts) - 1))

    @classmethod
    def read(cls, path: Path, cut: bool = True) -> _Document:
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except PermissionError:
            raise ConfigError(f"{path}: permission denied reading the config file") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a directory, expected a TOML file") from None
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            raise ConfigError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        doc = cls(path, text)
        doc._parse(cut)
        # most files have none of the escapes, and need no walk through every value
        if any(escape in text for escape in _NUL_ESCAPES) and (key := nul_path(doc.data)) is not None:
            lines = enumerate(text.splitlines(), 1)
            line = next((n for n, ln in lines if any(escape in ln for escape in _NUL_ESCAPES)), 0)
            raise ConfigError(
                f"{path}{f':{line}' if line else ''}: {key}: a NUL character (\\u0000) cannot be stored "
                "in a database or passed to a run"
            )
        return doc

    def _parse(self, cut: bool) -> None:
        """Set ``data``: with ``cut``, the file without its [[deployments]] tables (blank lines in
        their place, so that line numbers stay) when that is what the file says, else the whole
        file.  Cutting a table out at its header line, up to the next header, keeps its meaning
        when no value spans lines but an array (no multi-line string), and the rest does not
        name ``deployments`` itself (``deployments = [...]``; a table header written so that it
        is not recognized, which leaves its keys to the rest).  A line inside an array that looks
        like a header (``[3]``) leaves an array open on one side, which does not parse: the file
        is then parsed whole, as it is when it has a NUL escape (``nul_path`` walks the whole)."""
        text = self.text
        if cut and self.tables and not any(mark in text for mark in ('"""', "'''", *_NUL_ESCAPES)):
            parts, line = [], 0
            for first, end in self.tables:
                parts += [text[self.starts[line] : self.starts[first]], "\n" * (end - first)]
                line = end
            parts.append(text[self.starts[line] :])
            with contextlib.suppress(tomllib.TOMLDecodeError):  # the whole file says where
                self.data = tomllib.loads("".join(parts))
                if "deployments" not in self.data:
                    return
        self.tables = []
        try:
            self.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            at = re.search(r"\(at line (\d+), column \d+\)", str(exc))
            raise ConfigError(f"{self.path}{':' + at.group(1) if at else ''}: invalid TOML: {exc}") from None

    def deployments(self) -> Iterator[dict[str, Any]]:
        """The [[deployments]] tables cut out by ``_parse``, parsed one at a time."""
        for first, end in self.tables:
            try:
                table = tomllib.loads(self.text[self.starts[first] : self.starts[end]])
            except tomllib.TOMLDecodeError:
                raise _Uncut from None  # the whole file says where the error is, if it is one
            if list(table) != ["deployments"] or len(table["deployments"]) != 1:
                raise _Uncut
            yield table["deployments"][0]

    def line(self, number: int) -> str:
        return self.text[self.starts[number] : self.starts[number + 1] - 1]

    def where(self, table: str, key: str | None, index: int = 0) -> str:
        """``file:line`` of ``key`` inside ``[table]`` (the index-th ``[[table]]``), best effort."""
        found = self.headers.get(table, [])
        # no header (dotted keys or inline tables): look for the key anywhere
        start = found[index] if index < len(found) else -1
        if key is not None:
            pattern = re.compile(rf"^\s*(?:{re.escape(table)}\.)?[\"']?{re.escape(key)}[\"']?\s*=")
            inline = re.compile(rf"[{{,]\s*[\"']?{re.escape(key)}[\"']?\s*=")
            for number in range(start + 1, len(self.starts) - 1):
                line = self.line(number)
                if re.match(r"^\s*\[", line):  # the next table, or the next [[table]]
                    break
                if pattern.match(line) or inline.search(line):
                    return f"{self.path}:{number + 1}"
        return f"{self.path}:{start + 1}" if start >= 0 else str(self.path)


def _unknown(key: str, known: list[str]) -> str:
    hint = did_you_mean(key, known) or f" (expected one of: {', '.join(known)})"
    return f"unknown key{hint}"


def _parse_fields(
    cls: type,
    raw: Mapping[str, Any],
    locate: Any,
    label: str,
    sources: dict[str, str],
    origin: Mapping[str, str],
    record_defaults: bool = True,
) -> dict[str, Any]:
    """Validate ``raw`` against the fields of ``cls``; ``locate(key)`` names where a key was written.
    Defaults are recorded in ``sources`` only for the sections, not for each of thousands of
    deployments."""
    fields = {fd.name: fd for fd in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{locate(key)}: {label}.{key}: {_unknown(key, list(fields))}")
    values: dict[str, Any] = {}
    for name, fd in fields.items():
        if name in raw:
            value = raw[name]
            sources[f"{label}.{name}"] = origin.get(name) or locate(name)
        else:
            value = fd.default_factory() if fd.default_factory is not dataclasses.MISSING else fd.default
            if record_defaults:
                sources.setdefault(f"{label}.{name}", "default")
        try:
            values[name] = fd.metadata["parser"](value)
        except ValueError as exc:
            raise ConfigError(f"{locate(name)}: {label}.{name}: {exc}") from None
    return values


_ENV_KEY = re.compile(rf"^ORCHD_({'|'.join(s.upper() for s in SECTIONS)})_([A-Z0-9_]+)$")
#: orchd's own variables that are not config keys (ORCHD_SCHEDULED_FOR looks like a misspelled
#: section): the CLI may run inside a run, which has the run's variables.
_NOT_KEYS = {
    "ORCHD_CONFIG",
    "ORCHD_DEBUG",
    "ORCHD_STATE_DIR",
    "ORCHD_RUN_ID",
    "ORCHD_DEPLOYMENT",
    "ORCHD_ATTEMPT",
    "ORCHD_SCHEDULED_FOR",
    "ORCHD_PARAMETERS",
    "ORCHD_RESULT_FILE",
    "ORCHD_UPSTREAM_RUN_ID",
    "ORCHD_UPSTREAM_RESULT",
    "ORCHD_TEST_DATABASE_URL",
}
_FIELDS = {(section, fd.name): fd for section, cls in SECTIONS.items() for fd in dataclasses.fields(cls)}


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, tuple[Any, str]]]:
    """ORCHD_<SECTION>_<KEY>=value; the value is read as a TOML literal when it is one (8, true),
    except for string keys (ORCHD_WORKER_NAME=42 is the name "42")."""
    found: dict[str, dict[str, tuple[Any, str]]] = {}
    for var, text in env.items():
        match = _ENV_KEY.match(var)
        if not match:
            _misspelled_section(var)
            continue
        section, key = match.group(1).lower(), match.group(2).lower()
        fd = _FIELDS.get((section, key))
        value = typed(fd, text) if fd is not None else text  # an unknown key: refused later
        found.setdefault(section, {})[key] = (value, f"environment {var}")
    return found


def _misspelled_section(var: str) -> None:
    """ORCHD_WORKERS_CONCURRENCY would be ignored without a word, while ORCHD_WORKER_CONCURENCY
    is refused: a section name close to a real one is refused too, with the right name."""
    section, sep, key = var.removeprefix("ORCHD_").partition("_")
    if not var.startswith("ORCHD_") or not sep or var in _NOT_KEYS:
        return
    # stricter than did_you_mean: ORCHD_FOO_BAR variables of other programs must pass
    meant = closest(section.lower(), SECTIONS, cutoff=0.75)
    if meant:
        raise ConfigError(
            f"environment {var}: unknown section {section.lower()!r} "
            f"(did you mean ORCHD_{meant.upper()}_{key}?)"
        )


def _build(path: Path | None, documents: list[_Document], env: Mapping[str, str]) -> Config:
    sources: dict[str, str] = {}
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    locators: dict[str, Any] = {}
    pools: list[PoolConfig] = []
    deployments: list[DeploymentConfig] = []
    notifications: list[NotificationConfig] = []
    first_defined: dict[tuple[str, str], str] = {}  # (pools|deployments, name) -> file:line
    placed: dict[str, Any] = {}  # deployment name -> its locate(key)

    def add(doc: _Document, top: str, index: int, item: dict[str, Any]) -> None:
        if top == "pools":
            pools.append(_pool(doc, index, item, sources))
        elif top == "notifications":
            notifications.append(_notification(doc, index, item, sources))
        else:
            deployments.append(_deployment(doc, index, item, sources))
            placed[deployments[-1].name] = _locator(doc, "deployments", index)
        where, name = doc.where(top, "name", index), item["name"]
        if (top, name) in first_defined:
            raise ConfigError(
                f"{where}: {top}: {name!r} is defined twice (first at {first_defined[top, name]})"
            )
        first_defined[top, name] = where

    for doc in documents:
        for top, body in doc.data.items():
            if top in SECTIONS:
                if not isinstance(body, dict):
                    raise ConfigError(f"{doc.where(top, None)}: {top}: expected a [{top}] table")
                merged[top].update(body)
                for key in body:
                    locators[f"{top}.{key}"] = doc
            elif top in ARRAYS:
                if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
                    raise ConfigError(f"{doc.where(top, None)}: {top}: expected [[{top}]] tables")
                for index, item in enumerate(body):
                    add(doc, top, index, item)
            else:
                known = [*SECTIONS, *ARRAYS]
                raise ConfigError(f"{doc.where(top, None)}: {top}: {_unknown(top, known)}")
        for index, item in enumerate(doc.deployments()):
            add(doc, "deployments", index, item)

    deployments = _with_pool_defaults(deployments, pools, placed)
    _check_triggers(deployments, placed)
    overrides = _env_overrides(env)
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        env_values = overrides.get(name, {})
        raw = {**merged[name], **{k: v for k, (v, _) in env_values.items()}}
        origin = {k: src for k, (_, src) in env_values.items()}

        def locate(key: str, name: str = name, origin: Mapping[str, str] = origin) -> str:
            if key in origin:
                return origin[key]
            doc = locators.get(f"{name}.{key}")
            return doc.where(name, key) if doc else (str(path) if path else "config")

        sections[name] = cls(**_parse_fields(cls, raw, locate, name, sources, origin))

    _check_timing(sections, locators, path)
    state_dir = _state_dir(env)
    database = sections["database"]
    url = _resolve_url(database.url, database.url_file, state_dir, env, sources)
    written_in = locators.get("database.url") if "url" not in overrides.get("database", {}) else None
    if written_in is not None and database.url:
        url = _beside(url, written_in.path.parent)
    sections["database"] = dataclasses.replace(database, url=url)
    _check_pooler(sections["database"], sources)
    return Config(
        path=path,
        state_dir=state_dir,
        pools=tuple(pools),
        deployments=tuple(deployments),
        notifications=tuple(notifications),
        sources=sources,
        **sections,
    )


_SQLITE_PATH = re.compile(r"^(sqlite(?:\+\w+)?:///)([^?]*)(.*)$")


def _beside(url: str, directory: Path) -> str:
    """A relative SQLite path written in a config file is relative to that file, not to wherever
    the command happens to run: `sqlite:///.state/orchd.db` in /srv/x/orchd.toml is
    /srv/x/.state/orchd.db."""
    match = _SQLITE_PATH.match(url)
    if not match or not match.group(2) or match.group(2) == ":memory:":
        return url
    file = Path(match.group(2)).expanduser()
    if file.is_absolute():
        return url
    return f"{match.group(1)}{os.path.normpath(directory.absolute() / file)}{match.group(3)}"


def _check_timing(sections: Mapping[str, Any], locators: Mapping[str, Any], path: Path | None) -> None:
    """Settings that are each in range but break runs together.  A lease shorter than two heartbeats
    expires between two of them, so healthy runs are CRASHED (and a retry may start next to the
    still-running original); a worker shown offline between two heartbeats looks dead."""
    worker, scheduler = sections["worker"], sections["scheduler"]
    rules = [
        (
            "worker.lease_timeout",
            worker.lease_timeout >= 2 * worker.heartbeat,
            f"must be at least twice worker.heartbeat ({format_duration(worker.heartbeat)}), "
            "or healthy runs are reaped as CRASHED between two heartbeats",
        ),
        (
            "worker.fence_margin",
            worker.effective_fence_margin < worker.lease_timeout - worker.heartbeat,
            f"must be shorter than worker.lease_timeout less one worker.heartbeat "
            f"({format_duration(worker.lease_timeout - worker.heartbeat)}), "
            "or healthy runs are stopped between two heartbeats",
        ),
        (
            "scheduler.worker_timeout",
            scheduler.worker_timeout >= 2 * worker.heartbeat,
            f"must be at least twice worker.heartbeat ({format_duration(worker.heartbeat)}), "
            "or live workers are shown offline between two heartbeats",
        ),
    ]
    for key, ok, problem in rules:
        if not ok:
            section, _, name = key.partition(".")
            doc = locators.get(key) or locators.get("worker.heartbeat")
            where = doc.where(section, name) if doc else (str(path) if path else "config")
            raise ConfigError(f"{where}: {key}: {problem}")


def _check_pooler(database: Any, sources: Mapping[str, str]) -> None:
    """A pooler and a direct URL are PostgreSQL's: with a SQLite database they are a mistake."""
    if database.url.startswith("sqlite"):
        for key, used in (("pooler", database.pooler != "none"), ("direct_url", bool(database.direct_url))):
            if used:
                where = sources.get(f"database.{key}", "config")
                raise ConfigError(f"{where}: database.{key}: only for PostgreSQL, but database.url is SQLite")


def _named(doc: _Document, table: str, index: int, item: Mapping[str, Any]) -> str:
    name = item.get("name")
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        got = "nothing" if name is None else repr(name)
        raise ConfigError(
            f"{doc.where(table, 'name', index)}: {table}[{index}].name: "
            f"expected a name of letters, digits, '.', '_', '-', got {got}"
        )
    return name


def _locator(doc: _Document, table: str, index: int) -> Any:
    return lambda key: doc.where(table, key, index)


def _container(raw: Mapping[str, Any], locate: Any, label: str, sources: dict[str, str]) -> dict[str, Any]:
    """The validated keys of a ``container = {...}`` table: only those given, so a deployment's
    keys can override its pool's one by one (the rest default when the run starts)."""
    values = _parse_fields(ContainerConfig, raw, locate, f"{label}.container", sources, {}, False)
    return {key: values[key] for key in raw}


def _pool(doc: _Document, index: int, item: Mapping[str, Any], sources: dict[str, str]) -> PoolConfig:
    name = _named(doc, "pools", index, item)
    locate = _locator(doc, "pools", index)
    values = _parse_fields(PoolConfig, item, locate, f"pools.{name}", sources, {}, False)
    values["container"] = _container(values["container"], locate, f"pools.{name}", sources)
    return PoolConfig(**values)


def _deployment(
    doc: _Document, index: int, item: Mapping[str, Any], sources: dict[str, str]
) -> DeploymentConfig:
    name = _named(doc, "deployments", index, item)
    label = f"deployments.{name}"

    def locate(key: str) -> str:
        return doc.where("deployments", key, index)

    if "command" in item and "entrypoint" in item:
        raise ConfigError(
            f"{locate('entrypoint')}: {label}.entrypoint: give either command or entrypoint, not both"
        )
    values = _parse_fields(DeploymentConfig, item, locate, label, sources, {}, False)
    values["container"] = _container(values["container"], locate, label, sources)
    if "command" in item and not (values["command"] and values["command"][0]):
        raise ConfigError(
            f"{locate('command')}: {label}.command: expected a non-empty argv list, starting with the program"
        )
    if values["entrypoint"] and not re.fullmatch(ENTRYPOINT_PATTERN, values["entrypoint"]):
        raise ConfigError(
            f'{locate("entrypoint")}: {label}.entrypoint: expected "package.module:function", '
            f"got {values['entrypoint']!r}"
        )
    if values["python"] and not values["entrypoint"]:
        raise ConfigError(f"{locate('python')}: {label}.python: only used with entrypoint")
    if not re.fullmatch(NAME_PATTERN, values["pool"]):
        raise ConfigError(f"{locate('pool')}: {label}.pool: expected a pool name, got {values['pool']!r}")
    raw_schedules = item.get("schedules", [])
    if not isinstance(raw_schedules, list) or not all(isinstance(s, dict) for s in raw_schedules):
        raise ConfigError(f"{locate('schedules')}: {label}.schedules: expected a list of tables")
    specs = []
    for position, raw in enumerate(raw_schedules):
        try:
            specs.append(parse_schedule(raw))
        except ValueError as exc:  # "key: problem", or a problem of the whole entry
            sep = "." if re.match(r"\w+: ", str(exc)) else ": "
            raise ConfigError(f"{locate('schedules')}: {label}.schedules[{position}]{sep}{exc}") from None
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{locate('schedules')}: {label}.schedules: the same schedule is listed twice")
    values["schedules"] = specs
    return DeploymentConfig(**values)


def _notification(
    doc: _Document, index: int, item: Mapping[str, Any], sources: dict[str, str]
) -> NotificationConfig:
    """A ``[[notifications]]`` rule: its keys, at least one channel, and Apprise URLs that Apprise
    knows (a typo in a scheme would otherwise only show when the first failure is not told)."""
    name = _named(doc, "notifications", index, item)
    label = f"notifications.{name}"
    locate = _locator(doc, "notifications", index)
    values = _parse_fields(NotificationConfig, item, locate, label, sources, {}, False)
    if not (values["urls"] or values["url_file"] or values["webhook"] or values["command"]):
        raise ConfigError(f"{locate('name')}: {label}: give a channel: urls, url_file, webhook or command")
    if "command" in item and not (values["command"] and values["command"][0]):
        raise ConfigError(f"{locate('command')}: {label}.command: expected a non-empty argv list")
    for key in ("secret", "secret_file"):
        if values[key] and not values["webhook"]:
            raise ConfigError(f"{locate(key)}: {label}.{key}: only used with webhook")
    if values["secret"] and values["secret_file"]:
        raise ConfigError(f"{locate('secret_file')}: {label}.secret_file: give either secret or secret_file")
    for url in values["urls"]:
        if not apprise_knows(url):
            raise ConfigError(
                f"{locate('urls')}: {label}.urls: Apprise does not know the URL {mask_url(url)!r}"
            )
    return NotificationConfig(**values)


def apprise_knows(url: str) -> bool:
    """Whether Apprise can send to ``url`` (a known scheme, the parts it needs).  Apprise is
    imported only for a config that has URLs: its hundred plugins take half a second."""
    import logging

    import apprise

    quiet = logging.getLogger("apprise")
    level, quiet.level = quiet.level, logging.CRITICAL + 1  # it warns on stderr about a bad URL
    try:
        return apprise.Apprise.instantiate(url, suppress_exceptions=True) is not None
    finally:
        quiet.level = level


def mask_url(url: str) -> str:
    """A URL fit for an error line or a log: no password, no token in the path or the query."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"
    host = rest.split("/", 1)[0].rpartition("@")[2]
    return f"{scheme}://{host}/***" if "/" in rest or "?" in rest or "@" in rest else f"{scheme}://{host}"


def _with_pool_defaults(
    deployments: list[DeploymentConfig], pools: list[PoolConfig], placed: Mapping[str, Any]
) -> list[DeploymentConfig]:
    """Give each deployment its pool's ``image`` and ``container`` defaults (its own keys win), then
    check what depends on them: without an image a deployment needs a command or an entrypoint."""
    by_name = {p.name: p for p in pools}
    resolved = []
    for dep in deployments:
        locate, label = placed[dep.name], f"deployments.{dep.name}"
        pool = by_name.get(dep.pool)
        image = dep.image or (pool.image if pool else "")
        if not image:
            if not dep.command and not dep.entrypoint:
                raise ConfigError(
                    f'{locate("name")}: {label}.command: required (an argv list such as ["/bin/true"]), '
                    'or entrypoint = "package.module:function", or an image'
                )
            if dep.container:
                raise ConfigError(
                    f"{locate('container')}: {label}.container: only used with an image "
                    f"(set image here or in [[pools]] {dep.pool!r})"
                )
            resolved.append(dep)
            continue
        if dep.working_dir and not dep.working_dir.startswith("/"):
            raise ConfigError(
                f"{locate('working_dir')}: {label}.working_dir: expected an absolute path inside the "
                f"container, got {dep.working_dir!r}"
            )
        container = {**(pool.container if pool else {}), **dep.container}
        resolved.append(dataclasses.replace(dep, image=image, container=container))
    return resolved


def _check_triggers(deployments: list[DeploymentConfig], placed: Mapping[str, Any]) -> None:
    """Every trigger names a deployment of the config, and no chain leads back to where it started
    (``a`` after ``b`` after ``a`` would run forever).  The error points at the ``triggers`` of the
    deployment where the cycle was found, and spells the cycle out."""
    upstreams = {d.name: [t.after for t in d.triggers] for d in deployments}
    for dep in deployments:
        for trigger in dep.triggers:
            if trigger.after not in upstreams:
                hint = did_you_mean(trigger.after, list(upstreams)) or ""
                raise ConfigError(
                    f"{placed[dep.name]('triggers')}: deployments.{dep.name}.triggers: "
                    f"after {trigger.after!r}: no such deployment{hint}"
                )
    done: set[str] = set()
    for start in upstreams:
        path: list[str] = []  # depth first along "after", iteratively: chains may be long
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            name, index = stack.pop()
            if index == 0:
                if name in path:
                    cycle = " after ".join([*path[path.index(name) :], name])
                    raise ConfigError(
                        f"{placed[name]('triggers')}: deployments.{name}.triggers: "
                        f"a cycle: {cycle} (a chain must end)"
                    )
                if name in done:
                    continue
                path.append(name)
            if index < len(upstreams[name]):
                stack += [(name, index + 1), (upstreams[name][index], 0)]
            else:
                path.pop()
                done.add(name)


def _state_dir(env: Mapping[str, str]) -> Path:
    """/var/lib/orchd when this process may write there (root, or the orchd user), else XDG data."""
    if env.get("ORCHD_STATE_DIR"):
        return Path(env["ORCHD_STATE_DIR"])
    if env.get("STATE_DIRECTORY"):  # systemd StateDirectory=, sorted: a drop-in may add one before ours
        entries = [Path(entry) for entry in env["STATE_DIRECTORY"].split(":")]
        return next((entry for entry in entries if entry.name == "orchd"), entries[0])
    if os.access(SYSTEM_STATE_DIR, os.W_OK) or (
        not SYSTEM_STATE_DIR.exists() and os.access(SYSTEM_STATE_DIR.parent, os.W_OK)
    ):
        return SYSTEM_STATE_DIR
    xdg = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local" / "share")
    return Path(xdg) / "orchd"


def _resolve_url(
    url: str,
    url_file: str,
    state_dir: Path,
    env: Mapping[str, str],
    sources: dict[str, str],
) -> str:
    """The effective database URL: url, else url_file, else a systemd credential, else SQLite."""
    if url:
        return url
    candidates = []
    if url_file:
        candidates.append((Path(url_file), sources.get("database.url_file", "database.url_file")))
    elif env.get("CREDENTIALS_DIRECTORY"):
        cred = Path(env["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        if cred.exists():
            candidates.append((cred, f"credential {CREDENTIAL_NAME}"))
    for file, origin in candidates:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{origin}: database.url_file: cannot read {file}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{origin}: database.url_file: {file} is empty")
        sources["database.url"] = f"file {file}"
        return value
    sources["database.url"] = "default"
    return f"sqlite:///{state_dir / 'orchd.db'}"
