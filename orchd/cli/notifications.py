"""`orchd notification ls|test|log`: the rules of the config, a sample message sent now, and the
outbox's deliveries with their attempts."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from orchd.channels import ChannelError
from orchd.cli.common import common_options, load, open_store
from orchd.cli.oneline import fail
from orchd.cli.output import iso, print_json, print_table, relative
from orchd.config.load import mask_url
from orchd.config.model import NotificationConfig
from orchd.durations import format_duration
from orchd.errors import NotFound, did_you_mean
from orchd.models import Delivery, DeliveryRecord
from orchd.notifications import Rule
from orchd.scheduler.notifications import rules_of, send


@click.group("notification")
def notification_group() -> None:
    """Notification rules ([[notifications]]) and what they sent.

    \b
    Example:
      orchd notification log --failed
    """


def _channels(rule: Rule) -> list[str]:
    """A rule's channels as shown: webhook and command by name, Apprise URLs without secrets."""
    return [
        mask_url(target) if channel.startswith("apprise-") else channel
        for channel, target in rule.channels.items()
    ]


def rule_json(cfg: NotificationConfig, rule: Rule) -> dict[str, Any]:
    return {
        "name": cfg.name,
        "on": list(cfg.on),
        "deployments": list(cfg.deployments),
        "tags": list(cfg.tags),
        "final_only": cfg.final_only,
        "throttle": cfg.throttle,
        "late_after": cfg.late_after,
        "channels": _channels(rule),
        "timeout": cfg.timeout,
        "attempts": cfg.attempts,
    }


@notification_group.command("ls")
@common_options
def notification_ls(config_path: Path | None, as_json: bool) -> None:
    """List the notification rules of the config and their channels (secrets masked).

    \b
    Example:
      orchd notification ls --json | jq '.[].name'
    """
    config = load(config_path)
    rules = [(cfg, rules_of(cfg, os.environ)) for cfg in config.notifications]
    if as_json:
        print_json([rule_json(cfg, rule) for cfg, rule in rules])
        return
    print_table(
        ["NAME", "ON", "DEPLOYMENTS", "THROTTLE", "CHANNELS"],
        [
            [
                cfg.name,
                ",".join(cfg.on),
                ",".join([*cfg.deployments, *(f"tag:{t}" for t in cfg.tags)]) or "all",
                format_duration(cfg.throttle) if cfg.throttle else "-",
                " ".join(_channels(rule)),
            ]
            for cfg, rule in rules
        ],
    )


@notification_group.command("test")
@click.argument("name")
@common_options
def notification_test(config_path: Path | None, as_json: bool, name: str) -> None:
    """Send a sample event (TEST, with the latest failed run's facts) through every channel of
    rule NAME now, and print each outcome; exit 1 if one failed.  Kept in the log.

    \b
    Example:
      orchd notification test ops-failures
    """
    config = load(config_path)
    cfg = next((n for n in config.notifications if n.name == name), None)
    if cfg is None:
        known = [n.name for n in config.notifications]
        raise NotFound(
            f"no notification rule {name!r}{did_you_mean(name, known)} (see `orchd notification ls`)"
        )
    rule = rules_of(cfg, os.environ)
    store = open_store(config)
    payload = store.sample_event(name, datetime.now(UTC), config.web.public_url)
    outcomes = []
    for channel in rule.channels:
        started = datetime.now(UTC)
        delivery = Delivery(0, name, channel, payload["event_key"], "TEST", 1, 1, payload, 0, False)
        try:
            send(rule, delivery, os.environ)
            error = None
        except ChannelError as exc:
            error = str(exc)
        store.record_test(name, channel, payload, error is None, error, started, datetime.now(UTC))
        shown = mask_url(rule.channels[channel]) if channel.startswith("apprise-") else channel
        outcomes.append({"channel": shown, "ok": error is None, "error": error})
    if as_json:
        print_json(outcomes)
    else:
        for o in outcomes:
            click.echo(f"{o['channel']}: " + ("sent" if o["ok"] else f"failed: {o['error']}"))
    if not all(o["ok"] for o in outcomes):
        fail(f"rule {name!r}: {sum(not o['ok'] for o in outcomes)} of {len(outcomes)} channels failed", 1)


def delivery_json(d: DeliveryRecord) -> dict[str, Any]:
    return {
        "id": d.id,
        "rule": d.rule,
        "channel": d.channel,
        "event": d.event,
        "event_key": d.event_key,
        "run_id": d.run_id,
        "deployment": d.deployment,
        "state": d.state,
        "attempts": d.attempts,
        "max_attempts": d.max_attempts,
        "next_attempt_at": iso(d.next_attempt_at) if d.state == "pending" else None,
        "last_error": d.last_error,
        "created_at": iso(d.created_at),
        "delivered_at": iso(d.delivered_at),
        "history": [
            {
                "attempt": a.attempt,
                "started_at": iso(a.started_at),
                "finished_at": iso(a.finished_at),
                "ok": a.ok,
                "error": a.error,
            }
            for a in d.history
        ],
    }


@notification_group.command("log")
@click.option("--failed", is_flag=True, help="Only messages that gave up or whose last attempt failed.")
@click.option("--rule", "rule", default=None, help="Only this rule's messages.")
@click.option("--run", "run_id", type=int, default=None, help="Only messages about this run.")
@click.option("-n", "--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@common_options
def notification_log(
    config_path: Path | None,
    as_json: bool,
    failed: bool,
    rule: str | None,
    run_id: int | None,
    limit: int,
) -> None:
    """The latest messages, newest first: rule, channel, event, state, attempts, last error.

    \b
    Example:
      orchd notification log --failed --json | jq '.[] | {rule, channel, last_error}'
    """
    config = load(config_path)
    rows = open_store(config).deliveries(failed=failed, run_id=run_id, rule=rule, limit=limit)
    if as_json:
        print_json([delivery_json(d) for d in rows])
        return
    now = datetime.now(UTC)
    print_table(
        ["ID", "CREATED", "RULE", "CHANNEL", "EVENT", "RUN", "STATE", "ATTEMPTS", "LAST ERROR"],
        [
            [
                d.id,
                relative(d.created_at, now),
                d.rule,
                d.channel,
                d.event,
                d.run_id,
                d.state,
                f"{d.attempts}/{d.max_attempts}",
                (d.last_error or "")[:80] or None,
            ]
            for d in rows
        ],
    )
