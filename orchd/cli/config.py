"""``orchd config ...``: check, show, change and create the configuration file."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import tempfile
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import tomli_w

from orchd.cli.common import (
    common_options,
    load,
)
from orchd.cli.oneline import usage_error, warn
from orchd.cli.output import plural, print_json
from orchd.config import Config, default_config_path, fields, load_config
from orchd.config.model import ARRAYS, SECTIONS
from orchd.config.template import render
from orchd.db.engine import mask
from orchd.errors import ConfigError, OrchdError, did_you_mean
from orchd.schedules import never_fires


@click.group("config")
def config_group() -> None:
    """Check, show, change and create the configuration.

    \b
    Example:
      orchd config validate --config /etc/orchd/orchd.toml
      orchd config set worker.concurrency 8
    """


@config_group.command("validate")
@common_options
def config_validate(config_path: Path | None, as_json: bool) -> None:
    """Check the config file and its deployments.d drop-ins; exit 78 on the first error.

    A schedule that is valid but can never fire again (an `at` in the past, `0 0 30 2 *`) is
    a warning on stderr; the exit status stays 0.

    \b
    Example:
      orchd config validate --config /etc/orchd/orchd.toml && systemctl reload orchd-scheduler
    """
    config = load(config_path)
    warnings = idle_schedules(config, datetime.now(UTC))
    if as_json:
        path = str(config.path) if config.path else None
        sizes = {"deployments": len(config.deployments), "pools": len(config.pools)}
        print_json({"path": path, **sizes, "warnings": warnings})
        return
    for warning in warnings:
        warn(warning)
    where = config.path or "(no file: defaults)"
    counts = f"{plural(len(config.deployments), 'deployment')}, {plural(len(config.pools), 'pool')}"
    click.echo(f"{where}: ok ({counts})")


def idle_schedules(config: Config, now: datetime) -> list[str]:
    """A line for each active schedule that validates but will never fire."""
    found = []
    for dep in config.deployments:
        for index, spec in enumerate(dep.schedules):
            if (why := never_fires(spec, now)) is not None:
                where = config.sources.get(f"deployments.{dep.name}.schedules", str(config.path))
                found.append(f"{where}: deployments.{dep.name}.schedules[{index}]: {spec.describe()} {why}")
    return found


@config_group.command("show")
@click.option("--sources", is_flag=True, help="Say where each value came from.")
@common_options
def config_show(config_path: Path | None, as_json: bool, sources: bool) -> None:
    """Print the effective configuration (secrets masked).

    \b
    Example:
      orchd config show --sources
    """
    config = load(config_path)
    sections: dict[str, Any] = {}
    for name in SECTIONS:
        values = dataclasses.asdict(getattr(config, name))
        if name == "database":
            values["url"] = mask(values["url"])
            values["direct_url"] = values["direct_url"] and mask(values["direct_url"])
        sections[name] = values
    if as_json:
        print_json(
            {
                **sections,
                "deployments": [d.name for d in config.deployments],
                "pools": [p.name for p in config.pools],
            }
        )
        return
    for name, values in sections.items():
        click.echo(f"[{name}]")
        for fd in dataclasses.fields(SECTIONS[name]):
            line = tomli_w.dumps({fd.name: fields.as_written(fd, values[fd.name])}).rstrip()
            origin = f"  # {config.sources.get(f'{name}.{fd.name}', 'default')}" if sources else ""
            click.echo(f"{line}{origin}")
        click.echo()
    click.echo(
        f"# {len(config.deployments)} deployments: {', '.join(d.name for d in config.deployments) or '-'}"
    )


def _field(key: str) -> dataclasses.Field[Any]:
    section, _, name = key.partition(".")
    if section in ARRAYS:
        usage_error(f"{key}: [[{section}]] entries are edited in the file itself")
    if section not in SECTIONS or not name:
        usage_error(
            f"{key}: unknown key{did_you_mean(section, list(SECTIONS))} "
            f"(keys are SECTION.KEY, e.g. worker.concurrency; sections: {', '.join(SECTIONS)})"
        )
    found = {fd.name: fd for fd in dataclasses.fields(SECTIONS[section])}
    if name not in found:
        known = [f"{section}.{k}" for k in found]
        usage_error(
            f"{key}: unknown key{did_you_mean(key, known) or ' (expected one of: ' + ', '.join(known) + ')'}"
        )
    return found[name]


def _value(key: str, field: dataclasses.Field[Any], text: str) -> Any:
    """The value as it will be written: a TOML literal when it is one (8, true, ["a"]) except for
    text keys, else the text; validated by the key's own parser."""
    value = fields.typed(field, text)
    try:
        parsed = field.metadata["parser"](value)
    except ValueError as exc:  # what the file would say with this value: a config error
        raise ConfigError(f"{key}: {exc}") from None
    return parsed if isinstance(parsed, list) else value


def edit(text: str, section: str, key: str, value: Any) -> tuple[str, bool]:
    """``text`` with ``section.key`` set to ``value``; True when comments and layout were kept.

    The line of the key (or a new line under its table, or a new table) is changed in place; the
    result must parse to exactly the old document plus the change, else the whole document is
    re-written by tomli-w, which keeps the values but not the comments.
    """
    expected = tomllib.loads(text)
    expected.setdefault(section, {})[key] = value
    line = tomli_w.dumps({key: value}).strip() + "\n"
    lines = text.splitlines(keepends=True)
    header = re.compile(rf"^\s*\[\s*{re.escape(section)}\s*\]\s*(#.*)?$")
    start = next((i for i, ln in enumerate(lines) if header.match(ln)), None)
    if start is None:
        edited = text + ("" if not text or text.endswith("\n") else "\n") + f"\n[{section}]\n{line}"
    else:
        end = next((i for i in range(start + 1, len(lines)) if re.match(r"^\s*\[", lines[i])), len(lines))
        own = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        at = next((i for i in range(start + 1, end) if own.match(lines[i])), None)
        if at is None:
            lines.insert(start + 1, line)
        else:
            lines[at : _value_end(lines, at, end)] = [line]
        edited = "".join(lines)
    try:
        if tomllib.loads(edited) == expected:
            return edited, True
    except tomllib.TOMLDecodeError:
        pass
    return tomli_w.dumps(expected), False


def _value_end(lines: list[str], at: int, end: int) -> int:
    """The line after the value that starts on line ``at`` (a multi-line array or string ends later)."""
    for stop in range(at + 1, end + 1):
        with contextlib.suppress(tomllib.TOMLDecodeError):
            tomllib.loads("".join(lines[at:stop]))
            return stop
    return at + 1


def _validate(path: Path, text: str) -> None:
    """Load ``text`` as if it were ``path`` (with the drop-ins beside it) without touching ``path``."""
    with tempfile.TemporaryDirectory(prefix="orchd-config-") as tmp:
        candidate = Path(tmp) / path.name
        candidate.write_text(text)
        drop_in = path.parent / "deployments.d"
        if drop_in.is_dir():
            (Path(tmp) / "deployments.d").symlink_to(drop_in.resolve())
        try:
            load_config(candidate)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(str(candidate), str(path))) from None


@config_group.command("set", context_settings={"ignore_unknown_options": True})  # VALUE may be -1
@click.argument("key")
@click.argument("value")
@common_options
def config_set(key: str, value: str, config_path: Path | None, as_json: bool) -> None:
    """Set KEY (SECTION.KEY) to VALUE in the config file, keeping its comments.

    VALUE is read as TOML when it is a TOML value (8, true, ["a", "b"]), else as text.  The file
    is written only when the result validates: an unknown key is a usage error (exit 2), a value
    the key does not take leaves the file as it was and exits 78, as the file would.

    \b
    Example:
      orchd config set worker.concurrency 8
      orchd config set scheduler.misfire_grace 30m
      orchd config set metrics.listen 127.0.0.1:9464
    """
    field = _field(key)
    section, name = key.split(".", 1)
    new_value = _value(key, field, value)
    path = config_path or default_config_path(os.environ)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found (create it with `orchd config init`)")
    load(path)  # the file as it is must be valid: refuse to build on a broken one
    text = path.read_text(encoding="utf-8")
    edited, kept = edit(text, section, name, new_value)
    _validate(path, edited)
    try:
        path.write_text(edited, encoding="utf-8")  # in place: owner, mode and links stay as they are
    except PermissionError:
        raise ConfigError(f"{path}: permission denied writing the config file") from None
    secret = key in ("database.url", "database.direct_url") and new_value
    shown = mask(str(new_value)) if secret else new_value
    if as_json:
        print_json({"path": str(path), "key": key, "value": shown})
    else:
        click.echo(f"{path}: {key} = {json.dumps(shown)}")
    if not kept:
        click.echo("note: the file was re-written by tomli-w: its comments could not be kept", err=True)
    env = f"ORCHD_{section}_{name}".upper()
    if env in os.environ:
        click.echo(f"note: {env} in the environment overrides this value", err=True)


@config_group.command("init")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@common_options
def config_init(path: Path | None, force: bool, config_path: Path | None, as_json: bool) -> None:
    """Write the documented default config file (every key, commented, with its default).

    PATH defaults to --config, $ORCHD_CONFIG, or /etc/orchd/orchd.toml.

    \b
    Example:
      orchd config init /etc/orchd/orchd.toml
      orchd config init ./orchd.toml --force
    """
    target = path or config_path or default_config_path(os.environ)
    if target.exists() and not force:
        raise OrchdError(f"{target} exists: --force overwrites it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(), encoding="utf-8")
    except PermissionError:
        raise ConfigError(f"{target}: permission denied writing the config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{target}: is a directory, expected a TOML file") from None
    if as_json:
        print_json({"path": str(target)})
    else:
        click.echo(f"{target}: written (nothing is deployed yet); check it with `orchd config validate`")
