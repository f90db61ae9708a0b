"""The isolation policy (provision/isolation.py): its values, its sysctl block, its input checks."""

from __future__ import annotations

import pytest

from provision.inventory import load_inventory
from provision.isolation import sysctl_changes, sysctl_conf_result, sysctl_lines
from provision.models import PolicyError, parse_host_ports

from .conftest import Registry
from .test_render import render, three_agents


def test_host_ports_are_port_or_proto_slash_port_by_full_match() -> None:
    assert parse_host_ports([8443, "udp/123", "tcp/8443"]) == [("tcp", 8443), ("udp", 123)]
    for bad in ("8443\n", "sctp/1", "udp/123 # x", "0", "70000", "tcp/"):
        with pytest.raises(PolicyError):
            parse_host_ports([bad])


def test_jail_host_ports_open_the_gateway_port_to_each_agents_jails(registry: Registry) -> None:
    registry.write_inventory(
        "warden_hosts:\n  hosts:\n    fbsd1:\n      warden_ext_if: vtnet0\n"
        "      warden_jail_host_ports: [8443, udp/123]\n"
    )
    three_agents(registry)
    pf = (render(registry) / "fbsd1/etc/pf.warden.conf").read_text()
    for net, gw in (("10.0.1.0/24", "10.0.1.1"), ("10.0.3.0/24", "10.0.3.1")):
        assert f"pass in quick proto tcp from {net} to {gw} port 8443 keep state" in pf
        assert f"pass in quick proto udp from {net} to {gw} port 123 keep state" in pf
    # and nothing else on the host: the block after the ports
    assert pf.index("port 8443") < pf.index("block drop in quick from <warden_agents> to (self)")


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
