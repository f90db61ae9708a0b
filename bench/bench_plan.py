"""`invoke plan` for a host with 50 agents against the loopback SSH test host (SPEC §10).

    python bench/bench_plan.py [AGENTS]     (root: starts a chrooted sshd, see tests/hostkit)

Prints wall time, SSH connections and exec channels (round trips) seen by sshd.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.hostkit.testhost import TestHost  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        host = TestHost(root / "host")
        try:
            (root / "agents").mkdir()
            for i in range(n):
                d = root / "agents" / f"a{i}"
                d.mkdir()
                (d / ".env").write_text(
                    f"AGENT_NAME=a{i}\nAGENT_SUBNET_BASE=10.0.{i}\nCONTROLPLANE_API_PORT={3100 + i}\n"
                )
            (root / "hosts.yml").write_text("all:\n  hosts:\n    fbsd1:\n      warden_ext_if: vtnet0\n")
            host.write_ssh_config(root / "ssh_config", "fbsd1")
            env = {
                **os.environ,
                "PROVISION_AGENTS_DIR": str(root / "agents"),
                "PROVISION_INVENTORY": str(root / "hosts.yml"),
                "PROVISION_BUILD_DIR": str(root / "build"),
                "PROVISION_SSH_CONFIG": str(root / "ssh_config"),
            }
            started = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "invoke", "plan"], cwd=REPO, env=env, capture_output=True)
            wall = time.perf_counter() - started
            log = host.log.read_text(errors="replace")
            print(f"agents: {n}")
            print(f"exit status: {result.returncode} (2 = changes pending)")
            print(f"wall time: {wall:.2f} s (render + one SSH read + diff + print)")
            print(f"ssh connections: {log.count('Accepted publickey')}")
            print(f"exec channels (round trips): {log.count('Starting session: command')}")
            print(
                f"files compared: {result.stdout.decode().count('added: ') + result.stdout.decode().count('changed: ')}"
            )
        finally:
            host.stop()


if __name__ == "__main__":
    main()
