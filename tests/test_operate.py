"""`invoke doctor` and `invoke status` against the SSH test host, good and broken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provision.doctor import evaluate, layer2_pins
from provision.models import Host, bridge_mac
from tests.hostkit.testhost import TestHost

from .conftest import REPO, Registry
from .test_ansible import playbook

pytestmark = pytest.mark.e2e


def inventory(reg: Registry, host: TestHost) -> None:
    ssh_config = reg.root / "ssh_config"
    host.write_ssh_config(ssh_config, "fbsd1")
    reg.inventory.write_text(
        yaml.safe_dump({"warden_hosts": {"hosts": {"fbsd1": {"warden_ext_if": "vtnet0", **host.ansible_vars()}}}})
    )


def invoke(reg: Registry, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **reg.env(), "PROVISION_SSH_CONFIG": str(reg.root / "ssh_config"), "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def make_healthy(host: TestHost) -> None:
    rc = host.root / "etc/rc.conf"
    rc.write_text(rc.read_text() + 'gateway_enable="YES"\npf_enable="YES"\n')
    subprocess.run(["chroot", str(host.root), "pfctl", "-e"], check=True, capture_output=True)
    # what site.yml sets for the anchor's epair rules (docs/isolation.md)
    subprocess.run(
        ["chroot", str(host.root), "sysctl", "net.link.bridge.pfil_local_phys=1"], check=True, capture_output=True
    )


def test_doctor_passes_on_a_prepared_host(registry: Registry, testhost: TestHost) -> None:
    inventory(registry, testhost)
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    make_healthy(testhost)
    result = invoke(registry, "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("[ OK ]") >= 12 and "[FAIL]" not in result.stdout
    assert testhost.connection_count() == 1


def test_doctor_names_each_failure_and_its_fix(registry: Registry, testhost: TestHost) -> None:
    inventory(registry, testhost)
    # 192.0.2.0/24 is the double's vtnet0 network: an agent there overlaps the host's own network.
    registry.write_env(
        "atlas",
        "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nAGENT_MEMORY_LIMIT=1G\n"
        "AGENT_PLACEMENT=bhyve\nWARDEN_VM_IP=10.255.0.10\n",
    )
    state = testhost.root / "usr/local/bastille/releases/14.3-RELEASE"
    state.rmdir()
    (testhost.root / "etc/devfs.rules").unlink()
    subprocess.run(
        ["chroot", str(testhost.root), "sysctl", "kern.racct.enable=0", "kern.features.vimage=0"],
        check=True,
        capture_output=True,
    )
    result = invoke(registry, "doctor")
    assert result.returncode == 1
    expected = {
        "Bastille release 14.3-RELEASE bootstrapped": "bastille bootstrap 14.3-RELEASE",
        "VIMAGE in the kernel": "options VIMAGE",
        "devfs ruleset 13 for VNET jails": "[bastille_vnet=13]",
        "gateway_enable": "sysrc gateway_enable=YES",
        "PF enabled": "service pf start",
        "kern.racct.enable": "kern.racct.enable=1' >> /boot/loader.conf",
        "vm-bhyve initialised": "vm init",
    }
    lines = result.stdout.splitlines()
    for name, fix in expected.items():
        i = next(i for i, ln in enumerate(lines) if ln.startswith("[FAIL]") and name in ln)
        assert fix in lines[i + 1], (name, lines[i + 1])


def facts(**over: str) -> str:
    base = {
        "version": "14.3-RELEASE",
        "kernel": "14.3-RELEASE-p2",
        "python": "/usr/local/bin/python3",
        "bastille": "/usr/local/bin/bastille",
        "release": "yes",
        "vimage": "1",
        "devfs": "[bastille_vnet=13]",
        "bridge": "loaded",
        "gateway": "YES",
        "pf": "Status: Enabled",
        "pfconf": "ok",
        "racct": "1",
        "packages": "bastille\ngit\nnode\ntmux",
        "bridgesysctl": "net.link.bridge.pfil_onlyip: 1\nnet.link.bridge.pfil_member: 1\n"
        "net.link.bridge.pfil_bridge: 1\nnet.link.bridge.pfil_local_phys: 1",
        "vm": "yes",
        "disk": "/dev/ada0p2 30000000 1000000 20000000 5% /",
        "inet": "vtnet0: flags=8843<UP> mtu 1500\n\tinet 192.168.10.5 netmask 0xffffff00",
        "uid": "0",
        "user": "root",
    }
    base.update(over)
    return "".join(f"=== {k} ===\n{v}\n" for k, v in base.items())


@pytest.mark.parametrize(
    "override,check",
    [
        ({"uid": "1001", "user": "admin"}, "root rights (as root, or a non-root SSH user with become)"),
        ({"version": "13.2-RELEASE"}, "FreeBSD version supported"),
        ({"python": ""}, "python for Ansible"),
        ({"bastille": ""}, "Bastille installed"),
        ({"bridge": ""}, "if_bridge available"),
        ({"pfconf": ""}, "current /etc/pf.conf loads"),
        ({"packages": "bastille\ngit"}, "packages the agents need"),
        ({"rcconflocal": 'pf_enable="NO"'}, "/etc/rc.conf.local does not override warden's rc.conf values"),
        (
            {"rcconflocal": 'cloned_interfaces="lo1"\natlas_enable="YES"'},
            "/etc/rc.conf.local does not override warden's rc.conf values",
        ),
        ({"kernel": "14.2-RELEASE"}, "jail release 14.3-RELEASE runs on the kernel"),
        ({"bridgesysctl": "net.link.bridge.pfil_member: 0"}, "bridge filtering sysctls"),
        # docs/isolation.md "Layer 2 on the shared bridge": a dynamic ARP entry, no static bridge entries
        (
            {"arp": "? (10.0.1.3) at 02:00:00:00:00:01 on warden0 expires in 1200 seconds [bridge]"},
            "jails pinned at layer 2",
        ),
        ({"bridgeaddr": ""}, "jails pinned at layer 2"),
        # the MAC if_bridge chose, not the one the jails' gateway entries name
        (
            {"inet": "warden0: flags=8843<UP> mtu 1500\n\tether 58:9c:fc:10:20:30\n\tinet 10.0.1.1 netmask 0xffffff00"},
            "bridge MAC pinned",
        ),
        ({"disk": "/dev/ada0p2 30000000 29000000 100000 99% /"}, "free disk on /"),
        (
            {"inet": "vtnet0: flags=8843<UP> mtu 1500\n\tinet 10.0.1.7 netmask 0xffff0000"},
            "host networks do not overlap agent /24s",
        ),
    ],
)
def test_each_doctor_check_fails_on_its_own_symptom(override: dict[str, str], check: str, registry: Registry) -> None:
    from provision.inventory import load_inventory
    from provision.registry import load_fleet

    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    hosts, _ = load_inventory(registry.inventory)
    agents = load_fleet(registry.agents, hosts).agents
    host = Host(name="fbsd1")
    pins = layer2_pins(host, agents)
    assert pins
    pinned = {
        "arp": "\n".join(f"? ({ip}) at {mac} on warden0 permanent [bridge]" for ip, mac, _ in pins),
        "bridgeaddr": "\n".join(f"{mac} Vlan1 {member} 0 flags=1<STATIC>" for _, mac, member in pins),
        "interfaces": " ".join(["vtnet0", "warden0", *(member for *_, member in pins)]),
        "inet": (
            "vtnet0: flags=8843<UP> mtu 1500\n\tinet 192.168.10.5 netmask 0xffffff00\n"
            f"warden0: flags=8843<UP> mtu 1500\n\tether {bridge_mac('fbsd1', 'warden0')}\n"
            "\tinet 10.0.1.1 netmask 0xffffff00"
        ),
    }
    healthy = evaluate(host, agents, facts(**pinned))
    assert [c.name for c in healthy if not c.ok] == [] and "bridge MAC pinned" in [c.name for c in healthy]
    assert [c.name for c in evaluate(host, agents, facts(**{**pinned, **override})) if not c.ok] == [check]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_is_green_after_apply_and_red_when_things_go_down(registry: Registry, testhost: TestHost) -> None:
    inventory(registry, testhost)
    port = free_port()
    # Two jails for atlas (status shows one up, one stopped), one for iris: jails cost time.
    registry.write_env(
        "atlas", f"AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nCONTROLPLANE_API_PORT={port}\nWARDEN_JAILS='cms db'\n"
    )
    registry.write_env(
        "iris", f"AGENT_NAME=iris\nAGENT_SUBNET_BASE=10.0.2\nCONTROLPLANE_API_PORT={free_port()}\nWARDEN_JAILS=cms\n"
    )
    assert playbook(registry).returncode == 0
    api = socket.socket()
    api.bind(("127.0.0.1", port))
    api.listen()
    try:
        result = invoke(registry, "status", "--agent", "atlas")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "running (pid" in result.stdout and "open" in result.stdout and "loaded" in result.stdout
        assert "atlascms 10.0.1.3 up" in result.stdout
        down = invoke(registry, "status")  # iris's API port has nobody listening
        assert down.returncode == 1 and "closed" in down.stdout
        # the supervisor lives but the agent's tmux session is gone (daemon -r restarting the wrapper)
        subprocess.run(["chroot", str(testhost.root), "tmux", "kill-session", "-t", "=atlas"], check=True)
        dead = invoke(registry, "status", "--agent", "atlas")
        assert dead.returncode == 1 and "supervisor only" in dead.stdout and "no tmux session atlas" in dead.stdout
        subprocess.run(["chroot", str(testhost.root), "ifconfig", "warden0", "inet", "10.0.1.1", "-alias"], check=True)
        subprocess.run(["chroot", str(testhost.root), "bastille", "stop", "atlasdb"], check=True)
        subprocess.run(["chroot", str(testhost.root), "service", "atlas", "stop"], check=True, capture_output=True)
        broken = invoke(registry, "status", "--agent", "atlas")
        assert broken.returncode == 1
        assert (
            "not running" in broken.stdout
            and "10.0.1.1 missing" in broken.stdout
            and "atlasdb 10.0.1.5 down" in broken.stdout
        )
    finally:
        api.close()


def test_status_unreachable_host_is_an_error(registry: Registry, tmp_path: Path) -> None:
    registry.write_inventory(
        "warden_hosts:\n  hosts:\n    fbsd1:\n      ansible_host: 127.0.0.1\n      ansible_port: 1\n"
    )
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    (registry.root / "ssh_config").write_text("")
    result = invoke(registry, "status")
    assert result.returncode == 1 and "fbsd1: cannot connect" in result.stderr


def test_site_yml_stops_on_a_preflight_fail_before_changing_anything(registry: Registry, testhost: TestHost) -> None:
    inventory(registry, testhost)
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    subprocess.run(["chroot", str(testhost.root), "sysctl", "kern.features.vimage=0"], check=True, capture_output=True)
    rc_before = (testhost.root / "etc/rc.conf").read_text()
    result = playbook(registry)
    assert result.returncode != 0
    assert "[FAIL] VIMAGE in the kernel (VNET jails)" in result.stdout and "options VIMAGE" in result.stdout
    assert (testhost.root / "etc/rc.conf").read_text() == rc_before
    assert not any(
        c["cmd"] in ("bastille", "ifconfig")
        and c["argv"][:1] != ["-l"]
        and len(c["argv"]) > 1
        and c["argv"][1:] != ["addr"]  # the facts probe reads the bridge's forwarding table
        for c in testhost.calls()
    )


def test_doctor_accepts_a_fresh_host_without_pf_conf_and_refuses_a_release_newer_than_the_kernel() -> None:
    """FreeBSD installs no /etc/pf.conf; a jail's userland must not be newer than the kernel."""
    host = Host(name="fbsd1", release="15.0-RELEASE")
    checks = {c.name: c for c in evaluate(host, [], facts(pfconf="absent", kernel="14.3-RELEASE"))}
    assert checks["current /etc/pf.conf loads"].ok
    newer = checks["jail release 15.0-RELEASE runs on the kernel"]
    assert not newer.ok and not newer.applied_by_site
    assert "set warden_release: 14.3-RELEASE for fbsd1 in inventory/hosts.yml" in newer.fix
    assert Host(name="fbsd1").release == "14.3-RELEASE"


def test_doctor_says_when_jails_would_copy_a_resolver_they_cannot_reach(registry: Registry) -> None:
    """Bastille copies the host's resolv.conf into VNET jails (docs/freebsd.md#dns-in-vnet-jails)."""
    from provision.inventory import load_inventory
    from provision.registry import load_fleet

    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nWARDEN_JAILS=cms\n")
    hosts, _ = load_inventory(registry.inventory)
    agents = load_fleet(registry.agents, hosts).agents
    unbound = facts(resolv="nameserver 127.0.0.1")
    copying = Host(name="fbsd1", jail_nameservers=())
    failed = [c for c in evaluate(copying, agents, unbound) if not c.ok]
    assert [c.name for c in failed] == ["jails can resolve names (resolv.conf copied into them)"]
    assert "warden_jail_nameservers" in failed[0].fix and "127.0.0.1" in failed[0].detail
    assert all(c.ok for c in evaluate(Host(name="fbsd1"), agents, unbound))  # the default gives -n resolvers


def test_status_shows_a_bhyve_agents_vm_and_who_starts_it_at_boot(registry: Registry, testhost: TestHost) -> None:
    inventory(registry, testhost)
    registry.write_env(
        "nova", "AGENT_NAME=nova\nAGENT_SUBNET_BASE=10.0.9\nAGENT_PLACEMENT=bhyve\nWARDEN_VM_IP=10.255.0.10\n"
    )

    def vm(*args: str) -> None:
        subprocess.run(["chroot", str(testhost.root), "vm", *args], check=True, capture_output=True)

    rc_conf = 'vm_enable="YES"\nvm_dir="/vm"\nwarden_guests_enable="YES"\nwarden_guests_list="novavm"\n'
    (testhost.root / "etc/rc.conf").write_text(rc_conf)
    missing = invoke(registry, "status")
    assert missing.returncode == 1 and "VM novavm: not created" in missing.stdout, missing.stdout
    vm("init")
    (testhost.root / "vm/.templates/default.conf").write_text('cpu=1\nmemory=256M\ndisk0_name="disk0.img"\n')
    vm("create", "-s", "1G", "novavm")
    stopped = invoke(registry, "status")
    assert stopped.returncode == 1 and "VM novavm: Stopped, autostart after pf" in stopped.stdout, stopped.stdout
    vm("start", "novavm")
    running = invoke(registry, "status")
    # the host's row from `vm list`; the guest itself is unknown here (no `Host novavm` in ssh_config)
    assert "VM novavm: Running (" in running.stdout and "│ novavm │ nova  │ unknown" in running.stdout, running.stdout
    # in vm_list, rc.d/vm would start it before pf filters warden0 (docs/freebsd.md#boot-order)
    (testhost.root / "etc/rc.conf").write_text(rc_conf + 'vm_list="novavm"\n')
    early = invoke(registry, "status")
    assert early.returncode == 1 and "VM novavm: Running" in early.stdout, early.stdout
    assert "in vm_list: starts before pf" in early.stdout, early.stdout
