"""The module warden.provision.actions (plugins/modules/actions.py) run as Ansible runs a module
(its args in a JSON file), locally."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import COLLECTION


def run(tmp_path: Path, actions: list[dict[str, Any]], check: bool = False) -> dict[str, Any]:
    args = tmp_path / "args.json"
    args.write_text(
        json.dumps({"ANSIBLE_MODULE_ARGS": {"actions": actions, "concern": "jails", "_ansible_check_mode": check}})
    )
    out = subprocess.run(
        [sys.executable, str(COLLECTION / "plugins/modules/actions.py"), str(args)],
        capture_output=True,
        text=True,
        check=False,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def warnings(result: dict[str, Any]) -> list[str]:
    """module.warn's messages (plain strings, or ansible-core 2.19's event objects)."""
    return [w if isinstance(w, str) else w["event"]["msg"] for w in result.get("warnings", [])]


def command(describe: str, argv: list[str], marker: dict[str, str] | None = None) -> dict[str, Any]:
    return {"concern": "jails", "describe": describe, "argv": argv, "env": {}, "marker": marker, "kind": "command"}


def test_runs_in_order_writes_markers_after_success_and_stops_at_the_first_failure(tmp_path: Path) -> None:
    log = tmp_path / "log"
    marker = {"path": str(tmp_path / "db/jails/a.ready"), "content": "h1\n"}
    late = {"path": str(tmp_path / "db/jails/b.ready"), "content": "h2\n"}
    result = run(
        tmp_path,
        [
            command("first", ["sh", "-c", f"echo 1 >> {log}"], marker),
            command("second", ["sh", "-c", "echo oops >&2; exit 7"]),
            command("third", ["sh", "-c", f"echo 3 >> {log}"], late),
        ],
    )
    assert result["failed"] and result["msg"] == "second failed (exit 7): oops"
    assert result["ran"] == ["first"] and log.read_text() == "1\n"
    assert Path(marker["path"]).read_text() == "h1\n" and not Path(late["path"]).exists()
    assert os.stat(marker["path"]).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "db").st_mode & 0o777 == 0o700  # parents made root-only too


def test_check_mode_runs_nothing_and_lists_every_action(tmp_path: Path) -> None:
    log = tmp_path / "log"
    edit = {"path": str(tmp_path / "jail.conf"), "pattern": "x", "replacement": "y"}
    actions = [
        command("create jail a: bastille create a", ["sh", "-c", f"echo 1 >> {log}"]),
        {"concern": "jails", "describe": "set the MAC", "kind": "edit", "edit": edit, "marker": None},
        {"concern": "jails", "describe": "jail b drifted", "kind": "warn", "marker": None},
    ]
    result = run(tmp_path, actions, check=True)
    assert result["changed"] and not log.exists()
    assert result["diff"]["after"] == "create jail a: bastille create a\nset the MAC\n"
    assert warnings(result) == ["jail b drifted"]
    only_warn = run(tmp_path, actions[2:])
    assert not only_warn["changed"] and warnings(only_warn) == ["jail b drifted"]


def test_an_edit_replaces_in_place_and_never_follows_a_symlink(tmp_path: Path) -> None:
    conf = tmp_path / "jail.conf"
    conf.write_text('  ifconfig e0b_a ether 00:11:22:33:44:55";\n')
    conf.chmod(0o640)
    edit = {
        "path": str(conf),
        "pattern": r"(ifconfig e0b_\S+ ether )[0-9a-fA-F:]+",
        "replacement": r"\g<1>0e:00:00:00:00:01",
    }
    act = {"concern": "jails", "describe": "set the MAC", "kind": "edit", "edit": edit, "marker": None}
    assert run(tmp_path, [act])["changed"]
    assert conf.read_text() == '  ifconfig e0b_a ether 0e:00:00:00:00:01";\n' and conf.stat().st_mode & 0o777 == 0o640
    target = tmp_path / "secret"
    target.write_text("ifconfig e0b_a ether 00:11:22:33:44:55\n")
    conf.unlink()
    conf.symlink_to(target)
    failed = run(tmp_path, [act])
    assert failed["failed"] and "cannot open" in failed["msg"]
    assert target.read_text() == "ifconfig e0b_a ether 00:11:22:33:44:55\n"
