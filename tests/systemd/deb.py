"""The .deb, built once per test session by ``make deb`` (both test_deb and the real-systemd tests use it)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def unavailable_reason() -> str | None:
    for tool in ("dpkg-buildpackage", "dh", "make"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install debhelper make)"
    return None


@functools.cache
def build() -> Path:
    """Build the package from the current tree and return its path."""
    result = subprocess.run(
        ["make", "--no-print-directory", "deb"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"make deb failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return ROOT / result.stdout.strip().splitlines()[-1]
