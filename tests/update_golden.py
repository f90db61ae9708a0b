"""Regenerate the golden files from the example fleet:

    python -m tests.update_golden

Review the resulting `git diff tests/golden` like any other change to rendered output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from provision.inventory import load_inventory
from provision.registry import load_fleet
from provision.render import LOCK_NAME, render_fleet

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "fleet"
GOLDEN = REPO / "tests" / "golden"


def render_example(out: Path) -> None:
    hosts, problems = load_inventory(EXAMPLE / "inventory" / "hosts.yml")
    assert not problems, problems
    fleet = load_fleet(EXAMPLE / "agents", hosts)
    assert not fleet.problems, fleet.problems
    render_fleet(fleet, out)
    (out / LOCK_NAME).unlink()  # render's lock on the build directory, not a rendered file


def main() -> None:
    shutil.rmtree(GOLDEN, ignore_errors=True)
    render_example(GOLDEN)
    print(f"wrote {sum(1 for p in GOLDEN.rglob('*') if p.is_file())} files under {GOLDEN}")


if __name__ == "__main__":
    main()
