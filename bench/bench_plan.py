"""`invoke plan` for a host with 50 agents against the loopback SSH test host (docs/design.md#quality-bars).

    python bench/bench_plan.py [AGENTS]     (root: starts a chrooted sshd, see tests/hostkit)

Plans a fresh host (every file added), then the same host once provisioned (no
changes), and prints for each: wall time, SSH connections and exec channels as sshd
logged them (and as paramiko counted them), the bytes read, and the time of the read
itself.  The bar: one connection and one round of reads whatever the number of agents.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provision import remote  # noqa: E402
from provision.cli import plan_command  # noqa: E402
from provision.hostfiles import EDITED, edited_results  # noqa: E402
from provision.manifest import LIVE_MANIFEST_PATH, Manifest  # noqa: E402
from provision.models import Host  # noqa: E402
from provision.plan import paths_to_read  # noqa: E402
from provision.probe import probe_script  # noqa: E402
from provision.settings import Settings  # noqa: E402
from tests.hostkit.testhost import TestHost  # noqa: E402


def sshd_counts(host: TestHost) -> tuple[int, int]:
    log = host.log.read_text(errors="replace")
    return log.count("Accepted publickey"), log.count("Starting session: command")


def provision_like_ansible(build: Path, root: Path) -> None:
    manifest = Manifest.load(build)
    for entry in manifest.files:
        target = root / entry.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(build / entry.path.lstrip("/"), target)
        target.chmod(int(entry.mode, 8))
    files = {path: root / path.lstrip("/") for path in EDITED}
    live = {path: f.read_text() if f.exists() else None for path, f in files.items()}
    for path, text in edited_results(manifest, live).items():
        files[path].write_text(text)
        files[path].chmod(int(EDITED[path], 8))
    record = root / LIVE_MANIFEST_PATH.lstrip("/")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(manifest.to_json())


def measure(label: str, settings: Settings, host: TestHost) -> None:
    conns0, chans0 = sshd_counts(host)
    stats0 = (remote.STATS.connections, remote.STATS.channels)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        status = plan_command(settings, "fbsd1")
    wall = time.perf_counter() - started
    conns, chans = sshd_counts(host)
    pconns, pchans = remote.STATS.connections - stats0[0], remote.STATS.channels - stats0[1]
    manifest = Manifest.load(settings.build_dir / "fbsd1")
    target = Host(name="fbsd1")
    t0 = time.perf_counter()
    live = remote.fetch(target, paths_to_read(manifest), probe=probe_script(manifest))
    read = time.perf_counter() - t0
    size = sum(len(b) for b in live.files.values() if b)
    printed = out.getvalue()
    files = sum(printed.count(k) for k in ("\nadded: ", "\nchanged: ", "\nremoved: "))
    print(f"{label}:")
    print(f"  exit status {status}, {files} file(s) with changes, {len(manifest.files)} owned files")
    print(f"  plan_command wall time: {wall:.2f} s (render + read + diff + print)")
    print(
        f"  SSH connections: {conns - conns0} (sshd log), {pconns} (paramiko); "
        f"exec channels (round trips): {chans - chans0} (sshd log), {pchans} (paramiko)"
    )
    kib = size / 1024
    print(f"  the read alone, probe included: {read * 1000:.0f} ms for {len(live.files)} paths, {kib:.0f} KiB")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        host = TestHost(root / "host")
        try:
            agents = root / "agents"
            agents.mkdir()
            for i in range(n):
                d = agents / f"a{i}"
                d.mkdir()
                (d / ".env").write_text(
                    f"AGENT_NAME=a{i}\nAGENT_SUBNET_BASE=10.0.{i}\nCONTROLPLANE_API_PORT={3100 + i}\n"
                    f"ANTHROPIC_API_KEY=sk-ant-{i:04d}\n"
                )
            (root / "hosts.yml").write_text("warden_hosts:\n  hosts:\n    fbsd1:\n      warden_ext_if: vtnet0\n")
            host.write_ssh_config(root / "ssh_config", "fbsd1")
            os.environ["PROVISION_SSH_CONFIG"] = str(root / "ssh_config")
            os.environ.setdefault("COLUMNS", "200")
            settings = Settings(agents, root / "hosts.yml", root / "build", root / "cache")
            print(f"{n} agents on one host, loopback sshd (tests/hostkit)")

            env = {**os.environ, "PROVISION_AGENTS_DIR": str(agents), "PROVISION_INVENTORY": str(root / "hosts.yml")}
            env["PROVISION_BUILD_DIR"] = str(root / "build")
            started = time.perf_counter()
            cli = subprocess.run([sys.executable, "-m", "invoke", "plan"], cwd=REPO, env=env, capture_output=True)
            print(
                f"`invoke plan` as a command (fresh host): {time.perf_counter() - started:.2f} s, exit {cli.returncode}"
            )

            measure("fresh host (everything to add)", settings, host)
            provision_like_ansible(root / "build/fbsd1", host.root)
            measure("provisioned host (nothing to do)", settings, host)
        finally:
            host.stop()


if __name__ == "__main__":
    main()
