"""Time reading the inventory: the plain-YAML fast path against Ansible's own machinery.

    python bench/bench_inventory.py [HOSTS]

A script, not a test: it prints the figures.  The same HOSTS hosts (default 50) are
written twice: as one plain YAML file (read without Ansible, provision/inventory.py),
and as the same file with a `group_vars/` beside it (read with InventoryManager and
VariableManager).  Each is timed in a fresh interpreter, imports included, as a
command pays it, and the result is checked to be the same hosts.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CODE = (
    "import sys; from pathlib import Path; from provision.inventory import load_inventory; "
    "hosts, problems = load_inventory(Path(sys.argv[1])); "
    "assert not problems, problems; print(len(hosts), sorted({h.ext_if for h in hosts}), 'ansible' in sys.modules)"
)


def write(root: Path, n: int, group_vars: bool) -> Path:
    root.mkdir(parents=True)
    lines = ["all:", "  children:", "    warden_hosts:", "      hosts:"]
    for i in range(n):
        lines.append(f"        fbsd{i}:")
        lines.append(f"          warden_pool: 10.{i % 250}.0.0/16")
        if not group_vars:
            lines.append("          warden_ext_if: vtnet0")
    (root / "hosts.yml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if group_vars:
        (root / "group_vars").mkdir()
        (root / "group_vars" / "warden_hosts.yml").write_text("warden_ext_if: vtnet0\n", encoding="utf-8")
    return root / "hosts.yml"


def timed(path: Path, runs: int = 3) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CODE, str(path)], cwd=REPO, capture_output=True, text=True)
        best = min(best, time.perf_counter() - start)
        if done.returncode:
            raise SystemExit(done.stderr)
        out = done.stdout.strip()
    return best, out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        python = time.perf_counter() - start
        fast, fast_out = timed(write(Path(tmp) / "plain", n, group_vars=False))
        slow, slow_out = timed(write(Path(tmp) / "ansible", n, group_vars=True))
    print(f"inventory of {n} hosts (best of 3, fresh interpreter, imports included):")
    print(f"  python -c pass            {python:.3f} s")
    print(f"  fast path (plain YAML)    {fast:.3f} s   hosts, ext_if, ansible imported: {fast_out}")
    print(f"  Ansible (with group_vars) {slow:.3f} s   hosts, ext_if, ansible imported: {slow_out}")


if __name__ == "__main__":
    main()
