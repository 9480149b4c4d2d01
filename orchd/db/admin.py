"""``Admin``: kept for code written before the data layer was split by aggregate, when the
operator's queries lived apart from the daemons' (``Admin(store).pools(...)``).  Every method is
now on ``Store``; new code calls the store, and this module goes once no branch uses it."""

from __future__ import annotations

from orchd.db.migrate import wipe
from orchd.db.store import Store
from orchd.errors import NotFound
from orchd.states import LIVE

__all__ = ["LIVE", "Admin", "NotFound", "wipe"]


class Admin(Store):
    def __init__(self, store: Store) -> None:
        super().__init__(store.engine, store.actor)
