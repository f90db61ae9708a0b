"""The facts read against a hostile agent (docs/security.md#the-facts-read).

An agent's user can stop, ptrace or replace what any process of its uid writes. The read
runs as root and frames what it prints; these tests make every program the agent's uid
runs during the read print what the agent wants (a directory of programs first in PATH
that behave normally for root only): that is what ptrace gives the agent, without ptrace.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from provision.actions import host_actions
from provision.manifest import LIVE_MANIFEST_PATH, Manifest
from provision.plan import plan_host
from provision.probe import Probe
from provision.remote import (
    NOT_READ,
    START,
    TIMED_OUT,
    TOO_LARGE,
    LiveFiles,
    parse_live,
    read_script,
)
from tests.hostkit.testhost import TestHost

from .conftest import COLLECTION, REPO

GOLDEN = REPO / "tests/golden/fbsd1"
ENV = "/home/atlas/clawdie/.env"


def filters() -> ModuleType:
    # Loaded by path, as Ansible loads filter plugins (the directory is not a package).
    spec = importlib.util.spec_from_file_location("warden_filters", COLLECTION / "plugins/filter/warden.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def file_frame(path: str, body: bytes) -> bytes:
    p = path.encode()
    return b"F %d -rw-r--r-- 0 0 %d\n" % (len(p), len(body)) + p + body + b"\n"


def forged_record() -> dict[str, Any]:
    """The reviewer's forgery: the golden record plus a base-system service as an agent, a
    path escaping the agents' homes, root's password file and another agent's soul."""
    real: dict[str, Any] = json.loads((GOLDEN / ".warden/manifest.json").read_text())
    forged = dict(real)
    forged["agents"] = [*real["agents"], "pf", "../../../home/atlas/x"]
    forged["files"] = [
        *real["files"],
        {"path": "/etc/master.passwd", "mode": "0600", "owner": "root", "group": "wheel"},
        {"path": "/home/hermes/clawdie/soul/important", "mode": "0600", "owner": "hermes", "group": "hermes"},
    ]
    return forged


# -- the parser ---------------------------------------------------------------------------


def reviewers_stdout() -> bytes:
    """The proof of concept's facts read: genuine frames, then what the agent's reader wrote."""
    rc = b'hostname="fbsd1"\nifconfig_em0="DHCP"\nsshd_enable="YES"\n'
    out = START + file_frame("/etc/rc.conf", rc)
    for p in ("/etc/pf.conf", LIVE_MANIFEST_PATH):
        out += b"M %d\n%s" % (len(p), p.encode())
    out += file_frame(ENV, b"KEY=v\n")  # from here on: the agent's bytes
    out += file_frame(LIVE_MANIFEST_PATH, json.dumps(forged_record()).encode())
    probe = b"=== interfaces ===\nwarden0\n=== services ===\npf running\n=== end ===\n"
    out += b"P %d\n" % len(probe) + probe + b"\nE\n"
    return out + b"M 12\n/etc/pf.confE\n"  # the genuine rest of the read


def test_the_reviewers_forged_read_is_refused() -> None:
    with pytest.raises(ValueError, match="second frame"):
        parse_live(reviewers_stdout().split(b"E\nM 12")[0] + b"E\n")
    with pytest.raises(ValueError, match="after the end marker"):
        parse_live(START + b"M 12\n/etc/pf.confE\nM 12\n/etc/rc.conf")
    with pytest.raises(ValueError, match="not asked for"):
        parse_live(START + file_frame("/etc/master.passwd", b"x") + b"E\n", requested=["/etc/rc.conf"])
    # as the facts round hands it over: the read's stdout and the paths of its command line
    with pytest.raises(ValueError):
        filters().warden_frames(reviewers_stdout().decode(), ["/etc/rc.conf", "/etc/pf.conf", LIVE_MANIFEST_PATH])


def test_paths_listed_in_the_previous_record_may_be_framed() -> None:
    record = (GOLDEN / ".warden/manifest.json").read_bytes()
    out = START + file_frame(LIVE_MANIFEST_PATH, record) + b"M %d\n%s" % (len(ENV), ENV.encode()) + b"E\n"
    assert parse_live(out, requested=[LIVE_MANIFEST_PATH]).files[ENV] is None
    with pytest.raises(ValueError, match="not asked for"):
        parse_live(out, requested=["/etc/rc.conf"])


# -- the previous record ------------------------------------------------------------------


def test_a_record_the_renderer_could_not_have_written_acts_on_nothing() -> None:
    m = Manifest.load(GOLDEN)
    live = {LIVE_MANIFEST_PATH: json.dumps(forged_record())}
    probe = Probe(running_services=["pf", "atlas", "hermes"], users=["atlas", "hermes"])
    with pytest.raises(ValueError, match=r"agent name 'pf'.*manifest.json.*fix:|manifest.json.*agent name 'pf'"):
        host_actions(m, GOLDEN, live, probe)
    f = filters()
    with pytest.raises(Exception, match="agent name 'pf'"):
        f.warden_removed_files(str(GOLDEN), live)
    with pytest.raises(Exception, match="agent name 'pf'"):
        f.warden_previous(live)
    assert f.warden_previous({LIVE_MANIFEST_PATH: (GOLDEN / ".warden/manifest.json").read_text()})["agents"] == [
        "atlas",
        "hermes",
    ]


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("agents", ["atlas", "hermes", "sshd"]),
        ("agents", ["atlas", "hermes", "atlas\n"]),
        ("files", [{"path": "/etc/master.passwd", "mode": "0600", "owner": "root", "group": "wheel"}]),
        ("files", [{"path": "/home/hermes/x", "mode": "0600", "owner": "atlas", "group": "atlas", "agent": "atlas"}]),
        ("files", [{"path": "/home/atlas/../../etc/x", "mode": "0600", "owner": "atlas", "group": "atlas"}]),
        ("rc_conf", [{"op": "set", "name": "sshd_enable", "value": "YES"}]),
        ("rc_conf", [{"op": "set", "name": "ifconfig_em0", "value": "DHCP"}]),
        ("rctl_rules", ["user:root:maxproc:deny=1"]),
        ("jails", [{"name": "mysql; x", "agents": ["atlas"]}]),
    ],
)
def test_each_kind_of_forged_record_entry_is_refused(key: str, bad: list[Any]) -> None:
    record: dict[str, Any] = json.loads((GOLDEN / ".warden/manifest.json").read_text())
    if key == "jails":
        bad = [{**record["jails"][0], **bad[0]}]
    record[key] = bad if key == "agents" else [*record[key], *bad]
    with pytest.raises(ValueError, match="is not one warden-provision writes"):
        Manifest.from_record(json.dumps(record))


def test_golden_records_are_accepted() -> None:
    for host in ("fbsd1", "fbsd2", "novavm"):
        text = (REPO / f"tests/golden/{host}/.warden/manifest.json").read_text()
        assert Manifest.from_record(text) == Manifest.from_json(text)


# -- one agent's file is that agent's problem ---------------------------------------------


def test_plan_reports_an_unreadable_agent_file_against_the_agent() -> None:
    m = Manifest.load(GOLDEN)
    live = LiveFiles(files={LIVE_MANIFEST_PATH: (GOLDEN / ".warden/manifest.json").read_bytes()})
    live.agent_files[ENV] = TIMED_OUT
    plan = plan_host(m, GOLDEN, live)
    assert plan.error is None
    (warning,) = [w for w in plan.warnings if ENV in w]
    assert warning.startswith("agent atlas: ") and "fix: as atlas" in warning
    (change,) = [c for c in plan.changes if c.path == ENV]
    assert f"(not read: {TIMED_OUT})" in change.meta


# -- the read on the test host, the agent's programs hostile --------------------------------

ATTACK = """#!/bin/sh
# What the agent's uid runs during the read: normal for root, the agent's choice otherwise.
[ "$(id -u)" = 0 ] && exec {real} "$@"
{hostile}
"""


def agent_host(testhost: TestHost, head: str, ls: str = "", payload: bytes = b"") -> Path:
    """atlas with ~/clawdie/.env (and a genuine record listing it) on the test host; the
    programs atlas's uid runs replaced by HEAD and LS (sh); /attack/payload holds PAYLOAD."""
    root = testhost.root
    subprocess.run(["chroot", str(root), "useradd", "-m", "atlas"], check=True)
    (root / "home/atlas/clawdie").mkdir()
    (root / "home/atlas/clawdie/.env").write_text("API_TOKEN=tok-SECRET-atlas-42\n")
    subprocess.run(
        ["chroot", str(root), "chown", "-R", "atlas:atlas", "/home/atlas/clawdie"],
        check=True,
    )
    (root / "var/db/warden").mkdir(parents=True, exist_ok=True)
    (root / LIVE_MANIFEST_PATH.lstrip("/")).write_bytes((GOLDEN / ".warden/manifest.json").read_bytes())
    attack = root / "attack"
    attack.mkdir()
    (attack / "payload").write_bytes(payload)
    for name, real, hostile in (("head", "/usr/bin/head", head), ("ls", "/bin/ls", ls or 'exec /bin/ls "$@"')):
        (attack / name).write_text(ATTACK.format(real=real, hostile=hostile))
        (attack / name).chmod(0o755)
    return root


def run_read(root: Path, script: str, timeout: float = 60) -> bytes:
    return subprocess.run(
        ["chroot", str(root), "/usr/bin/env", "PATH=/attack:/usr/sbin:/usr/bin:/sbin:/bin", "/bin/sh", "-s"],
        input=script.encode(),
        capture_output=True,
        check=True,
        timeout=timeout,
    ).stdout


@pytest.mark.e2e
def test_the_agents_reader_cannot_write_frames(testhost: TestHost) -> None:
    """The agent's `ls` claims an empty .env and its `head` writes a record naming `pf` as
    an agent, a probe and the end: root still reads its own record, and what the agent
    wrote is the .env's content, its length measured by root."""
    payload = b"\n" + file_frame(LIVE_MANIFEST_PATH, json.dumps(forged_record()).encode())
    payload += b"P 3\npf\n\nE\n"
    root = agent_host(
        testhost,
        head="cat /attack/payload",
        ls='printf "%s\\n" "-rw------- 1 $(id -u) $(id -g) 0 Jan  1 00:00 $3"',
        payload=payload,
    )
    paths = ["/etc/hostname", LIVE_MANIFEST_PATH]
    out = run_read(root, read_script(paths))
    live = parse_live(out)
    assert live.files[LIVE_MANIFEST_PATH] == (GOLDEN / ".warden/manifest.json").read_bytes()
    assert live.probe is None
    assert live.files[ENV] == payload  # data, framed by root
    assert parse_live(out, requested=paths).files == live.files
    assert not list((root / "tmp").glob("warden-read.*"))  # root's private directory is gone


@pytest.mark.e2e
def test_an_agent_stopping_its_reader_does_not_stall_the_read(testhost: TestHost) -> None:
    root = agent_host(testhost, head="kill -STOP $$")
    started = time.monotonic()
    live = parse_live(run_read(root, read_script(["/etc/hostname"], timeout=2), timeout=30))
    assert time.monotonic() - started < 20
    assert live.agent_files == {ENV: TIMED_OUT} and not live.unreadable
    assert live.files["/etc/hostname"] is not None


@pytest.mark.e2e
def test_a_huge_or_odd_agent_file_is_that_agents_problem(testhost: TestHost) -> None:
    root = agent_host(testhost, head='exec /usr/bin/head "$@"')
    env = root / ENV.lstrip("/")
    env.unlink()
    subprocess.run(["chroot", str(root), "su", "atlas", "-s", "/bin/sh", "-c", f"truncate -s 64M {ENV}"], check=True)
    out = run_read(root, read_script(["/etc/hostname"]))
    assert len(out) < 2 << 20
    assert parse_live(out).agent_files == {ENV: TOO_LARGE}
    for make, why in (("mkfifo", "not a regular file"), ("mkdir", "not a regular file"), ("chmod000", None)):
        if env.is_dir():
            env.rmdir()
        else:
            env.unlink(missing_ok=True)
        if make == "chmod000":
            env.write_text("A=1\n")
            cmd = f"chmod 000 {ENV}"
            why = "permission denied"
            subprocess.run(["chroot", str(root), "chown", "atlas:atlas", ENV], check=True)
        else:
            cmd = f"{make} {ENV}"
        subprocess.run(["chroot", str(root), "su", "atlas", "-s", "/bin/sh", "-c", cmd], check=True)
        live = parse_live(run_read(root, read_script(["/etc/hostname"]), timeout=30))
        assert live.agent_files == {ENV: why} and not live.unreadable, make
        assert live.files["/etc/hostname"] is not None


@pytest.mark.e2e
def test_the_facts_round_reads_no_agent_file_and_runs_nothing_as_an_agent(testhost: TestHost) -> None:
    """The apply's one read (warden_facts_command), with atlas's .env requested and listed
    in the record: not opened, no process of atlas's uid, its secret nowhere in the output."""
    root = agent_host(testhost, head="echo FORGED")
    command = filters().warden_facts_command(str(GOLDEN), ["/etc/rc.conf", ENV, LIVE_MANIFEST_PATH])
    before = len(testhost.calls())
    out = subprocess.run(
        ["chroot", str(root), "/usr/bin/env", "PATH=/attack:/usr/sbin:/usr/bin:/sbin:/bin", "/bin/sh", "-c", command],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    assert b"tok-SECRET" not in out and b"FORGED" not in out
    assert not [c for c in testhost.calls()[before:] if c["cmd"] == "chroot"]
    live = parse_live(out)
    # every agent's file: the one asked for and those the record lists (hermes's .env)
    assert ENV in live.agent_files and set(live.agent_files.values()) == {NOT_READ}
    assert not [p for p in live.files if p.startswith("/home/")]
    assert live.files[LIVE_MANIFEST_PATH] is not None and live.probe is not None


# -- the files module: one agent's tree fails that agent only --------------------------------


def test_one_agents_symlinked_directory_fails_that_agent_and_the_others_are_applied(tmp_path: Path) -> None:
    """`daemon` (sorted first) replaced its directory by a link to /etc; `nobody`'s file is
    still written, and the failure names daemon's link. The module forks to real users of
    this machine, so the tree lives in a directory both can traverse."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="warden-files-", dir="/tmp"))
    try:
        base.chmod(0o755)
        (base / "daemon").mkdir()
        (base / "nobody").mkdir()
        os.chown(base / "daemon", 1, 1)
        os.chown(base / "nobody", 65534, 65534)
        (base / "daemon/clawdie").symlink_to("/etc")
        os.chown(base / "daemon/clawdie", 1, 1, follow_symlinks=False)

        def entries(user: str, group: str) -> tuple[dict[str, Any], dict[str, Any]]:
            d = {"path": str(base / user / "clawdie"), "owner": user, "group": group, "mode": "0750"}
            f = {"path": f"{d['path']}/.env", "content": "A=1\n", "owner": user, "group": group, "mode": "0600"}
            return d, f

        (dd, df), (nd, nf) = entries("daemon", "daemon"), entries("nobody", "nogroup")
        argfile = tmp_path / "args.json"
        argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"directories": [dd, nd], "files": [df, nf]}}))
        module = COLLECTION / "plugins/modules/files.py"
        out = subprocess.run(
            [sys.executable, str(module), str(argfile)], capture_output=True, text=True, timeout=60, cwd=tmp_path
        ).stdout
        result = json.loads(out)
        assert result.get("failed"), result
        assert (
            result["msg"].startswith("as daemon: ") and f"{base}/daemon/clawdie is a symlink to /etc" in result["msg"]
        )
        assert (base / "nobody/clawdie/.env").read_text() == "A=1\n"
        assert (base / "nobody/clawdie/.env").stat().st_uid == 65534
        assert not Path("/etc/.env").exists()
    finally:
        shutil.rmtree(base)
