"""Time `check` and `render` on generated registries of 1,000 and 10,000 agents (docs/design.md#quality-bars).

    python bench/bench_check_render.py [N ...]

A script, not a test: it prints the figures.  Agents are written the way add-agent
writes them (every derived key spelled out) and spread over hosts of 200 each, every
host with its own /16 pool (one /16 holds only 256 /24s).  Every 10th agent shares the
previous agent's ollama jail, every 50th lives in its own bhyve VM, so the shared-jail
and guest paths are timed too.  Files are on disk before the clock starts; the columns:

    load     inventory + every .env parsed and validated (provision/envfile.py, models)
    check    every fleet check (provision/checks.py)
    render   a fresh build/ written (templates, manifests, files)
    (pure)   of which computing: layouts, templates, manifests, no file written
    again    the same render over the previous build/ (what each `invoke plan` does)

Target: load + check + render of 1,000 agents under 1 s; 10,000 near-linear.
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
from provision.render import _env, layouts, render_fleet, render_layout

PER_HOST = 200


def generate(root: Path, n: int) -> None:
    hosts = (n + PER_HOST - 1) // PER_HOST
    inv = ["warden_hosts:", "  hosts:"]
    for h in range(hosts):
        inv += [
            f"    h{h}:",
            "      warden_ext_if: vtnet0",
            f"      warden_pool: 10.{h}.0.0/16",
            f"      warden_vm_uplink: 172.{16 + h // 256}.{h % 256}.0/24",
        ]
    (root / "hosts.yml").write_text("\n".join(inv) + "\n")
    for i in range(n):
        h, k = divmod(i, PER_HOST)
        name = f"a{i}"
        values = {
            "AGENT_NAME": name,
            "AGENT_SUBNET_BASE": f"10.{h}.{k}",
            "AGENT_HOST": f"h{h}",
            "CONTROLPLANE_API_PORT": str(3100 + k),
        }
        if k % 50 == 49:
            values["AGENT_PLACEMENT"] = "bhyve"
            values["WARDEN_VM_IP"] = f"172.{16 + h // 256}.{h % 256}.{10 + k // 50}"
        elif k % 10 == 9 and (k - 1) % 50 != 49:
            values["OLLAMA_JAIL_NAME"] = f"a{i - 1}ollama"  # share the previous agent's LLM jail
            values["WARDEN_OLLAMA_IP"] = f"10.{h}.{k - 1}.4"
        full = derive_defaults(values, None)
        items = [(key, full[key]) for key in OWNED_KEYS if key in full]
        EnvFile.new(root / "agents" / name / ".env", "bench", [*items, ("ANTHROPIC_API_KEY", "sk-bench")]).write()


def run(n: int) -> tuple[float, float, float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root, n)
        t0 = time.perf_counter()
        hosts, _ = load_inventory(root / "hosts.yml")
        fleet = load_fleet(root / "agents", hosts)
        t1 = time.perf_counter()
        problems = [p for p in run_checks(fleet) if p.is_error]
        t2 = time.perf_counter()
        assert not fleet.problems and not problems, (fleet.problems + problems)[:3]
        render_fleet(fleet, root / "build")
        t3 = time.perf_counter()
        render_fleet(fleet, root / "build")
        t4 = time.perf_counter()
        jenv = _env()
        for layout in layouts(fleet):
            render_layout(layout, jenv)[0].to_json()
        t5 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, t5 - t4, t4 - t3


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    base = None
    print(
        f"{'agents':>7} {'load s':>8} {'check s':>8} {'render s':>9} {'(pure)':>8} {'total s':>8} {'µs/agent':>9}"
        f" {'again s':>8}"
    )
    for n in sizes:
        load, check, render, pure, again = run(n)
        total = load + check + render
        per = total / n * 1e6
        base = base or per
        print(
            f"{n:>7} {load:>8.3f} {check:>8.3f} {render:>9.3f} {pure:>8.3f} {total:>8.3f} {per:>9.0f} {again:>8.3f}"
            f"   (x{per / base:.2f} per agent vs the first size)"
        )


if __name__ == "__main__":
    main()
