"""A non-root SSH user with `become` (ansible_user + ansible_become, standard Ansible): site.yml
converges and stays idempotent, and `invoke plan` reads through the same sudo; without become
the preflight stops the run first, saying why (README.md#become)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.hostkit.testhost import TestHost

from .conftest import REPO, Registry
from .test_ansible import add, mutating, playbook, recap

pytestmark = pytest.mark.e2e

USER = "admin"


def inventory(reg: Registry, host: TestHost, become: bool) -> None:
    host.add_sudo_user(USER)
    fbsd1 = {"warden_ext_if": "vtnet0", **host.ansible_vars(user=USER)}
    if become:
        fbsd1["ansible_become"] = True
    reg.inventory.write_text(yaml.safe_dump({"warden_hosts": {"hosts": {"fbsd1": fbsd1}}}))
    add(reg, "atlas", 1, jails="cms")


def test_a_sudo_user_with_become_converges_and_plan_reads_through_sudo(registry: Registry, testhost: TestHost) -> None:
    inventory(registry, testhost, become=True)
    first = playbook(registry)
    assert first.returncode == 0, first.stdout[-4000:]
    root = testhost.root
    assert (root / "usr/local/etc/rc.d/atlas").stat().st_uid == 0
    assert 'atlas_enable="YES"' in (root / "etc/rc.conf").read_text()
    env_file = root / "home/atlas/clawdie/.env"  # written by warden.provision.files' child as the agent
    atlas_uid = int(subprocess.run(["chroot", str(root), "id", "-u", "atlas"], capture_output=True, text=True).stdout)
    assert env_file.stat().st_uid == atlas_uid
    assert testhost.state()["pf"]["enabled"]  # confirmed over a new connection, as admin with sudo
    second = playbook(registry)
    assert second.returncode == 0, second.stdout[-4000:]
    assert recap(second)["changed"] == 0, second.stdout[-4000:]
    plan = subprocess.run(
        [sys.executable, "-m", "invoke", "plan"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **registry.env(), "COLUMNS": "200"},
        timeout=300,
    )
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-2000:]
    doctor = subprocess.run(
        [sys.executable, "-m", "invoke", "doctor", "--host", "fbsd1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **registry.env(), "COLUMNS": "200"},
        timeout=300,
    )
    assert "[ OK ] root rights" in doctor.stdout, doctor.stdout


def test_a_non_root_user_without_become_is_stopped_by_the_preflight(registry: Registry, testhost: TestHost) -> None:
    inventory(registry, testhost, become=False)
    rc_before = (testhost.root / "etc/rc.conf").read_text()
    result = playbook(registry)
    assert result.returncode != 0
    text = " ".join(result.stdout.split())
    assert (
        f"[FAIL] root rights (as root, or a non-root SSH user with become) (the commands run as {USER} (uid" in text
    ), result.stdout[-3000:]
    assert f"fix: set ansible_become: true for fbsd1 in {registry.inventory} (with passwordless sudo" in text
    assert "Permission denied" not in result.stdout
    assert (testhost.root / "etc/rc.conf").read_text() == rc_before
    assert mutating(testhost.calls()) == []
