"""The Vagrantfile and the justfile are valid for the tools that read them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="Debian's vagrant is installed by scripts/test")
def test_vagrant_validate_accepts_the_vagrantfile() -> None:
    result = subprocess.run(["vagrant", "validate"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


def test_vagrant_example_registry_checks_clean() -> None:
    env = {
        **os.environ,
        "PROVISION_INVENTORY": str(REPO / "examples/vagrant/inventory/hosts.yml"),
        "PROVISION_AGENTS_DIR": str(REPO / "examples/vagrant/agents"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout
    assert "2 agent(s) on 1 host(s)" in result.stdout


def test_justfile_lists_the_everyday_recipes() -> None:
    just = shutil.which("just", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert just, "just comes from the rust-just package"
    result = subprocess.run([just, "--list"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for recipe in ("check", "plan", "apply", "test", "vm"):
        assert f"    {recipe}" in result.stdout
