"""The pre-image guard on whole-file edits of the operator's files (rc.conf, pf.conf, rctl.conf,
sysctl.conf): a file edited between the run's read and its write is never reverted."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.hostkit.testhost import TestHost

from .conftest import COLLECTION, Registry

MODULE = COLLECTION / "plugins" / "modules" / "files.py"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_module(tmp_path: Path, **args: Any) -> dict[str, Any]:
    """warden.provision.files (plugins/modules/files.py) as Ansible runs it: arguments in a JSON
    file, result on stdout."""
    argfile = tmp_path / "args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    result = subprocess.run(
        [sys.executable, str(MODULE), str(argfile)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def rc_entry(path: Path, content: str, expect: list[str]) -> dict[str, Any]:
    return {"path": str(path), "content": content, "mode": "0644", "keep_mode": True, "expect": expect}


def test_an_edit_made_after_the_read_is_refused_and_kept(tmp_path: Path) -> None:
    rc = tmp_path / "rc.conf"
    read = b'hostname="h"\n'
    rc.write_bytes(read)
    computed = 'hostname="h"\ngateway_enable="YES"\n'
    rc.write_bytes(read + b'sshd_enable="YES"\n')  # the operator's edit, after the read
    result = run_module(tmp_path, files=[rc_entry(rc, computed, [sha(read)])])
    assert result.get("failed") and not result.get("changed"), result
    assert result["msg"].startswith(f"{rc} changed on ") and "since this run read it" in result["msg"]
    assert "Nothing was written" in result["msg"] and "Fix: run again" in result["msg"]
    assert rc.read_bytes() == read + b'sshd_enable="YES"\n'


def test_a_file_created_after_the_read_is_refused(tmp_path: Path) -> None:
    rctl = tmp_path / "rctl.conf"
    rctl.write_text("user:bob:maxproc:deny=10\n")
    result = run_module(tmp_path, files=[rc_entry(rctl, "# managed\n", ["absent"])])
    assert result.get("failed") and rctl.read_text() == "user:bob:maxproc:deny=10\n"


def test_the_file_as_read_or_as_this_run_wrote_it_is_written(tmp_path: Path) -> None:
    """A second write in the same run finds the first write's result, which it expects too."""
    rc = tmp_path / "rc.conf"
    read = b'hostname="h"\n'
    rc.write_bytes(read)
    first = 'hostname="h"\ngateway_enable="YES"\n'
    second = first + 'pf_enable="YES"\n'
    expect = sorted({sha(read), sha(first.encode()), sha(second.encode())})
    assert run_module(tmp_path, files=[rc_entry(rc, first, expect)])["changed"]
    assert rc.read_text() == first
    assert run_module(tmp_path, files=[rc_entry(rc, second, expect)])["changed"]
    assert rc.read_text() == second
    absent = tmp_path / "sysctl.conf"
    assert run_module(tmp_path, files=[rc_entry(absent, "a=1\n", ["absent"])])["changed"]


def test_edited_files_expect_the_read_and_each_result_of_this_run(registry: Registry) -> None:
    import importlib.util

    # Loaded by path, as Ansible loads filter plugins (the directory is not a package).
    spec = importlib.util.spec_from_file_location("warden_filters", COLLECTION / "plugins/filter/warden.py")
    assert spec and spec.loader
    filters = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(filters)
    warden_edited_files, warden_frames = filters.warden_edited_files, filters.warden_frames
    from provision.cli import render
    from provision.remote import read_script

    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    assert render(settings=registry.settings()) == 0
    host_dir = str(registry.build / "fbsd1")
    root = registry.root / "host"
    (root / "etc").mkdir(parents=True)
    live_rc = b'hostname="h"\n\xff# not UTF-8\n'
    (root / "etc/rc.conf").write_bytes(live_rc)
    script = read_script(["/etc/rc.conf", "/etc/pf.conf"]).replace("/etc/", f"{root}/etc/")
    stdout = subprocess.run(["sh", "-s"], input=script.encode(), capture_output=True, check=True).stdout
    live = {k.replace(str(root), ""): v for k, v in warden_frames(stdout.decode("utf-8", "surrogateescape")).items()}
    held = {f["path"]: f for f in warden_edited_files(host_dir, live, hold_pf_enable=True)}
    full = {f["path"]: f for f in warden_edited_files(host_dir, live)}
    rc_held, rc_full = held["/etc/rc.conf"], full["/etc/rc.conf"]
    assert rc_held["expect"] == rc_full["expect"]
    assert set(rc_full["expect"]) == {
        sha(live_rc),  # the bytes read, not their UTF-8 decoding
        sha(rc_held["content"].encode()),
        sha(rc_full["content"].encode()),
    }
    assert full["/etc/pf.conf"]["expect"] == sorted({"absent", sha(full["/etc/pf.conf"]["content"].encode())})


@pytest.mark.e2e
def test_an_rc_conf_edit_made_mid_run_survives_and_the_run_stops(registry: Registry, testhost: TestHost) -> None:
    """The operator edits rc.conf while site.yml runs: after warden_network wrote it, before
    warden_pf adds pf_enable (a hook on the ruleset check, pfctl -n -f)."""
    from .test_ansible import playbook, setup

    setup(registry, testhost, names=("atlas",), jails="cms")
    pfctl = testhost.root / "sbin/pfctl"
    double = pfctl.read_text()
    pfctl.write_text(
        double.replace(
            "import freebsd\n",
            "import freebsd\nif sys.argv[1:3] == ['-n', '-f']:\n"
            "    open('/etc/rc.conf', 'a').write('operator_edit=\"YES\"\\n')\n",
        )
    )
    result = playbook(registry)
    assert result.returncode != 0
    assert "/etc/rc.conf changed on " in result.stdout and "since this run read it" in result.stdout
    rc = (testhost.root / "etc/rc.conf").read_text()
    assert 'operator_edit="YES"' in rc and "pf_enable" not in rc
    pfctl.write_text(double)
    again = playbook(registry)
    assert again.returncode == 0, again.stdout[-3000:]
    rc = (testhost.root / "etc/rc.conf").read_text()
    assert 'operator_edit="YES"' in rc and 'pf_enable="YES"' in rc
