"""The data layer's facade: the one object the daemons, the CLI and the web hold.

Every query orchd runs lives under ``orchd.db``, one SQL for both databases, split by what it
works on; ``Store`` puts the parts together so a caller holds one object:

==============================  =============================================================
``orchd.db.queue.Queue``        the workers' side: claim, start, finish, leases, output, wake-ups
``orchd.db.scheduling``         the scheduler's side: due schedules, materialize, upkeep, prune
``orchd.db.deployments``        the config applied (sync), pausing deployments, pools
``orchd.db.actions``            a person's actions on runs: create, cancel, retry, backfill
``orchd.db.reports``            read models for the CLI, the web and metrics, each one snapshot
``orchd.db.activity``           what happened lately: the dashboard's overview
``orchd.db.notifications``      the notification outbox: events matched to rules, deliveries
``orchd.db.locks``              leader locks; ``orchd.db.listen``: LISTEN wake-ups
``orchd.db.transitions``        the only code that inserts runs or changes their state
==============================  =============================================================

Each module's docstring states its contract: what it guarantees under races and restarts.
Callers get read models (``orchd.models``), never rows; each public method is one short
transaction (SQLite: one ``BEGIN IMMEDIATE``; PostgreSQL: short enough not to hold back vacuum).
"""

from __future__ import annotations

from orchd.db.actions import RunActions
from orchd.db.activity import Activity
from orchd.db.deployments import Deployments
from orchd.db.notifications import Notifications
from orchd.db.queue import Queue
from orchd.db.scheduling import Scheduling


class Store(Queue, Scheduling, Deployments, RunActions, Activity, Notifications):
    """All of the data layer over one engine, acting as ``actor`` (recorded in the run history)."""
