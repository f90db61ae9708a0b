"""No-change `ansible-playbook site.yml` on a host with 1 vs 50 agents (docs/design.md#quality-bars).

    python bench/bench_ansible.py [N]     (root: starts a chrooted sshd, see tests/hostkit)

Converges each host once, then times a second (no-change) run and counts its tasks.
Targets: the same task count for 1 and N agents; the N-agent run at most 1.5x the time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.hostkit.testhost import TestHost  # noqa: E402


def run(n: int) -> tuple[int, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        host = TestHost(root / "host")
        try:
            inventory = {"all": {"hosts": {"fbsd1": {"warden_ext_if": "vtnet0", **host.ansible_vars()}}}}
            (root / "hosts.yml").write_text(yaml.safe_dump(inventory))
            for i in range(n):
                d = root / "agents" / f"a{i}"
                d.mkdir(parents=True)
                (d / ".env").write_text(
                    f"AGENT_NAME=a{i}\nAGENT_SUBNET_BASE=10.0.{i}\nCONTROLPLANE_API_PORT={3100 + i}\n"
                )
            env = {
                **os.environ,
                "PROVISION_AGENTS_DIR": str(root / "agents"),
                "PROVISION_INVENTORY": str(root / "hosts.yml"),
                "PROVISION_BUILD_DIR": str(root / "build"),
                "ANSIBLE_NOCOLOR": "1",
                # ansible-playbook and invoke (called by site.yml) from this interpreter's venv
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            }
            cmd = ["ansible-playbook", "-i", str(root / "hosts.yml"), "site.yml"]
            first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            assert first.returncode == 0, first.stdout[-3000:]
            started = time.perf_counter()
            second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - started
            tasks = len(re.findall(r"^TASK \[", second.stdout, re.M))
            changed = int(re.search(r"fbsd1\s+:.*changed=(\d+)", second.stdout).group(1))  # type: ignore[union-attr]
            return tasks, wall, changed
        finally:
            host.stop()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    one = run(1)
    many = run(n)
    print(f"{'agents':>7} {'tasks':>6} {'no-change s':>12} {'changed':>8}")
    for count, (tasks, wall, changed) in ((1, one), (n, many)):
        print(f"{count:>7} {tasks:>6} {wall:>12.1f} {changed:>8}")
    print(f"time ratio {n}/1: {many[1] / one[1]:.2f} (target <= 1.5); task count equal: {one[0] == many[0]}")


if __name__ == "__main__":
    main()
