"""The data layer's failure boundary: callers get orchd's errors, with one reason, never a driver's."""

from __future__ import annotations

import pytest

from orchd.backoff import Backoff
from orchd.db.errors import reason
from orchd.errors import DatabaseError, DatabaseUnavailable
from tests.helpers import store_for


def test_an_unreachable_database_is_unavailable() -> None:
    with pytest.raises(DatabaseUnavailable) as caught:
        store_for("postgresql://orchd@127.0.0.1:1/gone").list_runs()
    assert caught.value.reason.startswith("connection failed:")  # the cause, not psql's hint
    assert "\n" not in str(caught.value)


def test_a_statement_the_database_refuses_names_the_likely_cause(empty_url: str) -> None:
    """No schema: SQLite says so as an OperationalError (waited out by a daemon), PostgreSQL as a
    ProgrammingError; both read as orchd's error with the same hint."""
    with pytest.raises(DatabaseError, match=r"is the schema current\? `orchd db status`") as caught:
        store_for(empty_url).get_run(1)
    assert "runs" in caught.value.reason


class _Driver(Exception):
    pass


def test_the_reason_is_the_first_line_of_the_driver() -> None:
    class Wrapped(Exception):
        orig = _Driver('relation "runs" does not exist\nLINE 1: SELECT * FROM runs\n              ^')

    assert reason(Wrapped()) == 'relation "runs" does not exist'
    assert reason(_Driver("")) == "_Driver"


def test_backoff_doubles_to_its_cap_and_starts_over() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.succeeded() and not backoff.succeeded()
    assert backoff.failed() == 0.5
