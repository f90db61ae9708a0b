"""No-change `site.yml` against no-change `invoke plan`, for 1 and N agents with souls.

    python bench/bench_ansible.py [N [ROUNDS]]     (root: starts a chrooted sshd, see tests/hostkit)

One loopback test host (tests/hostkit). Each agent has a soul: a git repo of its own,
pinned to its commit (SOUL_REPO, SOUL_REF). The host is converged with 1 agent, then
with N; after each convergence the script times a no-change `invoke plan` and a
no-change `ansible-playbook site.yml`, counts the tasks, and prints the ratios
(docs/design.md#quality-bars):

    site.yml(N) / plan(N)      target <= 8
    site.yml(N) / site.yml(1)  target <= 1.3
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provision.soul import init as soul_init  # noqa: E402
from tests.hostkit.testhost import TestHost  # noqa: E402

ROUNDS = 3  # no-change runs timed per figure, by default; the median is printed


@dataclass
class Figures:
    agents: int
    plan: float
    site: float
    tasks: int
    changed: int


def soul(root: Path, name: str) -> tuple[Path, str]:
    """A soul repo that passes `invoke check` (provision.soul.init, as `invoke soul-init`)."""
    repo = root / "souls" / name
    return repo, soul_init(repo, name, name.title(), "en_US.UTF-8", "bench")


def write_agents(root: Path, n: int) -> None:
    for i in range(n):
        d = root / "agents" / f"a{i}"
        if d.exists():
            continue
        d.mkdir(parents=True)
        repo, commit = soul(root, f"a{i}")
        (d / ".env").write_text(
            f"AGENT_NAME=a{i}\nAGENT_SUBNET_BASE=10.0.{i}\nCONTROLPLANE_API_PORT={3100 + i}\n"
            f"SOUL_REPO={repo}\nSOUL_REF={commit}\n"
        )


def timed(cmd: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode not in ok:
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return wall, done.stdout


def measure(n: int, env: dict[str, str], site: list[str], plan: list[str], rounds: int) -> Figures:
    wall, _out = timed(site, env)
    print(f"{n} agent(s): converged in {wall:.1f} s", flush=True)
    plans, sites, out = [], [], ""
    for _ in range(rounds):
        wall, _out = timed(plan, env)  # 0: nothing to do (2 would mean changes pending)
        plans.append(wall)
        wall, out = timed(site, env)
        sites.append(wall)
        print(f"{n} agent(s): no-change plan {plans[-1]:.2f} s, site.yml {sites[-1]:.2f} s", flush=True)
    tasks = len(re.findall(r"^TASK \[", out, re.M))
    recap = re.search(r"^fbsd1\s+:.*changed=(\d+)", out, re.M)
    return Figures(n, statistics.median(plans), statistics.median(sites), tasks, int(recap.group(1)) if recap else -1)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else ROUNDS
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        host = TestHost(root / "host")
        try:
            group = {"warden_hosts": {"hosts": {"fbsd1": {"warden_ext_if": "vtnet0", **host.ansible_vars()}}}}
            (root / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": group}}))
            host.write_ssh_config(root / "ssh_config", "fbsd1")
            env = {
                **os.environ,
                "PROVISION_AGENTS_DIR": str(root / "agents"),
                "PROVISION_INVENTORY": str(root / "hosts.yml"),
                "PROVISION_BUILD_DIR": str(root / "build"),
                "PROVISION_SSH_CONFIG": str(root / "ssh_config"),
                "ANSIBLE_NOCOLOR": "1",
                "COLUMNS": "200",
                # ansible-playbook and invoke (called by site.yml) from this interpreter's venv
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            }
            site = ["ansible-playbook", "-i", str(root / "hosts.yml"), "site.yml"]
            plan = [sys.executable, "-m", "invoke", "plan"]
            write_agents(root, 1)
            one = measure(1, env, site, plan, rounds)
            write_agents(root, n)
            many = measure(n, env, site, plan, rounds)
        finally:
            host.stop()
    print(f"one loopback test host, every agent with a pinned soul; medians of {rounds} no-change run(s)")
    print(f"{'agents':>7} {'plan s':>8} {'site.yml s':>11} {'tasks':>6} {'changed':>8}")
    for f in (one, many):
        print(f"{f.agents:>7} {f.plan:>8.2f} {f.site:>11.2f} {f.tasks:>6} {f.changed:>8}")
    print(f"site.yml({n}) / plan({n}):     {many.site / many.plan:5.2f}  (target <= 8)")
    print(f"site.yml({n}) / site.yml(1):  {many.site / one.site:5.2f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
