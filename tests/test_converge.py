"""Actions decided from live state (docs/convergence.md), end to end on the SSH test host:
a run interrupted at any kind of command step is finished by the next one, and
`site.yml --check --diff` lists the same actions as `invoke plan`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from provision.rcconf import read_vars
from tests.hostkit.testhost import TestHost

from .conftest import REPO, Registry
from .test_ansible import add, playbook, recap

pytestmark = pytest.mark.e2e


def point_at(reg: Registry, host: TestHost) -> None:
    group = {"hosts": {"fbsd1": {"warden_ext_if": "vtnet0", **host.ansible_vars()}}}
    inventory = {"all": {"children": {"warden_hosts": group}}}
    reg.inventory.write_text(yaml.safe_dump(inventory))


def plan_actions(reg: Registry, host: TestHost) -> tuple[int, list[str]]:
    """`invoke plan`'s actions section for fbsd1, as "concern: describe" lines."""
    ssh_config = reg.root / "ssh_config"
    ssh_config.write_text("")
    host.write_ssh_config(ssh_config, "fbsd1")
    env = {**os.environ, **reg.env(), "COLUMNS": "400", "PROVISION_SSH_CONFIG": str(ssh_config)}
    plan = subprocess.run(
        [sys.executable, "-m", "invoke", "plan"], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )
    assert "\nactions\n" in plan.stdout, plan.stdout[-3000:] + plan.stderr[-2000:]
    section = plan.stdout.split("\nactions\n", 1)[1]
    lines = []
    for line in section.splitlines():
        if not line.startswith("  "):
            break
        if line.strip() != "no actions" and not line.strip().startswith("warning:"):
            lines.append(line.strip())
    return plan.returncode, lines


def check_actions(stdout: str) -> list[str]:
    """The actions `--check --diff` lists: warden_actions' diff blocks, "+" lines under
    `+++ to run: <concern> actions`."""
    out: list[str] = []
    concern = None
    for line in stdout.splitlines():
        m = re.match(r"^\+\+\+ (?:after: )?to run: (\w+) actions$", line)
        if m:
            concern = m.group(1)
        elif concern and line.startswith("@@"):
            continue
        elif concern and line.startswith("+"):
            out.append(f"{concern}: {line[1:]}")
        else:
            concern = None
    return out


def test_check_diff_lists_the_same_actions_as_plan(registry: Registry, testhost: TestHost) -> None:
    point_at(registry, testhost)
    add(registry, "atlas", 1, "cms")
    env = registry.agents / "atlas/.env"
    env.write_text(env.read_text() + "AGENT_MEMORY_LIMIT=4G\n")
    status, planned = plan_actions(registry, testhost)
    dry = playbook(registry, "--check", "--diff")
    assert dry.returncode == 0, dry.stdout[-4000:] + dry.stderr[-2000:]
    assert status == 2
    # a fresh host: every kind of action, the same list on both sides
    assert any(a.startswith("jails: create jail atlascms: bastille create") for a in planned), planned
    assert "pf: start PF with confirm-or-rollback: service pf onestart" in planned
    assert "agents: start agent atlas: service atlas start" in planned
    assert any(a.startswith("limits: add rctl rule user:atlas:memoryuse") for a in planned)
    assert check_actions(dry.stdout) == planned

    assert playbook(registry).returncode == 0
    assert plan_actions(registry, testhost) == (0, [])  # applied: nothing pending, exit 0
    add(registry, "nova", 2, "cms")  # a new agent: alias, jail, user, start, PF reload
    status, planned = plan_actions(registry, testhost)
    dry = playbook(registry, "--check", "--diff")
    assert dry.returncode == 0 and status == 2
    assert "network: add gateway 10.0.2.1/24 to warden0: ifconfig warden0 inet 10.0.2.1/24 alias" in planned
    assert any(a.startswith("pf: reload PF") for a in planned)
    assert check_actions(dry.stdout) == planned


def stable(host: TestHost) -> dict[str, Any]:
    """What an apply leaves on the host, without counters (the doubles' state and our files)."""
    state = host.state()
    state["pf"].pop("loads", None)
    root = host.root
    files: dict[str, Any] = {}
    for rel in (
        "etc/rc.conf",
        "etc/pf.conf",
        "etc/pf.warden.conf",
        "etc/rctl.conf",
        "usr/local/bastille/jails/atlascms/jail.conf",
        "var/db/warden/jails/atlascms.ready",
        "var/db/warden/started/atlas",
    ):
        p = root / rel
        files[rel] = p.read_text() if p.exists() else None
    # rc.conf as rc(8) reads it: a variable first written by an earlier, interrupted run
    # may sit on another line than in a single run (sysrc appends new variables).
    files["etc/rc.conf"] = read_vars(files["etc/rc.conf"] or "")
    return {"state": state, "files": files}


def wait_for_rollback(host: TestHost) -> None:
    ran = host.root / "var/db/warden/pf-rollback.ran"
    deadline = time.monotonic() + 60
    while not ran.exists():
        assert time.monotonic() < deadline, "the armed PF rollback never ran"
        time.sleep(0.5)


def soul_agent(reg: Registry, tmp_path: Path) -> tuple[Path, Path, str]:
    """atlas with one cms jail, a memory limit and a soul pinned at its first commit:
    an agent that needs every kind of command step. Returns its .env, the soul repository and
    the commit."""
    from provision.soul import init

    add(reg, "atlas", 1, "cms")
    env = reg.agents / "atlas/.env"
    soul = tmp_path / "soul"
    first = init(soul, "atlas", "Atlas", "en-US", "ops")
    env.write_text(env.read_text() + f"AGENT_MEMORY_LIMIT=4G\nSOUL_REPO={soul}\nSOUL_REF={first}\n")
    return env, soul, first


def test_an_interrupted_run_is_finished_by_the_next_one_at_every_kind_of_step(
    registry: Registry, testhost_factory: Any, tmp_path: Path
) -> None:
    """Alias, PF load, jail create, jail setup, restart and template, agent start, rctl; the
    agent restart and the soul checkout are in the next test (their own converged host, so
    that the two halves run on both xdist workers)."""
    soul_agent(registry, tmp_path)

    # The reference: one uninterrupted run on a host of its own, run while the interrupted
    # runs go on (a registry of its own for its build/; the two hosts share nothing).
    reference = testhost_factory("reference")
    ref_registry = Registry(
        root=tmp_path / "ref",
        agents=tmp_path / "ref/agents",
        inventory=tmp_path / "ref/hosts.yml",
        build=tmp_path / "ref/build",
    )
    shutil.copytree(registry.agents, ref_registry.agents)
    point_at(ref_registry, reference)
    with ThreadPoolExecutor(max_workers=1) as pool:
        uninterrupted = pool.submit(playbook, ref_registry)

        host = testhost_factory("interrupted")
        point_at(registry, host)
        # Each run fails at the injected step, and first finishes what the run before it left.
        steps = [
            ("ifconfig warden0 inet", "add gateway"),  # alias
            # PF load: detached, so the confirmation fails (or the short rollback fired first)
            ("service pf onestart", "the rejected new ones are kept in /var/db/warden/rejected"),
            ("bastille create", "create jail atlascms"),
            ("bastille config", "set the hostname of jail atlascms"),  # jail setup
            ("bastille restart", "restart jail atlascms"),
            ("bastille template", "apply the cms template to jail atlascms"),
            ("service atlas start", "start agent atlas"),
            ("rctl -a", "add rctl rule"),
        ]
        for match, message in steps:
            host.fail_call(match)
            extra = ("-e", "warden_pf_rollback_seconds=4") if match.startswith("service pf") else ()
            failed = playbook(registry, *extra)
            assert failed.returncode != 0, f"{match}: " + failed.stdout[-3000:]
            assert message in failed.stdout, f"{match}: " + failed.stdout[-4000:]
            host.clear_failures()
            if match.startswith("service pf"):
                wait_for_rollback(host)
        healed = playbook(registry)
        assert healed.returncode == 0, healed.stdout[-4000:]
        ref = uninterrupted.result()
    assert ref.returncode == 0, ref.stdout[-4000:]
    want = stable(reference)
    reference.stop()
    got = stable(host)
    assert got["state"] == want["state"]
    for path, text in want["files"].items():
        assert got["files"][path] == text, f"{path}:\n{got['files'][path]}\n!=\n{text}"
    # /var/db/warden/pf.loaded names this host's ruleset (its fallback passes its own SSH
    # port, which differs from the reference host's): nothing is pending for plan either
    assert plan_actions(registry, host) == (0, [])
    again = playbook(registry)
    assert again.returncode == 0 and recap(again)["changed"] == 0, again.stdout[-4000:]


def test_a_failed_agent_restart_and_a_failed_soul_checkout_are_finished_by_the_next_run(
    registry: Registry, testhost: TestHost, tmp_path: Path
) -> None:
    """The interrupted-run test's other two kinds of step, on a converged host."""
    env, soul, first = soul_agent(registry, tmp_path)
    host = testhost
    point_at(registry, host)
    converged = playbook(registry)
    assert converged.returncode == 0, converged.stdout[-4000:]

    # A restart that fails (the .env changed), then a soul checkout that fails.
    env.write_text(env.read_text() + "AGENT_EXTRA_SETTING=1\n")
    host.fail_call("service atlas restart")
    failed = playbook(registry)
    assert failed.returncode != 0 and "restart agent atlas" in failed.stdout, failed.stdout[-3000:]
    host.clear_failures()
    (soul / "SOUL.md").write_text("# Atlas, revised\n")
    subprocess.run(
        ["git", "-C", str(soul), "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qam", "revise"],
        check=True,
    )
    head = subprocess.run(["git", "-C", str(soul), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    second = head.stdout.strip()
    env.write_text(env.read_text().replace(first, second))
    # git refuses to touch an index another git holds (its lock file, root's: the agent cannot remove it)
    lock = host.root / "home/atlas/clawdie/soul/.git/index.lock"
    lock.write_text("")
    before = len(host.calls())
    failed = playbook(registry)
    assert failed.returncode != 0 and "index.lock" in failed.stdout, failed.stdout[-3000:]
    assert ("service", ["atlas", "restart"]) in [(c["cmd"], c["argv"]) for c in host.calls()[before:]]
    lock.unlink()
    healed = playbook(registry)
    assert healed.returncode == 0, healed.stdout[-4000:]
    assert (host.root / "home/atlas/clawdie/soul/SOUL.md").read_text() == "# Atlas, revised\n"
    again = playbook(registry)
    assert again.returncode == 0 and recap(again)["changed"] == 0, again.stdout[-4000:]
