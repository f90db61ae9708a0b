"""The repository's own code stays ruff-clean, formatted, mypy-strict and shellcheck-clean.

Not style for its own sake: mypy catches the None that a FreeBSD host hands back where
we expected a string, and shellcheck the unquoted word that an operator's value splits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, f"{name} comes with the [test] extras (pyproject.toml)"
    return found


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_check_and_format() -> None:
    check = run(tool("ruff"), "check", "--output-format=concise", ".")
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = run(tool("ruff"), "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.parametrize(
    "targets",
    [(), ("tasks.py", "library", "filter_plugins", "tests", "bench")],
    ids=["package", "tasks-plugins-tests-bench"],
)
def test_mypy_strict(targets: tuple[str, ...]) -> None:
    result = run(tool("mypy"), *targets)  # () checks `packages` from pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_we_ship_pass_shellcheck() -> None:
    scripts = [
        REPO / "scripts/bootstrap.sh",
        REPO / "scripts/demo",
        REPO / "scripts/test",
        *sorted((REPO / "roles").glob("*/files/*.sh")),
    ]
    assert len(scripts) >= 4
    result = run(tool("shellcheck"), "--shell=sh", "--severity=style", *map(str, scripts))
    assert result.returncode == 0, result.stdout + result.stderr
