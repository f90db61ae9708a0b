"""The renderer: golden files, determinism, the FreeBSD rules that decide lines, hostfiles.

The rendered shell scripts are run for real in tests/test_render_scripts.py.
"""

from __future__ import annotations

import dataclasses
import difflib
import filecmp
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from provision.cli import CommandError
from provision.cli import render as render_command
from provision.hostfiles import pf_conf_result, rc_conf_edits, rc_conf_result
from provision.inventory import load_inventory
from provision.manifest import Manifest, RcEdit
from provision.pfconf import section_order_errors
from provision.rcconf import read_vars
from provision.registry import load_fleet
from provision.render import RenderError, render_fleet, render_problems

from .conftest import REPO, Registry
from .update_golden import EXAMPLE, GOLDEN, render_example


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def render(reg: Registry) -> Path:
    hosts, _ = load_inventory(reg.inventory)
    render_fleet(load_fleet(reg.agents, hosts), reg.build)
    return reg.build


def three_agents(reg: Registry, names: tuple[str, ...] = ("atlas", "iris", "nova")) -> None:
    for i, name in enumerate(names, start=1):
        reg.write_env(name, f"AGENT_NAME={name}\nAGENT_SUBNET_BASE=10.0.{i}\nCONTROLPLANE_API_PORT={3099 + i}\n")


# -- the example fleet, pinned ---------------------------------------------------------


def test_example_fleet_matches_the_golden_files(example: Path) -> None:
    """If this fails on purpose, run `python -m tests.update_golden` and review `git diff tests/golden`."""
    got, want = tree(example), tree(GOLDEN)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"files missing: {missing}; files not in the golden tree: {extra}"
    diffs = [
        "".join(
            difflib.unified_diff(
                want[name].decode().splitlines(True),
                got[name].decode().splitlines(True),
                f"golden/{name}",
                f"rendered/{name}",
            )
        )
        for name in want
        if got[name] != want[name]
    ]
    if diffs:
        pytest.fail("rendered output differs from tests/golden (python -m tests.update_golden):\n" + "\n".join(diffs))


def test_example_fleet_checks_clean_and_renders_what_the_issue_asks_for(example: Path) -> None:
    from provision.checks import run_checks

    hosts, problems = load_inventory(EXAMPLE / "inventory" / "hosts.yml")
    fleet = load_fleet(EXAMPLE / "agents", hosts)
    assert problems == [] and run_checks(fleet) == [] and render_problems(fleet) == []
    assert sorted(p.name for p in example.iterdir()) == ["fbsd1", "fbsd2", "novavm"]  # two hosts and one guest
    assert any(a.placement == "bhyve" for a in fleet.agents)
    assert any(a.system_locale == "sl_SI.UTF-8" for a in fleet.agents)


def test_rendering_twice_gives_byte_identical_trees(tmp_path: Path, example: Path) -> None:
    render_example(tmp_path / "a")
    render_example(tmp_path / "a")  # over its own previous output
    render_example(tmp_path / "b")
    assert tree(tmp_path / "a") == tree(tmp_path / "b") == tree(example)
    cmp = filecmp.dircmp(tmp_path / "a", example)
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only


def test_stale_files_from_a_previous_render_are_removed(registry: Registry) -> None:
    three_agents(registry)
    out = render(registry)
    stale = out / "fbsd1/usr/local/etc/rc.d/gone"
    stale.write_text("#!/bin/sh\n")
    other = out / "demo/keep.txt"  # not a machine of this fleet: left alone
    other.parent.mkdir()
    other.write_text("x")
    render(registry)
    assert not stale.exists() and other.exists()
    assert not list(out.glob(".fbsd1.*"))  # no temporary trees left behind


def test_re_rendering_rewrites_only_what_changed(registry: Registry) -> None:
    three_agents(registry)
    out = render(registry) / "fbsd1"
    old = 1_000_000_000  # 2001: anything rewritten now gets a current mtime

    def rewritten() -> list[str]:
        return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.stat().st_mtime > old)

    for p in out.rglob("*"):
        os.utime(p, (old, old))
    render(registry)
    assert rewritten() == []
    registry.write_env(
        "iris", "AGENT_NAME=iris\nAGENT_SUBNET_BASE=10.0.2\nCONTROLPLANE_API_PORT=3101\nSYSTEM_LOCALE=C.UTF-8\n"
    )
    render(registry)
    assert rewritten() == [
        "home/iris/clawdie/.env",
        "usr/local/etc/rc.d/iris",
        "usr/local/libexec/warden/run-iris.sh",
    ]


def test_a_directory_in_the_way_of_a_file_is_replaced(registry: Registry) -> None:
    out = render(registry) / "fbsd1"
    (out / "etc/pf.warden.conf").unlink()
    (out / "etc/pf.warden.conf").mkdir()
    (out / "etc/pf.warden.conf/junk").write_text("x")
    render(registry)
    assert (out / "etc/pf.warden.conf").is_file() and not list(registry.build.glob(".fbsd1.*"))


def test_every_file_carries_the_managed_header_and_no_timestamp(example: Path) -> None:
    for path in sorted(example.rglob("*")):
        if not path.is_file() or path.name == "manifest.json":
            continue
        head = path.read_text().splitlines()[:6]
        text = "\n".join(head)
        assert "Managed by warden-provision" in text and "# Rendered from " in text, path
        origin = next(line for line in head if line.startswith("# Rendered from "))
        assert "hosts.yml" in origin or "/.env" in origin, path  # the inventory or the agent's .env
        assert not re.search(r"\b(19|20)\d\d-\d\d-\d\d\b", path.read_text()), path  # no dates anywhere
        assert not re.search(r"\b\d\d:\d\d(:\d\d)?\b", text), path  # no times in the header


def test_modes_and_owners_follow_the_manifest(example: Path) -> None:
    for host in ("fbsd1", "fbsd2", "novavm"):
        manifest = Manifest.load(example / host)
        for entry in manifest.files:
            mode = (example / host / entry.path.lstrip("/")).stat().st_mode & 0o777
            assert mode == int(entry.mode, 8), entry.path
    entries = {e.path: e for e in Manifest.load(example / "fbsd1").files}
    env = entries["/home/atlas/clawdie/.env"]
    assert (env.mode, env.owner, env.secret, env.agent) == ("0600", "atlas", True, "atlas")
    # What root runs (the wrapper daemon(8) starts) is root's, outside the agent's home.
    wrapper = entries["/usr/local/libexec/warden/run-atlas.sh"]
    assert (wrapper.mode, wrapper.owner, wrapper.group) == ("0755", "root", "wheel")
    assert [p for p, e in entries.items() if e.owner != "root"] == [
        "/home/atlas/clawdie/.env",
        "/home/hermes/clawdie/.env",
    ]
    assert (entries["/usr/local/etc/rc.d/atlas"].mode, entries["/usr/local/etc/rc.d/atlas"].owner) == ("0755", "root")
    assert all(not e.secret for p, e in entries.items() if not p.endswith("/.env"))


def test_the_agents_env_is_carried_whole_secrets_included(example: Path) -> None:
    source = (EXAMPLE / "agents/atlas/.env").read_text()
    rendered = (example / "fbsd1/home/atlas/clawdie/.env").read_text()
    assert rendered.endswith(source) and "ANTHROPIC_API_KEY=" in rendered
    assert rendered[: -len(source)].count("\n") == 2  # only the two header comment lines added


def test_manifest_json_round_trips(example: Path) -> None:
    text = (example / "fbsd1/.warden/manifest.json").read_text()
    assert Manifest.from_json(text).to_json() == text


# -- rc.d ------------------------------------------------------------------------------


def test_rc_d_script_follows_rc_subr_and_daemon_rules(example: Path) -> None:
    text = (example / "fbsd1/usr/local/etc/rc.d/hermes").read_text()
    # docs/freebsd.md#rcd-scripts
    assert "# PROVIDE: hermes\n# REQUIRE: LOGIN NETWORKING atlas bastille\n# KEYWORD: shutdown\n" in text
    assert "name=hermes\nrcvar=hermes_enable\n" in text
    assert text.index('load_rc_config "$name"') < text.index(': "${hermes_enable:=NO}"')  # docs/freebsd.md#rcd-scripts
    assert 'command="/usr/sbin/daemon"' in text and "\nprocname=" not in text  # procname stays daemon
    args = re.search(r"command_args='([^']*)'", text)
    assert args is not None
    argv = shlex.split(args.group(1))  # rc.subr evals command_args: one more round of sh words
    # docs/freebsd.md#supervision-with-daemon: -u
    assert argv[-2:] == ["hermes", "/usr/local/libexec/warden/run-hermes.sh"] and argv[-3] == "-u"
    for flag in ("-r", "-H"):
        assert flag in argv
    assert argv[argv.index("-R") + 1] == "5" and argv[argv.index("-t") + 1] == "hermes"
    assert argv[argv.index("-P") + 1] == "/var/run/hermes.pid"
    assert argv[argv.index("-p") + 1] == "/var/run/hermes.child.pid"
    # -c would chdir to /
    assert argv[argv.index("-o") + 1] == "/var/log/warden/hermes/hermes.log" and "-c" not in argv
    assert "pidfile=/var/run/hermes.pid\n" in text and "logfile=/var/log/warden/hermes/hermes.log\n" in text
    assert "install -d -o root -g hermes -m 0750 /var/log/warden/hermes\n" in text  # root's directory
    assert "hermes_user" not in text.replace("hermes_user would", "")  # docs/freebsd.md#supervision-with-daemon
    # no hermes_chdir: rc.subr would cd as root into the agent's directory, following links
    # (docs/freebsd.md#rcsubr-knobs); the wrapper cds there as hermes
    assert "hermes_chdir" not in text
    assert "|| hermes_env='LANG=sl_SI.UTF-8 LC_ALL=sl_SI.UTF-8'\n" in text  # docs/freebsd.md#rcsubr-knobs
    assert "env_file=" not in text and "_env_file}" not in text and ". .env" not in text


# -- PF --------------------------------------------------------------------------------


def test_pf_anchor_lists_subnets_nats_and_isolates(example: Path) -> None:
    pf = (example / "fbsd1/etc/pf.warden.conf").read_text()
    assert 'ext_if = "vtnet0"' in pf
    assert 'warden_net = "{ 10.0.0.0/24 10.0.1.0/24 }"' in pf
    assert "table <warden_agents> const { 10.0.0.0/24, 10.0.1.0/24 }" in pf
    # docs/freebsd.md#nat-and-forwarding; `pass`: translated agent traffic skips pf.conf's filter rules
    assert "\nnat pass on $ext_if from $warden_net to any -> ($ext_if)\n" in pf
    block = "block drop quick from <warden_agents> to <warden_agents>"
    # docs/freebsd.md#pf-statement-order inside the anchor file too
    assert pf.index("nat pass on") < pf.index("pass out quick") < pf.index(block)
    # hermes (10.0.0.0/24) reaches the shared ollama jail in atlas's /24, before the block
    exception = "pass quick from 10.0.0.0/24 to 10.0.1.4 keep state"
    assert pf.index(exception) < pf.index(block)
    assert "from 10.0.1.0/24 to 10.0.0." not in pf  # no hole the other way
    # every filter rule decides with quick (docs/isolation.md): pf.conf's later rules cannot undo it
    rules = [ln for ln in pf.splitlines() if ln.startswith(("pass", "block"))]
    assert rules and all(" quick " in ln for ln in rules)
    assert pf.rstrip().endswith("pass in quick from <warden_agents> to any keep state")


def test_fallback_ruleset_keeps_sshd_dhcp_and_nd_but_not_ssh_from_jails(registry: Registry) -> None:
    # rc.d/pf loads it when pf.conf fails at start or boot: the host must stay reachable
    from ipaddress import ip_address

    from provision.pf import Firewall, Packet, parse_ruleset
    from provision.pf.engine import Interface, host_net

    registry.write_inventory(
        "warden_hosts:\n  hosts:\n    fbsd1:\n      warden_ext_if: vtnet0\n      ansible_port: 2222\n"
        "      warden_ssh_ports: [8022]\n"
    )
    three_agents(registry)
    text = (render(registry) / "fbsd1/etc/pf.warden-fallback.conf").read_text()
    assert Manifest.load(registry.build / "fbsd1").ssh_ports == [22, 2222, 8022]
    ifaces = {
        "vtnet0": Interface("vtnet0", (host_net("192.0.2.2/24"), host_net("fe80::1/64"))),
        "warden0": Interface("warden0", (host_net("10.0.1.1/24"),)),
        "lo0": Interface("lo0", (host_net("127.0.0.1/8"),)),
    }
    fw = Firewall(parse_ruleset(text, source="/etc/pf.warden-fallback.conf"), ifaces)

    def passes(p: Packet, ifname: str = "vtnet0") -> bool:
        fw.states.clear()
        return fw.test(p, ifname, "in").passed

    ack = 0x10  # a session open when the fallback loads: no SYN, no state left
    for port in (22, 2222, 8022):
        assert passes(Packet(6, ip_address("198.51.100.7"), ip_address("192.0.2.2"), 40000, port, ack))
    assert not passes(Packet(6, ip_address("198.51.100.7"), ip_address("192.0.2.2"), 40000, 80, 0x02))
    # DHCP answers and IPv6 neighbour discovery
    assert passes(Packet(17, ip_address("192.0.2.1"), ip_address("255.255.255.255"), 67, 68))
    nd = Packet(58, ip_address("fe80::2"), ip_address("ff02::1:ff00:1"), icmp_type=135)
    assert passes(nd)
    # not SSH from the agents' jails
    assert not passes(Packet(6, ip_address("10.0.1.3"), ip_address("10.0.1.1"), 40000, 22, 0x02), "warden0")


def test_every_pf_file_keeps_pfctl_section_order(example: Path) -> None:
    files = sorted(example.glob("*/etc/pf.warden*.conf"))
    assert len(files) == 6
    for path in files:
        assert section_order_errors(path.read_text()) == [], path


def test_host_with_bhyve_guests_nats_and_isolates_their_uplink(example: Path) -> None:
    pf = (example / "fbsd2/etc/pf.warden.conf").read_text()
    assert 'ext_if = "igb0"' in pf and 'warden_net = "{ 10.255.0.0/24 }"' in pf
    assert "table <warden_agents> const { 10.255.0.0/24 }" in pf


def test_a_guest_drops_other_guests_on_the_uplink_but_not_its_host(example: Path) -> None:
    pf = (example / "novavm/etc/pf.warden.conf").read_text()
    # vm-bhyve's network-config names the guest's NIC eth0 (docs/freebsd.md#vm-bhyve)
    assert 'ext_if = "eth0"' in pf and 'warden_net = "{ 10.1.0.0/24 }"' in pf
    host = "pass in quick on $ext_if from 10.255.0.1 to any keep state"
    peers = "block drop in quick on $ext_if from 10.255.0.0/24 to any"
    assert pf.index(host) < pf.index(peers)


def test_inventory_agent_links_open_both_directions_before_the_block(registry: Registry) -> None:
    registry.write_inventory(
        "warden_hosts:\n  hosts:\n    fbsd1:\n      warden_ext_if: vtnet0\n      warden_agent_links: [[atlas, iris]]\n"
    )
    three_agents(registry)
    pf = (render(registry) / "fbsd1/etc/pf.warden.conf").read_text()
    block = pf.index("block drop quick from <warden_agents> to <warden_agents>")
    assert -1 < pf.index("pass quick from 10.0.1.0/24 to 10.0.2.0/24 keep state") < block
    assert -1 < pf.index("pass quick from 10.0.2.0/24 to 10.0.1.0/24 keep state") < block
    # nova stays apart: no other network is granted its /24, nor it another's
    grants = [ln for ln in pf.splitlines() if ln.startswith("pass quick")]
    assert [g for g in grants if "10.0.3.0/24" in g] == [
        "pass quick from 10.0.3.0/24 to 10.0.3.0/24 keep state  # nova's jails reach each other"
    ]


# -- jails and guests --------------------------------------------------------------------


def test_shared_llm_jail_appears_once_with_both_agents(example: Path) -> None:
    manifest = Manifest.load(example / "fbsd1")
    shared = [j for j in manifest.jails if j.name == "ollama"]
    assert len(shared) == 1 and shared[0].agents == ["atlas", "hermes"]
    assert shared[0].create_args == [
        "create", "-B", "-M", "-g", "10.0.1.1", "-n", "9.9.9.9,149.112.112.112",
        "ollama", "15.0-RELEASE", "10.0.1.4/24", "warden0",
    ]  # fmt: skip
    # docs/freebsd.md#clawdie-conventions: home.arpa, the owner's zone
    assert shared[0].hostname == "ollama.atlas.home.arpa"
    db = next(j for j in manifest.jails if j.name == "atlasdb")
    # docs/freebsd.md#clawdie-conventions: db is thick
    assert db.create_args[:4] == ["create", "-B", "-T", "-M"] and db.thick
    assert len({j.mac for j in manifest.jails}) == len(manifest.jails)
    assert all(re.fullmatch(r"02(:[0-9a-f]{2}){5}", j.mac) for j in manifest.jails)
    assert len(list((example / "fbsd1/usr/local/etc/warden/jails").glob("ollama*.conf"))) == 1
    roles = sorted(p.name for p in (example / "fbsd1/usr/local/bastille/templates/warden").iterdir())
    assert roles == ["cms", "db", "git", "ollama"]


def test_bastillefiles_use_only_bastille_hooks(example: Path) -> None:
    hooks = {
        "ARG",
        "CMD",
        "CONFIG",
        "CP",
        "INCLUDE",
        "LIMITS",
        "LINE_IN_FILE",
        "MOUNT",
        "PKG",
        "HPKG",
        "RDR",
        "RENDER",
        "RESTART",
        "SERVICE",
        "SYSRC",
        "TAGS",
    }  # docs/freebsd.md#bastillefile-hooks
    files = sorted(example.glob("*/usr/local/bastille/templates/warden/*/Bastillefile"))
    assert files
    for path in files:
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                assert line.split()[0] in hooks, (path, line)
            if line.startswith("SERVICE "):
                # template.sh evals the line as `bastille service JAIL ARGS`; service.sh
                # wants exactly JAIL SERVICE VERB, so the words must not be quoted together.
                assert len(shlex.split(line)) == 3, (path, line)


def test_bhyve_agent_gets_a_guest_on_the_host_and_a_host_layout_of_its_own(example: Path) -> None:
    host = Manifest.load(example / "fbsd2")
    assert host.agents == ["nova"] and [g.name for g in host.guests] == ["novavm"]
    assert host.guests[0].uplink_ip == "10.255.0.10" and host.guests[0].switch == "warden"
    values = {e.name: e.value for e in host.rc_conf}
    assert values["vm_enable"] == "YES" and values["ifconfig_warden0"] == "inet 10.255.0.1/24 up"
    assert "nova_enable" not in values  # the agent runs in its VM, not on the host
    assert not (example / "fbsd2/usr/local/etc/rc.d/nova").exists()
    guest = Manifest.load(example / "novavm")
    assert guest.parent == "fbsd2" and guest.agents == ["nova"]
    values = {e.name: e.value for e in guest.rc_conf}
    assert values["ifconfig_eth0"] == "inet 10.255.0.10/24" and values["defaultrouter"] == "10.255.0.1"
    assert values["ifconfig_warden0"] == "inet 10.1.0.1/24 up" and values["nova_enable"] == "YES"
    assert [j.name for j in guest.jails] == ["novacms", "novagit", "novallm"]
    for rel in ("usr/local/etc/rc.d/nova", "usr/local/libexec/warden/run-nova.sh", "home/nova/clawdie/.env"):
        assert (example / "novavm" / rel).exists()
    conf = (example / "fbsd2/vm/.templates/warden-nova.conf").read_text()
    assert 'network0_switch="warden"' in conf and "memory=2G" in conf and "cpu=2" in conf
    assert 'loader="bhyveload"' in conf
    # created from the release's cloud image with a seed (docs/freebsd.md#vm-bhyve)
    assert host.guests[0].image_file == "FreeBSD-15.0-RELEASE-amd64-BASIC-CLOUDINIT-ufs.raw"
    assert host.guests[0].network.startswith("ip=10.255.0.10/24;gateway=10.255.0.1;")
    # started at boot by rc.d/warden_guests after pf and the bridge sysctls, never from vm_list,
    # which rc.d/vm starts BEFORE pf (docs/freebsd.md#boot-order)
    edits = [vars(e) for e in host.rc_conf]
    assert not [e for e in edits if e["name"] == "vm_list"]
    assert {"name": "warden_guests_list", "op": "append", "value": "novavm"} in edits
    assert {"name": "warden_guests_enable", "op": "set", "value": "YES"} in edits
    script = (example / "fbsd2/usr/local/etc/rc.d/warden_guests").read_text()
    assert "\n# PROVIDE: warden_guests\n# REQUIRE: LOGIN pf sysctl_lastload vm\n" in script
    assert "\nstart_precmd=" in script and "/sbin/pfctl -s info" in script


def test_a_guest_an_earlier_apply_put_in_vm_list_leaves_it_and_the_operators_stay(example: Path) -> None:
    """Applies before rc.d/warden_guests appended the guests to vm_list, which rc.d/vm starts
    before pf (docs/freebsd.md#boot-order): the next apply takes ours out, keeps the operator's."""
    current = Manifest.load(example / "fbsd2")
    old_edits = [e for e in current.rc_conf if not e.name.startswith("warden_guests_")]
    previous = dataclasses.replace(current, rc_conf=[*old_edits, RcEdit("append", "vm_list", "novavm")])
    live = rc_conf_result(previous, 'hostname="fbsd2"\nvm_list="mine novavm"\n')
    assert read_vars(live)["vm_list"] == "mine novavm"
    after = read_vars(rc_conf_result(current, live, previous))
    assert after["vm_list"] == "mine"
    assert after["warden_guests_enable"] == "YES" and after["warden_guests_list"] == "novavm"


# -- rc.conf and pf.conf: hostfiles ------------------------------------------------------


def test_rc_conf_result_keeps_operator_lines_and_merges_cloned_interfaces(example: Path) -> None:
    live = 'hostname="fbsd1"\n# my note\ncloned_interfaces="lo1"\nifconfig_lo1_name="bastille0"\nsshd_enable="YES"\n'
    manifest = Manifest.load(example / "fbsd1")
    result = rc_conf_result(manifest, live)
    kept = [line for line in result.splitlines() if line in live.splitlines()]
    assert kept == [line for line in live.splitlines() if not line.startswith("cloned_interfaces")]
    assert 'cloned_interfaces="lo1 bridge0"' in result.splitlines()  # merged in place, never clobbered
    values = read_vars(result)
    assert values["ifconfig_bridge0_name"] == "warden0"  # docs/freebsd.md#the-warden0-bridge
    assert values["ifconfig_warden0"] == "inet 10.0.0.1/24 up"
    # sorted by subnet, from 0 (docs/freebsd.md#interface-aliases)
    assert values["ifconfig_warden0_alias0"] == "inet 10.0.1.1/24"
    assert values["gateway_enable"] == values["pf_enable"] == values["pf_fallback_rules_enable"] == "YES"
    assert values["pf_fallback_rules_file"] == "/etc/pf.warden-fallback.conf"
    assert values["atlas_enable"] == values["hermes_enable"] == "YES"
    assert rc_conf_result(manifest, result) == result  # applying twice changes nothing


def test_pf_conf_result_hooks_the_anchor_in_section_order(example: Path) -> None:
    manifest = Manifest.load(example / "fbsd1")
    for operator in (
        (REPO / "examples/host/etc/pf.conf").read_text(),
        "set skip on lo0\nscrub in all\nnat on em0 from 10.9.0.0/24 to any -> (em0)\nblock in all\n",
        "",
    ):
        result = pf_conf_result(manifest, operator)
        assert section_order_errors(result) == []
        assert [ln for ln in result.splitlines() if "# warden-provision" not in ln] == operator.splitlines()
        assert 'load anchor "warden" from "/etc/pf.warden.conf"' in result
        assert pf_conf_result(manifest, result) == result  # hooked once


def test_removing_an_agent_renumbers_aliases_and_drops_its_subnet_and_enable_line(registry: Registry) -> None:
    three_agents(registry)
    before = Manifest.load(render(registry) / "fbsd1")
    live = rc_conf_result(before, 'hostname="fbsd1"\ncloned_interfaces="lo1"\n')
    assert read_vars(live)["ifconfig_warden0_alias1"] == "inet 10.0.3.1/24"
    shutil.rmtree(registry.agents / "iris")
    after = Manifest.load(render(registry) / "fbsd1")
    edits = rc_conf_edits(after, live, before)
    assert RcEdit("delete", "iris_enable") in edits and RcEdit("delete", "ifconfig_warden0_alias1") in edits
    result = rc_conf_result(after, live, before)
    values = read_vars(result)
    assert values["ifconfig_warden0"] == "inet 10.0.1.1/24 up"
    # renumbered, no gap (docs/freebsd.md#interface-aliases)
    assert values["ifconfig_warden0_alias0"] == "inet 10.0.3.1/24"
    assert "ifconfig_warden0_alias1" not in values and "iris_enable" not in values
    assert values["cloned_interfaces"] == "lo1 bridge0" and values["nova_enable"] == "YES"
    pf = (registry.build / "fbsd1/etc/pf.warden.conf").read_text()
    assert "10.0.2." not in pf and 'warden_net = "{ 10.0.1.0/24 10.0.3.0/24 }"' in pf
    assert not (registry.build / "fbsd1/usr/local/etc/rc.d/iris").exists()
    assert not (registry.build / "fbsd1/home/iris").exists()


def test_rc_conf_edits_leave_variables_the_operator_set_alone(example: Path) -> None:
    manifest = Manifest.load(example / "fbsd1")
    live = (
        'ifconfig_warden0_aliases="inet 192.0.2.1/24"\nifconfig_warden0_alias7="inet 10.0.7.1/24"\nfoo_enable="YES"\n'
    )
    edits = rc_conf_edits(manifest, live, previous=None)
    assert RcEdit("delete", "ifconfig_warden0_alias7") in edits  # stale numbered alias: ours to renumber
    assert not any(e.op == "delete" and e.name in ("ifconfig_warden0_aliases", "foo_enable") for e in edits)


def test_dropping_the_last_guest_removes_vm_enable(registry: Registry) -> None:
    registry.write_env(
        "nova", "AGENT_NAME=nova\nAGENT_SUBNET_BASE=10.0.5\nAGENT_PLACEMENT=bhyve\nWARDEN_VM_IP=10.255.0.10\n"
    )
    before = Manifest.load(render(registry) / "fbsd1")
    live = rc_conf_result(before, "")
    shutil.rmtree(registry.agents / "nova")
    after = Manifest.load(render(registry) / "fbsd1")
    values = read_vars(rc_conf_result(after, live, before))
    assert "vm_enable" not in values and "vm_dir" not in values and values["ifconfig_warden0"] == "up"


# -- hosts with nothing, hosts that cannot be rendered, the command ----------------------


def test_a_host_without_agents_renders_only_host_level_files(registry: Registry) -> None:
    out = render(registry)
    files = sorted(str(p.relative_to(out / "fbsd1")) for p in (out / "fbsd1").rglob("*") if p.is_file())
    assert files == [".warden/manifest.json", "etc/pf.warden-fallback.conf", "etc/pf.warden.conf"]
    pf = (out / "fbsd1/etc/pf.warden.conf").read_text()
    assert "nat on" not in pf and "pass" not in pf and section_order_errors(pf) == []
    manifest = Manifest.load(out / "fbsd1")
    assert manifest.agents == [] and manifest.jails == [] and manifest.rctl_rules == []


def test_a_host_with_agents_but_no_ext_if_is_refused_with_the_fix(registry: Registry) -> None:
    registry.write_inventory("warden_hosts:\n  hosts:\n    fbsd1:\n      ansible_host: 192.0.2.10\n    fbsd2: {}\n")
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nAGENT_HOST=fbsd1\n")
    hosts, _ = load_inventory(registry.inventory)
    fleet = load_fleet(registry.agents, hosts)
    [problem] = render_problems(fleet)  # fbsd2 has no agents: it needs no ext_if
    assert "fbsd1" in problem.message and "warden_ext_if" in problem.fix and problem.is_error
    assert problem.locations[0].file == registry.inventory and problem.locations[0].line == 3
    with pytest.raises(RenderError, match="warden_ext_if"):
        render_fleet(fleet, registry.build)
    assert not registry.build.exists()  # refused before writing anything


def test_render_command_prints_the_tree_it_wrote(registry: Registry) -> None:
    three_agents(registry)
    buf = io.StringIO()
    assert render_command(settings=registry.settings(), out=Console(file=buf, width=200)) == 0
    text = buf.getvalue()
    assert str(registry.build / "fbsd1") in text and "usr/local/etc/rc.d/iris  0755 root:wheel iris" in text
    assert ".warden/manifest.json" in text


def test_render_command_refuses_errors_and_writes_nothing(registry: Registry) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nCMS_JAIL_NAME=atlas-cms\n")
    buf = io.StringIO()
    with pytest.raises(CommandError, match="nothing rendered"):
        render_command(settings=registry.settings(), out=Console(file=buf, width=200))
    assert "CMS_JAIL_NAME" in buf.getvalue() and not registry.build.exists()
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    with pytest.raises(CommandError, match="no host 'nope'"):
        render_command(host="nope", settings=registry.settings(), out=Console(file=buf, width=200))


def test_invoke_render_refuses_a_registry_with_errors(registry: Registry) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nCMS_JAIL_NAME=atlas-cms\n")
    env = {**os.environ, **registry.env()}
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "render"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and "CMS_JAIL_NAME" in result.stderr
    assert not registry.build.exists()


# -- complete or absent (docs/security.md) ---------------------------------------------


def full_disk(monkeypatch: pytest.MonkeyPatch, build: Path) -> None:
    """os.write under BUILD writes 100 bytes, then the disk is full (ENOSPC); other fds as usual."""
    real_write, seen = os.write, set()

    def write(fd: int, data: bytes | memoryview) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.startswith(str(build)):
            return real_write(fd, data)
        if fd in seen:
            raise OSError(28, "No space left on device")
        seen.add(fd)
        return real_write(fd, bytes(data[:100]))

    monkeypatch.setattr(os, "write", write)


def test_a_render_on_a_full_disk_exits_1_and_keeps_the_previous_build(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    three_agents(registry)
    render(registry)
    before = tree(registry.build)
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nASSISTANT_NAME=Živa\n")
    hosts, _ = load_inventory(registry.inventory)
    full_disk(monkeypatch, registry.build)
    with pytest.raises(OSError, match="No space left on device"):
        render_fleet(load_fleet(registry.agents, hosts), registry.build)
    assert tree(registry.build) == before  # the rc.d script and .env of the last good render, whole
    with pytest.raises(CommandError) as exc:
        render_command(settings=registry.settings(), out=Console(file=io.StringIO()))
    message = str(exc.value)
    assert "No space left on device" in message and "the previous build is kept" in message
    assert str(registry.build) in message and "invoke render" in message
    monkeypatch.undo()
    assert tree(registry.build) == before  # the rc.d script and .env of the last good render, whole
    assert not [p for p in registry.build.rglob("*") if p.name.endswith(".warden-new") or ".new" in p.name]


def test_a_first_render_on_a_full_disk_leaves_no_tree(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    three_agents(registry)
    registry.build.mkdir()
    hosts, _ = load_inventory(registry.inventory)
    full_disk(monkeypatch, registry.build)
    with pytest.raises(OSError, match="No space left on device"):
        render_fleet(load_fleet(registry.agents, hosts), registry.build)
    monkeypatch.undo()
    assert [p.name for p in registry.build.iterdir() if p.name != ".render.lock"] == []


RENDER_ON_GO = """
import sys, time
from pathlib import Path
from provision import cli
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.005)
cli.run(cli.render)
"""


def test_eight_renders_at_once_into_a_fresh_build_all_succeed(registry: Registry) -> None:
    for i in range(1, 41):
        name = f"agent{i}"
        registry.write_env(name, f"AGENT_NAME={name}\nAGENT_SUBNET_BASE=10.0.{i}\nCONTROLPLANE_API_PORT={3099 + i}\n")
    go = registry.root / "go"
    env = {**os.environ, **registry.env()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RENDER_ON_GO, str(go)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    time.sleep(3)  # every process has imported and loaded what it needs: start them together
    go.touch()
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    assert [code for code, _ in results] == [0] * 8, [err[-1500:] for _, err in results if err]
    once = registry.root / "once"
    hosts, _ = load_inventory(registry.inventory)
    render_fleet(load_fleet(registry.agents, hosts), once)
    assert tree(registry.build / "fbsd1") == tree(once / "fbsd1")


def test_a_host_with_jails_starts_bastille_at_boot_and_its_agents_after_it(example: Path) -> None:
    """rc.d/bastille starts jails only with bastille_enable=YES (docs/freebsd.md#bastille-jail-lifecycle)."""
    manifest = Manifest.load(example / "fbsd1")
    assert {(e.name, e.value) for e in manifest.rc_conf if e.op == "set"} >= {("bastille_enable", "YES")}
    script = (example / "fbsd1/usr/local/etc/rc.d/atlas").read_text()
    assert re.search(r"^# REQUIRE: LOGIN NETWORKING.* bastille$", script, re.M), script[:400]
