"""The README's first command ends with `invoke demo`: it must run from a fresh clone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def test_invoke_demo_runs_every_step_on_the_example(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISION_", "ANSIBLE_"))}
    env.update({"PROVISION_BUILD_DIR": str(tmp_path / "build"), "COLUMNS": "200"})
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("invoke add-agent iris", "invoke check", "invoke render", "invoke plan --host example"):
        assert step in result.stdout
    assert "plan exit status 2" in result.stdout
    assert (tmp_path / "build/demo/agents/iris/.env").is_file()
