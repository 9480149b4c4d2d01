"""The typed vocabulary (orchd.models): a deployment's stored JSON is unchanged, defaults come from
the config declarations, and the read models need no database to be used."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from orchd.config import DeploymentConfig, load_config
from orchd.config.fields import parsed_defaults
from orchd.models import DeploymentSpec, Worker

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def test_the_stored_json_is_what_orchd_always_wrote(tmp_path: Path) -> None:
    """Same keys and values as before the typed spec existed, so no migration and no config_hash
    change (an unchanged config must not look changed after an upgrade)."""
    path = tmp_path / "orchd.toml"
    path.write_text(
        '[[deployments]]\nname = "etl"\ncommand = ["/bin/etl", "--full"]\nretries = 2\n'
        'retry_delay = "1m"\ntimeout = "2h"\nenv = { A = "1" }\nparameters = { days = 7 }\n'
        'tags = ["nightly"]\noverlap = "skip"\n'
    )
    dep = load_config(path, env={}).deployments[0]
    assert DeploymentSpec.from_config(dep, "none").to_json() == {
        "description": "",
        "command": ["/bin/etl", "--full"],
        "parameters": {"days": 7},
        "env": {"A": "1"},
        "working_dir": "",
        "timeout": 7200.0,
        "retries": 2,
        "retry_delay": 60.0,
        "retry_backoff": 2.0,
        "catchup": "none",
        "tags": ["nightly"],
        "shell": False,
        "entrypoint": "",
        "python": "",
        "max_active_runs": None,
        "overlap": "skip",
    }


def test_only_container_runs_store_container_keys(tmp_path: Path) -> None:
    path = tmp_path / "orchd.toml"
    path.write_text('[[deployments]]\nname = "c"\nimage = "busybox"\ncontainer = { network = "none" }\n')
    stored = DeploymentSpec.from_config(load_config(path, env={}).deployments[0], "latest").to_json()
    assert (stored["image"], stored["container"]) == ("busybox", {"network": "none"})
    assert DeploymentSpec.from_json(stored).to_json() == stored


def test_missing_keys_read_as_the_config_defaults() -> None:
    """A row written by an older orchd lacks newer keys: they take the declared default, which is
    stated once (in orchd.config.model), not again here."""
    spec = DeploymentSpec.from_json({"command": ["true"], "future_key": 1})
    declared = parsed_defaults(DeploymentConfig)
    for field in dataclasses.fields(DeploymentSpec):
        if field.name not in ("command", "catchup"):
            assert getattr(spec, field.name) == declared[field.name], field.name
    assert spec.catchup == "latest"  # scheduler.catchup's default
    assert (spec.max_attempts, spec.active_cap) == (1, None)


@given(
    retries=st.integers(0, 10),
    max_active=st.one_of(st.none(), st.integers(1, 5)),
    overlap=st.sampled_from(["allow", "skip", "queue", "cancel_previous"]),
    params=st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
def test_json_round_trip(retries: int, max_active: int | None, overlap: str, params: dict[str, int]) -> None:
    spec = DeploymentSpec.from_json(
        {"retries": retries, "max_active_runs": max_active, "overlap": overlap, "parameters": params}
    )
    assert DeploymentSpec.from_json(spec.to_json()) == spec
    assert spec.max_attempts == retries + 1
    assert spec.active_cap == (max_active or (None if overlap == "allow" else 1))
    assert spec.run_parameters({"x": 1}, None) == {**params, "x": 1}
    assert spec.parameters == params  # merging never changes the deployment's own


def test_a_silent_worker_reads_offline() -> None:
    worker = Worker("w", "h", 1, ["default"], 4, 0, "1", "online", NOW, NOW - timedelta(seconds=61))
    assert worker.status_at(NOW, timeout=60) == "offline"
    assert worker.status_at(NOW, timeout=61) == "online"
    assert dataclasses.replace(worker, status="stopped").status_at(NOW, 60) == "stopped"


def test_the_vocabulary_imports_no_sqlalchemy() -> None:
    """The models (and the state machine they use) work without a database layer loaded."""
    code = "import sys, orchd.models; sys.exit(any(m.startswith('sqlalchemy') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
