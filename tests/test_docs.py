"""The README documents every config key and every command (so docs cannot fall behind)."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from orchd.cli import main
from orchd.config.model import ARRAYS, SECTIONS
from orchd.config.template import ranges
from tests import cli_reference

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
KEYS = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)] + [
    f"{a}[].{f.name}" for a, cls in ARRAYS.items() for f in dataclasses.fields(cls)
]


def _commands(group: click.Group, prefix: str) -> list[str]:
    found = []
    for name, command in cli_reference.subcommands(group).items():
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix} {name}")
        else:
            found.append(f"{prefix} {name}")
    return found


@pytest.mark.parametrize("key", KEYS)
def test_every_config_key_is_in_the_readme(key: str) -> None:
    assert f"`{key}`" in README


@pytest.mark.parametrize("command", _commands(main, "orchd"))
def test_every_command_is_in_the_readme(command: str) -> None:
    assert f"`{command}" in README


@pytest.mark.parametrize("command", _commands(main, "orchd"))
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(main, [*command.split()[1:], "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_the_cli_reference_is_generated_from_the_click_tree() -> None:
    assert cli_reference.current() == cli_reference.render(), (
        "README.md's CLI reference is out of date; regenerate it: .venv/bin/python -m tests.cli_reference"
    )


def test_the_ranges_table_is_generated_from_the_key_declarations() -> None:
    assert cli_reference.current_ranges() == ranges(), (
        "README.md's table of ranges is out of date; regenerate it: .venv/bin/python -m tests.cli_reference"
    )


def _groups(group: click.Group, prefix: str) -> list[str]:
    return [prefix] + [
        found
        for name, command in cli_reference.subcommands(group).items()
        if isinstance(command, click.Group)
        for found in _groups(command, f"{prefix} {name}")
    ]


@pytest.mark.parametrize("command", _groups(main, "orchd") + _commands(main, "orchd"))
def test_every_command_and_group_has_an_example(command: str) -> None:
    result = CliRunner().invoke(main, [*command.split()[1:], "--help"])
    assert "Example:" in result.output


def test_the_package_metadata_gives_setuptools_nothing_to_warn_about() -> None:
    """`make run` printed three deprecation warnings about our license table before anything
    useful: the license is an SPDX expression, which setuptools reads from version 77 on."""
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert not any(c.startswith("License ::") for c in pyproject["project"].get("classifiers", []))
    assert pyproject["build-system"]["requires"] == ["setuptools>=77"]
