"""The architecture (README, "Architecture") holds: a module imports only from its own layer and the
layers below, SQLAlchemy and the database driver are imported under orchd/db/ alone, and the
daemons report through an injected observer instead of importing the metrics.

Imports are read from the source (every ``import``, also those inside functions), so a layer
reaching upward fails here before it becomes a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "orchd"

#: Lowest first.  A module may import its own layer and those before it.
LAYERS: dict[str, tuple[str, ...]] = {
    "core": (
        "orchd.backoff",
        "orchd.config",
        "orchd.durations",
        "orchd.errors",
        "orchd.limits",
        "orchd.logging",
        "orchd.models",
        "orchd.notifications",
        "orchd.observer",
        "orchd.policy",
        "orchd.printable",
        "orchd.retries",
        "orchd.schedules",
        "orchd.states",
    ),
    "data": ("orchd.db",),
    "ops": ("orchd.channels", "orchd.metrics", "orchd.notify"),
    "daemons": ("orchd.runtime", "orchd.scheduler", "orchd.worker"),
    "face": ("orchd.cli", "orchd.web"),
}
ORDER = list(LAYERS)
DRIVERS = ("sqlalchemy", "psycopg", "alembic", "sqlite3")


def module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    for layer, prefixes in LAYERS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return layer
    return None


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


MODULES = {module_of(p): p for p in sorted(PACKAGE.rglob("*.py")) if module_of(p) != "orchd"}


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if layer_of(m) is None] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_layer_reaches_upward(module: str) -> None:
    mine = ORDER.index(layer_of(module) or "face")
    upward = [
        name
        for name in imports(MODULES[module])
        if name.startswith("orchd.") and (theirs := layer_of(name)) and ORDER.index(theirs) > mine
    ]
    assert upward == [], f"{module} ({ORDER[mine]}) imports a layer above it"


def test_only_the_data_layer_imports_sqlalchemy_or_a_driver() -> None:
    outside = {
        module: names
        for module, path in MODULES.items()
        if layer_of(module) != "data"
        and (names := sorted({n for n in imports(path) if n.split(".")[0] in DRIVERS}))
    }
    assert outside == {}


def test_the_daemons_report_through_an_observer() -> None:
    """Metrics is an observer handed to the daemons; neither daemon imports it, and it imports no
    daemon (the cycle metrics -> scheduler -> metrics is gone)."""
    daemons = [m for m in MODULES if m.startswith(("orchd.scheduler", "orchd.worker"))]
    assert [m for m in daemons if "orchd.metrics" in imports(MODULES[m])] == []
    assert [
        n for n in imports(MODULES["orchd.metrics"]) if n.startswith(("orchd.scheduler", "orchd.worker"))
    ] == []


def test_the_data_layer_hands_out_read_models_never_rows() -> None:
    """Every public method of the Store (the one object the faces and daemons hold) is declared
    to return orchd's types: no ``Row`` (whose column names would leak out of orchd/db)."""
    import typing

    from sqlalchemy import Row

    from orchd.db.store import Store

    def mentions_row(hint: object) -> bool:
        return typing.get_origin(hint) is Row or hint is Row or any(map(mentions_row, typing.get_args(hint)))

    leaking = [
        name
        for name in dir(Store)
        if not name.startswith("_")
        and callable(method := getattr(Store, name))
        and mentions_row(typing.get_type_hints(method).get("return"))
    ]
    assert leaking == []
