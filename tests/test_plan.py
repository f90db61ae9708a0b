"""`invoke plan` against a real sshd on loopback (tests/hostkit), read with real paramiko."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from provision import remote
from provision.cli import plan_command
from provision.hostfiles import EDITED, edited_results, pf_conf_result
from provision.manifest import LIVE_MANIFEST_PATH, Manifest
from provision.models import DEFAULT_RELEASE
from provision.pfconf import section_order_errors
from provision.plan import MASK
from provision.settings import Settings
from tests.hostkit.testhost import TestHost

from .conftest import REPO, Registry

pytestmark = pytest.mark.e2e

OPERATOR_RC = 'hostname="fbsd1.home.arpa"\n# my own comment\ncloned_interfaces="lo1"\nsshd_enable="YES"\n'
TOKEN = "sk-ant-SECRET-{}-0123456789"
NOVA = "AGENT_NAME=nova\nAGENT_SUBNET_BASE=10.0.7\nAGENT_HOST=fbsd1\nAGENT_PLACEMENT=bhyve\nWARDEN_VM_IP=10.255.0.10\n"


def setup(reg: Registry, host: TestHost, names: tuple[str, ...] = ("atlas",), extra_hosts: str = "") -> None:
    host.write_ssh_config(reg.root / "ssh_config", "fbsd1")
    reg.write_inventory(f"warden_hosts:\n  hosts:\n    fbsd1:\n      warden_ext_if: vtnet0\n{extra_hosts}")
    for i, name in enumerate(names, start=1):
        add_agent(reg, name, i)
    (host.root / "etc/rc.conf").write_text(OPERATOR_RC)


def add_agent(reg: Registry, name: str, i: int, extra: str = "") -> None:
    reg.write_env(
        name,
        f"AGENT_NAME={name}\nAGENT_SUBNET_BASE=10.0.{i}\nAGENT_HOST=fbsd1\nCONTROLPLANE_API_PORT={3099 + i}\n"
        f"ANTHROPIC_API_KEY={TOKEN.format(name)}\n{extra}",
    )


Plan = Callable[..., tuple[int, str, str]]


@pytest.fixture
def plan(registry: Registry, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Plan:
    """plan_command in this process: (exit status, stdout, stderr), one call's worth."""
    monkeypatch.setenv("PROVISION_SSH_CONFIG", str(registry.root / "ssh_config"))
    monkeypatch.setenv("COLUMNS", "200")

    def run(host: str | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        status = plan_command(registry.settings(), host)
        out, err = capsys.readouterr()
        return status, out, err

    return run


def apply_like_ansible(reg: Registry, host: TestHost, name: str = "fbsd1") -> None:
    """What an apply leaves on the host: the rendered files, the edited files, the record."""
    rendered = reg.build / name
    manifest = Manifest.load(rendered)
    root = host.root
    previous_path = root / LIVE_MANIFEST_PATH.lstrip("/")
    previous = Manifest.from_json(previous_path.read_text()) if previous_path.exists() else None
    for entry in previous.files if previous else []:
        if entry.path not in {e.path for e in manifest.files}:
            (root / entry.path.lstrip("/")).unlink(missing_ok=True)
    for entry in manifest.files:
        target = root / entry.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(rendered / entry.path.lstrip("/"), target)
        target.chmod(int(entry.mode, 8))
    files = {path: root / path.lstrip("/") for path in EDITED}
    live = {path: f.read_text() if f.exists() else None for path, f in files.items()}
    for path, text in edited_results(manifest, live, previous).items():
        files[path].write_text(text)
        files[path].chmod(int(EDITED[path], 8))
    previous_path.parent.mkdir(parents=True, exist_ok=True)
    previous_path.write_text(manifest.to_json())


def diff_lines(out: str, sign: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith(sign) and not ln.startswith(sign * 3)]


def section(out: str, path: str) -> str:
    """One file's diff: from its header line to the next file's header."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.split("  ")[0].endswith(f": {path}"))
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith(("added: ", "changed: ", "removed: ", "─"))),
        len(lines),
    )
    return "\n".join(lines[start:end])


def headers(out: str) -> set[str]:
    return {ln.split("  ")[0] for ln in out.splitlines() if ln.startswith(("added: ", "changed: ", "removed: "))}


def test_fresh_host_shows_everything_added_and_exits_2(registry: Registry, testhost: TestHost, plan: Plan) -> None:
    setup(registry, testhost)
    before = (remote.STATS.connections, remote.STATS.channels)
    status, out, err = plan("fbsd1")
    assert status == 2, err
    assert "added: /usr/local/etc/rc.d/atlas  0755 root:wheel" in out
    assert "added: /home/atlas/clawdie/.env  0600 atlas:atlas" in out
    assert "--- live:/etc/rc.conf\n+++ rendered:/etc/rc.conf" in out
    assert '+atlas_enable="YES"' in out
    assert '+cloned_interfaces="lo1 bridge0"' in out and '-cloned_interfaces="lo1"' in out
    assert '+nat-anchor "warden"  # warden-provision' in out
    # the operator's pf.conf gets our lines, and keeps its own mode and owner
    assert "changed: /etc/pf.conf" in out and "changed: /etc/pf.conf  mode" not in out
    assert "changes pending on fbsd1 (exit 2)" in out
    # one SSH connection and one exec channel for the whole host (docs/design.md#quality-bars)
    assert testhost.connection_count() == 1
    assert (remote.STATS.connections, remote.STATS.channels) == (before[0] + 1, before[1] + 1)
    assert testhost.log.read_text().count("Starting session: command") == 1


def test_provisioned_files_have_no_diff_and_the_live_state_still_needs_its_actions(
    registry: Registry, testhost: TestHost, plan: Plan
) -> None:
    """Files alone are not an apply: nothing runs yet (no bridge, no jail, PF off), so the
    actions section lists what the apply would still run (docs/convergence.md); exit 0 after
    a real apply is tested in tests/test_converge.py."""
    setup(registry, testhost, names=("atlas", "iris"))
    assert plan()[0] == 2
    apply_like_ansible(registry, testhost)
    status, out, _ = plan()
    assert status == 2, out
    assert "no changes" in out and not diff_lines(out, "+") and not diff_lines(out, "-")
    actions = out.split("\nactions\n", 1)[1]
    assert "jails: create jail atlascms: bastille create" in actions
    assert "pf: start PF with confirm-or-rollback: service pf onestart" in actions
    assert "agents: start agent iris: service iris start" in actions
    assert testhost.connection_count() == 2  # one per plan: the probe rides in the same round


def test_one_more_agent_shows_exactly_that_agents_lines(registry: Registry, testhost: TestHost, plan: Plan) -> None:
    setup(registry, testhost)
    plan()
    apply_like_ansible(registry, testhost)
    registry.write_env(
        "iris", "AGENT_NAME=iris\nAGENT_SUBNET_BASE=10.0.2\nAGENT_HOST=fbsd1\nCONTROLPLANE_API_PORT=3101\n"
    )
    status, out, _ = plan()
    assert status == 2
    iris = {
        "/home/iris/clawdie/.env",
        "/usr/local/libexec/warden/run-iris.sh",
        "/usr/local/etc/rc.d/iris",
        "/usr/local/etc/warden/jails/iriscms.conf",
        "/usr/local/etc/warden/jails/irisdb.conf",
        "/usr/local/etc/warden/jails/irisgit.conf",
        "/usr/local/etc/warden/jails/irisollama.conf",
    }
    changed = {
        "/etc/pf.warden.conf",
        "/etc/pf.warden-fallback.conf",  # it refuses SSH from every agent network
        "/etc/rc.conf",
        "/usr/local/etc/newsyslog.conf.d/warden.conf",
    }
    assert headers(out) == {f"added: {p}" for p in iris} | {f"changed: {p}" for p in changed}
    rc = section(out, "/etc/rc.conf")
    plus = diff_lines(rc, "+")
    assert [ln for ln in plus if not ln.startswith("+static_arp")] == [
        '+ifconfig_warden0_alias0="inet 10.0.2.1/24"',
        '+iris_enable="YES"',
    ]
    # iris's jails pinned at boot (docs/isolation.md): its pairs appended, one value each
    roles = ("git", "cms", "ollama", "db")
    pinned = {ln.split("=")[0]: ln for ln in plus if ln.startswith("+static_arp_warden_")}
    assert set(pinned) == {f"+static_arp_warden_iris{r}" for r in roles}
    assert all('="10.0.2.' in ln for ln in pinned.values())
    (before,) = diff_lines(rc, "-")
    (after,) = [ln for ln in plus if ln.startswith("+static_arp_pairs=")]
    assert after.split('"')[1] == " ".join([before.split('"')[1], *(f"warden_iris{r}" for r in roles)])
    pf = section(out, "/etc/pf.warden.conf")
    assert diff_lines(pf, "+") and all("10.0.2." in ln or "iris" in ln for ln in diff_lines(pf, "+"))
    assert all("10.0.2." not in ln for ln in diff_lines(pf, "-"))  # only lines widened to take iris in
    assert "│ fbsd1 │ 7     │ 4       │ 0       │ iris" in out


def test_removed_agent_shows_its_files_removed_and_its_lines_dropped(
    registry: Registry, testhost: TestHost, plan: Plan
) -> None:
    setup(registry, testhost, names=("atlas", "iris"))
    plan()
    apply_like_ansible(registry, testhost)
    shutil.rmtree(registry.agents / "iris")
    status, out, err = plan()
    assert status == 2
    assert "removed: /usr/local/etc/rc.d/iris" in out and "removed: /home/iris/clawdie/.env" in out
    assert f"-ANTHROPIC_API_KEY={MASK}" in out and TOKEN.format("iris") not in out + err
    assert '-iris_enable="YES"' in out and '-ifconfig_warden0_alias0="inet 10.0.2.1/24"' in out
    assert "│ -            │ iris" in out


def test_hand_edited_rc_conf_keeps_the_operators_lines(registry: Registry, testhost: TestHost, plan: Plan) -> None:
    setup(registry, testhost)
    plan()
    apply_like_ansible(registry, testhost)
    rc = testhost.root / "etc/rc.conf"
    rc.write_text(rc.read_text().replace("# my own comment\n", '# my own comment\nntpd_enable="YES"\n'))
    status, out, _ = plan()
    # the operator's new line is theirs: no file to change (the live state still needs its
    # actions: apply_like_ansible wrote files only)
    assert "no changes" in out and not diff_lines(out, "+") and not diff_lines(out, "-"), out
    rc.write_text(rc.read_text().replace('atlas_enable="YES"', 'atlas_enable="NO"'))
    status, out, _ = plan()
    assert status == 2
    assert diff_lines(out, "-") == ['-atlas_enable="NO"'] and diff_lines(out, "+") == ['+atlas_enable="YES"']
    assert '-ntpd_enable="YES"' not in out  # kept, never removed


def test_secrets_never_appear_in_any_output(registry: Registry, testhost: TestHost, plan: Plan) -> None:
    setup(registry, testhost)
    add_agent(registry, "atlas", 1, "DATABASE_URL=postgres://atlas:pg-SECRET-pw@db/atlas\n")
    status, out, err = plan()
    assert status == 2
    assert f"+ANTHROPIC_API_KEY={MASK}" in out and f"+DATABASE_URL={MASK}" in out
    apply_like_ansible(registry, testhost)
    env = testhost.root / "home/atlas/clawdie/.env"
    env.write_text(env.read_text().replace(TOKEN.format("atlas"), "sk-ant-SECRET-rotated-by-hand"))
    status, out2, err2 = plan()
    assert status == 2  # a secret that differs is a change ...
    assert f"-ANTHROPIC_API_KEY={MASK}\n+ANTHROPIC_API_KEY={MASK}" in out2  # ... shown masked
    for text in (out, err, out2, err2):
        assert "SECRET" not in text


def test_a_file_whose_mode_drifted_is_a_change(registry: Registry, testhost: TestHost, plan: Plan) -> None:
    setup(registry, testhost)
    plan()
    apply_like_ansible(registry, testhost)
    (testhost.root / "home/atlas/clawdie/.env").chmod(0o644)
    status, out, _ = plan()
    assert status == 2
    assert "changed: /home/atlas/clawdie/.env  mode 0644 → 0600" in out


def test_a_wrong_host_key_is_refused_with_one_line_naming_the_host(
    registry: Registry, testhost: TestHost, plan: Plan, tmp_path: Path
) -> None:
    setup(registry, testhost)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    testhost.known_hosts.write_text(f"[127.0.0.1]:{testhost.port} " + (tmp_path / "k.pub").read_text())
    status, _, err = plan()
    assert status == 1
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: fbsd1: the host key of 127.0.0.1:{testhost.port} does not match known_hosts")
    assert "refusing" in line and "ssh-keygen -R" in line


def test_an_unknown_host_key_is_refused_not_accepted(registry: Registry, testhost: TestHost, plan: Plan) -> None:
    setup(registry, testhost)
    testhost.known_hosts.write_text("")
    status, _, err = plan()
    assert status == 1 and "fbsd1: 127.0.0.1" in err and "not in known_hosts" in err and "ssh-keyscan" in err
    assert testhost.known_hosts.read_text() == ""


def test_an_unreachable_host_is_one_line_and_others_are_still_planned(
    registry: Registry, testhost: TestHost, plan: Plan
) -> None:
    dead = "    fbsd9:\n      warden_ext_if: vtnet0\n      ansible_host: 127.0.0.1\n      ansible_port: 1\n"
    setup(registry, testhost, extra_hosts=dead)
    status, out, err = plan()
    assert status == 1
    [line] = err.strip().splitlines()
    assert line.startswith("error: fbsd9: cannot connect to 127.0.0.1:1")
    assert "added: /usr/local/etc/rc.d/atlas" in out  # fbsd1 was planned
    assert "could not plan fbsd9 (exit 1)" in out


def test_a_file_the_ssh_user_cannot_read_is_an_error_naming_host_file_and_fix(
    registry: Registry, testhost: TestHost, plan: Plan
) -> None:
    setup(registry, testhost)
    with (testhost.root / "etc/passwd").open("a") as fh:
        fh.write("planner:x:1500:1500::/tmp:/bin/sh\n")
    (testhost.root / "etc/pf.conf").chmod(0o600)
    registry.write_inventory(
        "warden_hosts:\n  hosts:\n    fbsd1:\n      warden_ext_if: vtnet0\n      ansible_user: planner\n"
    )
    status, _, err = plan()
    assert status == 1
    [line] = err.strip().splitlines()
    assert line.startswith("error: fbsd1: cannot read /etc/pf.conf as planner: permission denied")
    assert "ansible_become" in line


def test_unknown_host_option_is_an_error_listing_the_hosts(registry: Registry, testhost: TestHost, plan: Plan) -> None:
    setup(registry, testhost)
    status, _, err = plan("nosuch")
    assert status == 1 and "no host 'nosuch'" in err and "fbsd1" in err


def test_a_bhyve_guest_with_ssh_settings_is_planned_through_its_host(
    registry: Registry, testhost_factory: Callable[[str], TestHost], plan: Plan
) -> None:
    host, guest = testhost_factory("host"), testhost_factory("guest")
    setup(registry, host)
    registry.write_env("nova", NOVA)
    guest.write_ssh_config(registry.root / "ssh_config", "novavm")
    with (registry.root / "ssh_config").open("a") as fh:
        fh.write("  ProxyJump fbsd1\n")  # the guest's uplink is reached through its host
    status, out, err = plan()
    assert status == 2, err
    assert "host novavm" in out and "added: /usr/local/etc/rc.d/nova" in out
    assert host.connection_count() == 2  # its own plan, and the jump to the guest
    assert guest.connection_count() == 1
    status, out, err = plan("novavm")
    assert status == 2 and "─ host novavm ─" in out and "─ host fbsd1 ─" not in out


def test_a_guest_its_host_cannot_reach_is_one_line_naming_the_guest(
    registry: Registry, testhost: TestHost, plan: Plan
) -> None:
    setup(registry, testhost)
    registry.write_env("nova", NOVA)
    with (registry.root / "ssh_config").open("a") as fh:
        fh.write("Host novavm\n  HostName 127.0.0.1\n  Port 1\n  ProxyJump fbsd1\n")
    status, out, err = plan()
    assert status == 1 and "host fbsd1" in out
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: novavm: jump host 127.0.0.1:{testhost.port} could not reach 127.0.0.1:1")


def test_a_bhyve_guest_without_ssh_settings_is_listed_as_not_planned(
    registry: Registry, testhost: TestHost, plan: Plan
) -> None:
    setup(registry, testhost)
    registry.write_env("nova", NOVA)
    status, out, _ = plan()
    assert status == 2 and "not planned: novavm (bhyve guest on fbsd1, no `Host novavm` block" in out
    # the guest the host would create (docs/freebsd.md#vm-bhyve): image, size, address
    assert (
        f"fbsd1: guest novavm to be created: image FreeBSD-{DEFAULT_RELEASE}-amd64-BASIC-CLOUDINIT-ufs.raw, "
        "disk 20G, memory 2G, 2 cpu(s), address 10.255.0.10; started at boot after pf by rc.d/warden_guests"
    ) in out
    status, _, err = plan("novavm")
    assert status == 1 and "error: novavm: cannot plan a bhyve guest on fbsd1" in err


def test_the_bundled_example_host_is_read_from_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    agents = tmp_path / "agents"
    (agents / "atlas").mkdir(parents=True)
    (agents / "atlas/.env").write_text("AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nAGENT_HOST=example\n")
    settings = Settings(agents, REPO / "inventory/hosts.yml", tmp_path / "build", tmp_path / "cache")
    before = remote.STATS.connections
    assert plan_command(settings, "example") == 2
    out = capsys.readouterr().out
    assert remote.STATS.connections == before  # no SSH at all
    assert "--- live:/etc/rc.conf" in out and '+cloned_interfaces="lo1 bridge0"' in out
    pf = (REPO / "examples/host/etc/pf.conf").read_text()
    manifest = Manifest.load(tmp_path / "build/example")
    assert section_order_errors(pf) == [] and section_order_errors(pf_conf_result(manifest, pf)) == []


def test_invoke_plan_runs_from_the_command_line(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost)
    env = {**os.environ, **registry.env(), "PROVISION_SSH_CONFIG": str(registry.root / "ssh_config")}
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "plan", "--host", "fbsd1"],
        cwd=REPO,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "added: /usr/local/etc/rc.d/atlas" in result.stdout
    assert "SECRET" not in result.stdout + result.stderr
    assert testhost.connection_count() == 1
