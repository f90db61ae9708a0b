"""Time `check` and `render` on generated registries of 1,000 and 10,000 agents (SPEC §10).

    python bench/bench_check_render.py [N ...]

Agents are spread over hosts of 200 each (a /16 pool holds 256 /24s), written the way
add-agent writes them; the figures are wall-clock seconds of work, files already on disk.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provision.checks import run_checks
from provision.envfile import EnvFile
from provision.inventory import load_inventory
from provision.models import OWNED_KEYS, derive_defaults
from provision.registry import load_fleet
from provision.render import render_fleet

PER_HOST = 200


def generate(root: Path, n: int) -> None:
    hosts = (n + PER_HOST - 1) // PER_HOST
    inv = ["all:", "  hosts:"]
    for h in range(hosts):
        inv += [
            f"    h{h}:",
            "      warden_ext_if: vtnet0",
            f"      warden_pool: 10.{h}.0.0/16",
            f"      warden_vm_uplink: 172.16.{h % 256}.0/24",
        ]
    (root / "hosts.yml").write_text("\n".join(inv) + "\n")
    for i in range(n):
        h, k = divmod(i, PER_HOST)
        name = f"a{i}"
        values = derive_defaults(
            {
                "AGENT_NAME": name,
                "AGENT_SUBNET_BASE": f"10.{h}.{k}",
                "AGENT_HOST": f"h{h}",
                "CONTROLPLANE_API_PORT": str(3100 + k),
            },
            None,
        )
        EnvFile.new(
            root / "agents" / name / ".env", "bench", [(key, values[key]) for key in OWNED_KEYS if key in values]
        ).write()


def run(n: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root, n)
        t0 = time.perf_counter()
        hosts, _ = load_inventory(root / "hosts.yml")
        fleet = load_fleet(root / "agents", hosts)
        t1 = time.perf_counter()
        problems = [p for p in run_checks(fleet) if p.is_error]
        t2 = time.perf_counter()
        assert not problems, problems[:3]
        render_fleet(fleet, root / "build")
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    base = None
    print(f"{'agents':>7} {'load s':>8} {'check s':>8} {'render s':>9} {'total s':>8} {'µs/agent':>9}")
    for n in sizes:
        load, check, render = run(n)
        total = load + check + render
        per = total / n * 1e6
        base = base or per
        print(
            f"{n:>7} {load:>8.3f} {check:>8.3f} {render:>9.3f} {total:>8.3f} {per:>9.0f}"
            f"   (x{per / base:.2f} per agent vs the first size)"
        )


if __name__ == "__main__":
    main()
