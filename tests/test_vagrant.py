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
    # --ignore-provider: CI has no VirtualBox; the Vagrantfile itself is what is checked.
    result = subprocess.run(
        ["vagrant", "validate", "--ignore-provider"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
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


def test_vagrant_box_bootstraps_the_release_its_jails_use() -> None:
    """A jail's userland must not be newer than the host's kernel: box, bootstrap and
    warden_release name one FreeBSD release."""
    import re

    import yaml

    vagrantfile = (REPO / "Vagrantfile").read_text()
    box = re.search(r'vm\.box = "freebsd/FreeBSD-([0-9.]+-RELEASE)"', vagrantfile)
    assert box, "the Vagrantfile names a freebsd/FreeBSD-<release> box"
    inventory = yaml.safe_load((REPO / "examples/vagrant/inventory/hosts.yml").read_text())
    host = inventory["all"]["children"]["warden_hosts"]["hosts"]["fbsd-vagrant"]
    assert host["warden_release"] == box.group(1)
    assert f"bastille bootstrap {box.group(1)}" in vagrantfile
