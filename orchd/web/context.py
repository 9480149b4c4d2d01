"""What every handler needs, kept on the application: ``web_of(request)``."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from jinja2 import Environment
from starlette.requests import Request

from orchd.config import Config
from orchd.db.store import Store
from orchd.web.auth import Auth
from orchd.web.live import Feed


@dataclass
class Web:
    config: Config
    #: the data layer, acting as the daemon (``actions.acting_store`` acts as the person)
    store: Store
    auth: Auth
    feed: Feed
    #: the URL prefix, "/" or "/orchd/"
    base: str
    templates: Environment


def web_of(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


def one_snapshot(request: Request | None) -> AbstractContextManager[None]:
    """What a GET shows, read as one snapshot of the database (``Store.snapshot``); a request that
    acts is left alone (each action is its own transaction)."""
    if request is None or request.method != "GET":
        return nullcontext()
    return web_of(request).store.snapshot()
