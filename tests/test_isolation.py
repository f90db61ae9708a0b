"""The isolation policy (provision/isolation.py): its values, its sysctl block, its input checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.inventory import load_inventory
from provision.isolation import (
    arp_entries,
    arp_pin_changes,
    bridge_entries,
    bridge_pin_changes,
    sysctl_changes,
    sysctl_conf_result,
    sysctl_lines,
)
from provision.models import PolicyError, parse_host_ports
from provision.pf.grammar import PfSyntaxError, parse_ruleset

from .conftest import Registry
from .test_render import render, three_agents


def test_host_ports_are_port_or_proto_slash_port_with_an_owner_by_full_match() -> None:
    assert parse_host_ports([8443, "udp/123", "tcp/8443"]) == [("tcp", 8443, "root"), ("udp", 123, "root")]
    assert parse_host_ports(["9000@squid", "udp/123@ntpd"]) == [("tcp", 9000, "squid"), ("udp", 123, "ntpd")]
    for bad in ("8443\n", "sctp/1", "udp/123 # x", "0", "70000", "tcp/", "80@", "80@Squid", "80@a b", "80@unknown"):
        with pytest.raises(PolicyError):
            parse_host_ports([bad])
    with pytest.raises(PolicyError, match="two owners"):
        parse_host_ports(["8443@squid", "tcp/8443"])


def test_jail_host_ports_open_the_gateway_port_to_each_agents_jails(registry: Registry) -> None:
    registry.write_inventory(
        "warden_hosts:\n  hosts:\n    fbsd1:\n      warden_ext_if: vtnet0\n"
        "      warden_jail_host_ports: [8443, udp/123]\n"
    )
    three_agents(registry)
    pf = (render(registry) / "fbsd1/etc/pf.warden.conf").read_text()
    for net, gw in (("10.0.1.0/24", "10.0.1.1"), ("10.0.3.0/24", "10.0.3.1")):
        assert f'pass in quick proto tcp from {net} to {gw} port 8443 user "root" keep state' in pf
        assert f'pass in quick proto udp from {net} to {gw} port 123 user "root" keep state' in pf
    # and nothing else on the host: the block after the ports
    assert pf.index("port 8443") < pf.index("block drop in quick from <warden_agents> to (self)")


def test_agents_named_like_pf_keywords_are_quoted_users_pfctl_parses(registry: Registry) -> None:
    """pfctl's lexer reads a bare `port` as the keyword (parse.y `lookup`), so `user { port }`
    is a syntax error; every user name in the anchor is a quoted string."""
    with pytest.raises(PfSyntaxError, match="keyword"):
        parse_ruleset("pass out quick proto tcp from any to any user { port } keep state\n")
    registry.write_inventory("warden_hosts:\n  hosts:\n    fbsd1:\n      warden_ext_if: vtnet0\n")
    three_agents(registry, ("port", "state", "group"))
    anchor = (render(registry) / "fbsd1/etc/pf.warden.conf").read_text()
    assert 'user { "root" "port" }' in anchor
    rules = parse_ruleset(anchor, source="/etc/pf.warden.conf")
    users = {r.user.value for r in rules.filter if r.user is not None}
    assert {"root", "port", "state", "group"} <= users


def test_a_bad_jail_host_port_is_an_inventory_problem(registry: Registry) -> None:
    registry.write_inventory("warden_hosts:\n  hosts:\n    fbsd1:\n      warden_jail_host_ports: ['22; pass all']\n")
    _, problems = load_inventory(registry.inventory)
    assert any("warden_jail_host_ports" in p.message for p in problems)


def test_sysctl_block_goes_last_and_replaces_itself() -> None:
    operator = "net.link.bridge.pfil_member=0\nkern.ipc.somaxconn=1024"
    once = sysctl_conf_result(operator, sysctl_lines())
    assert once.startswith(operator + "\n") and once.rstrip().endswith("# END warden-provision")
    assert once.index("pfil_member=0") < once.index("pfil_member=1")  # ours is applied last
    assert sysctl_conf_result(once, sysctl_lines()) == once
    assert sysctl_conf_result(once, []) == operator + "\n"
    assert sysctl_changes({"net.link.bridge.pfil_member": "1"}, ["net.link.bridge.pfil_member=1", "a.b=1"]) == ["a.b=1"]


# -- layer 2: what the network role and doctor read back (docs/freebsd.md#arp-and-the-bridges-forwarding-table)


def test_layer2_pins_are_read_back_from_arp_and_ifconfig_as_the_doubles_print_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.doubles import freebsd as double

    monkeypatch.setattr(double, "STATE_DIR", tmp_path)
    jail, thief = "02:28:48:ce:11:2b", "02:00:00:00:00:99"
    for argv in (
        ["bridge", "create", "name", "warden0"],
        ["warden0", "inet", "10.0.1.1/24"],
        ["epair", "create", "name", "e0a_atlascms"],
        ["epair", "create", "name", "e0a_other"],
        ["warden0", "addm", "e0a_atlascms", "addm", "e0a_other"],
    ):
        assert double.ifconfig(argv) == 0
    capsys.readouterr()
    wanted = {"10.0.1.3": jail}
    pins = [("e0a_atlascms", jail)]
    interfaces = ["warden0", "e0a_atlascms", "e0a_other"]

    def live() -> tuple[dict[str, tuple[str, str, bool]], dict[str, tuple[str, bool]]]:
        capsys.readouterr()
        double.arp(["-an", "-i", "warden0"])
        arp_text = capsys.readouterr().out
        double.ifconfig(["warden0", "addr"])
        return arp_entries(arp_text), bridge_entries(capsys.readouterr().out)

    arp, fdb = live()
    assert arp["10.0.1.1"][1:] == ("warden0", True)  # the host's own address: permanent
    assert arp_pin_changes(wanted, {}, arp) == ([("10.0.1.3", jail)], [])
    assert bridge_pin_changes(pins, interfaces, fdb) == pins
    assert double.arp(["-S", "10.0.1.3", jail]) == 0
    assert double.ifconfig(["warden0", "static", "e0a_atlascms", jail]) == 0
    arp, fdb = live()
    assert arp["10.0.1.3"] == (jail, "warden0", True) and fdb[jail] == ("e0a_atlascms", True)
    assert arp_pin_changes(wanted, {}, arp) == ([], []) and bridge_pin_changes(pins, interfaces, fdb) == []
    # a static entry stays on its member (bridge_rtupdate); -S replaces an ARP entry
    assert double.ifconfig(["warden0", "static", "e0a_other", jail]) == 0
    assert double.arp(["-S", "10.0.1.3", thief]) == 0
    arp, fdb = live()
    assert fdb[jail] == ("e0a_atlascms", True) and arp_pin_changes(wanted, {}, arp) == ([("10.0.1.3", jail)], [])
    # a removed jail's pin is dropped, and only a permanent one
    assert arp_pin_changes({}, {"10.0.1.3": jail, "10.0.1.9": jail}, arp) == ([], ["10.0.1.3"])
    # what they refuse, as arp.c and ifbridge.c do
    # arp_netlink.c set_nl: an address on no connected network is refused with exit status 0
    assert double.arp(["-S", "10.9.9.9", jail]) == 0
    assert "arp: delete: cannot locate 10.9.9.9" in capsys.readouterr().err and "10.9.9.9" not in live()[0]
    for call, argv, message in (
        (double.arp, ["-S", "10.0.1.4", "02:zz"], "invalid Ethernet address '02:zz'"),
        (double.arp, ["-d", "10.0.1.7"], "arp: delete 10.0.1.7: No such file or directory"),
        (double.ifconfig, ["warden0", "static", "e0a_gone", jail], "BRDGSADDR e0a_gone: No such file or directory"),
        (double.ifconfig, ["warden0", "deladdr", thief], "No such file or directory"),
    ):
        with pytest.raises(SystemExit):
            call(argv)
        assert message in capsys.readouterr().err
    # the member's end takes its entries with it (bridge_delete_member, bridge_rtdelete)
    assert double.ifconfig(["e0a_atlascms", "destroy"]) == 0
    assert jail not in live()[1]
