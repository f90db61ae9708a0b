"""The PF evaluator (provision/pf): pf.conf(5) semantics on plain values.

Each test states one behaviour of pf(4)/pfctl(8) and the source it follows; the
evaluator sends nothing, the addresses are data.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, ip_address

import pytest

from provision.pf import Firewall, Packet, PfSyntaxError, parse_ruleset
from provision.pf.engine import ACK, SYN, TCP, UDP, Interface, addresses_of, host_net
from provision.pf.topology import Host, Member, Outside

A = ip_address


def V4(text: str) -> IPv4Address:
    return IPv4Address(text)


IFACES = {
    "vtnet0": Interface("vtnet0", (host_net("192.0.2.2/24"),)),
    "lo0": Interface("lo0", (host_net("127.0.0.1/8"),), frozenset({"lo"})),
    "warden0": Interface("warden0", (host_net("10.0.1.1/24"), host_net("10.0.2.1/24")), frozenset({"bridge"})),
    "e0a_a": Interface("e0a_a", (), frozenset({"epair"})),
    "e0a_b": Interface("e0a_b", (), frozenset({"epair"})),
    "e0a_c": Interface("e0a_c", (), frozenset({"epair"})),
}
USERS = {"root": 0, "atlas": 1001, "hermes": 1002}


def fw(text: str, files: dict[str, str] | None = None, **kw: object) -> Firewall:
    rs = parse_ruleset(text, files=files, interfaces=addresses_of(IFACES))
    return Firewall(rs, IFACES, USERS, **kw)  # type: ignore[arg-type]


def syn(src: str, dst: str, port: int, user: str | None = None, flags: int = SYN) -> Packet:
    return Packet(TCP, A(src), A(dst), 40000, port, flags, user=user)


def passes(f: Firewall, p: Packet, ifname: str = "vtnet0", direction: str = "in") -> bool:
    return f.test(p, ifname, direction).passed


def test_last_matching_rule_wins() -> None:
    f = fw("block in all\npass in proto tcp to port 22\n")
    assert passes(f, syn("198.51.100.1", "192.0.2.2", 22))
    assert not passes(f, syn("198.51.100.1", "192.0.2.2", 80))


def test_quick_ends_evaluation() -> None:
    f = fw("block in quick all\npass in proto tcp to port 22\n")
    assert not passes(f, syn("198.51.100.1", "192.0.2.2", 22))


def test_no_matching_rule_passes_without_state() -> None:
    f = fw("block out all\n")
    assert passes(f, syn("198.51.100.1", "192.0.2.2", 22))
    assert f.states == []


def test_anchor_is_evaluated_at_its_position() -> None:
    main = 'block in all\nanchor "a"\nload anchor "a" from "/a"\npass in proto tcp to port 23\n'
    f = fw(main, {"/a": "pass in proto tcp to port 22\nblock in quick proto tcp to port 24\n"})
    assert passes(f, syn("198.51.100.1", "192.0.2.2", 22))  # the anchor's pass, nothing later matches
    assert passes(f, syn("198.51.100.1", "192.0.2.2", 23))  # the main rule after the anchor wins
    assert not passes(f, syn("198.51.100.1", "192.0.2.2", 24))  # quick inside the anchor is final
    # a non-quick pass in the anchor loses to a later main block (last match)
    g = fw('anchor "a"\nload anchor "a" from "/a"\nblock in all\n', {"/a": "pass in all\n"})
    assert not passes(g, syn("198.51.100.1", "192.0.2.2", 22))


def test_wildcard_anchor_evaluates_children_alphabetically() -> None:
    main = 'anchor "w/*"\nload anchor "w/b" from "/b"\nload anchor "w/a" from "/a"\n'
    f = fw(main, {"/a": "block in quick proto tcp to port 22\n", "/b": "pass in quick all\n"})
    assert not passes(f, syn("198.51.100.1", "192.0.2.2", 22))  # w/a before w/b
    assert passes(f, syn("198.51.100.1", "192.0.2.2", 80))


def test_anchor_files_do_not_see_main_macros() -> None:
    with pytest.raises(PfSyntaxError, match="macro 'ext_if' not defined"):
        fw('ext_if = "vtnet0"\nanchor "a"\nload anchor "a" from "/a"\n', {"/a": "pass in on $ext_if\n"})


def test_nat_comes_before_filtering() -> None:
    text = (
        "nat on vtnet0 from 10.0.1.0/24 to any -> (vtnet0)\n"
        "block out on vtnet0 all\n"
        "pass out on vtnet0 from (vtnet0) to any\n"
    )
    f = fw(text)
    v = f.test(syn("10.0.1.3", "198.51.100.1", 443), "vtnet0", "out")
    assert v.passed and v.packet.src == A("192.0.2.2")
    # the answer finds the state and is translated back to the jail
    back = f.test(v.packet.reply(SYN | ACK), "vtnet0", "in")
    assert back.passed and back.packet.dst == A("10.0.1.3")


def test_stateful_pass_needs_a_syn_and_the_state_carries_the_rest() -> None:
    f = fw("block all\npass in proto tcp to port 22\n")
    mid = syn("198.51.100.1", "192.0.2.2", 22, flags=ACK)
    assert not passes(f, mid)  # flags S/SA by default: a mid-stream packet creates nothing
    assert passes(f, syn("198.51.100.1", "192.0.2.2", 22))
    assert passes(f, mid)  # now the state matches
    reply = syn("198.51.100.1", "192.0.2.2", 22).reply(SYN | ACK)
    assert passes(f, reply, "vtnet0", "out")


def test_flags_any_or_no_state_passes_mid_stream() -> None:
    mid = syn("198.51.100.1", "192.0.2.2", 22, flags=ACK)
    assert passes(fw("block all\npass in proto tcp to port 22 flags any\n"), mid)
    assert passes(fw("block all\npass in proto tcp to port 22 no state\n"), mid)


def test_states_float_across_interfaces_unless_if_bound() -> None:
    f = fw("block all\npass in on e0a_a all\n")
    p = syn("10.0.1.2", "10.0.1.3", 80)
    assert passes(f, p, "e0a_a") and passes(f, p, "warden0")  # the state made on e0a_a matches
    assert not passes(f, p, "warden0", "out")  # other direction: another key (pf_find_state)
    g = fw("set state-policy if-bound\nblock all\npass in on e0a_a all\n")
    assert passes(g, p, "e0a_a") and not passes(g, p, "warden0")
    # pf.conf(5) STATEFUL TRACKING OPTIONS: a rule's own `(if-bound)`/`(floating)` wins
    # over the global policy (pf.c BOUND_IFACE)
    h = fw("block all\npass in on e0a_a all keep state (if-bound)\n")
    assert passes(h, p, "e0a_a") and not passes(h, p, "warden0")
    k = fw("set state-policy if-bound\nblock all\npass in on e0a_a all keep state (floating, max 10)\n")
    assert passes(k, p, "e0a_a") and passes(k, p, "warden0")


def test_user_matches_local_sockets_and_unknown_forwarded() -> None:
    f = fw("block out all\npass out proto tcp all user atlas\npass out proto tcp all user = unknown\n")
    assert passes(f, syn("10.0.1.1", "10.0.1.3", 80, user="atlas"), "warden0", "out")
    f.states.clear()  # that connection's state would carry the next packet
    assert not passes(f, syn("10.0.1.1", "10.0.1.3", 80, user="hermes"), "warden0", "out")
    assert passes(f, syn("10.0.2.3", "10.0.1.3", 80), "warden0", "out")  # forwarded: unknown
    g = fw("block out all\npass out all user atlas\n")
    icmp = Packet(1, A("10.0.1.1"), A("10.0.1.3"), user="atlas")
    assert not passes(g, icmp, "warden0", "out")  # only TCP and UDP packets have a user


def test_unknown_user_is_refused() -> None:
    with pytest.raises(PfSyntaxError, match="unknown user nobodyhere"):
        fw("pass out all user nobodyhere\n")


def test_set_skip_and_interface_groups() -> None:
    f = fw("set skip on lo0\nblock all\npass on epair all\n")
    assert passes(f, syn("127.0.0.1", "127.0.0.1", 22), "lo0")
    assert passes(f, syn("10.0.1.2", "10.0.1.3", 80), "e0a_b")  # e0a_b is in group epair
    f.states.clear()
    assert not passes(f, syn("10.0.1.2", "10.0.1.3", 80), "warden0")


def test_lists_expand_like_pfctl_including_negations() -> None:
    # pfctl makes two rules of this: `from ! 10.0.1.5` and `from 10.0.1.0/24`
    f = fw("block in all\npass in from { ! 10.0.1.5, 10.0.1.0/24 } to any\n")
    assert passes(f, syn("10.0.1.5", "192.0.2.2", 22))


def test_tables_most_specific_entry_decides() -> None:
    f = fw("table <t> const { 10.0.1.0/24, !10.0.1.1 }\nblock in all\npass in from <t> to any\n")
    assert passes(f, syn("10.0.1.3", "192.0.2.2", 22))
    assert not passes(f, syn("10.0.1.1", "192.0.2.2", 22))


def test_macros_lists_and_self() -> None:
    text = 'nets = "{ 10.0.1.0/24 10.0.2.0/24 }"\nblock in all\npass in proto tcp from $nets to (self) port ssh\n'
    f = fw(text)
    assert passes(f, syn("10.0.2.3", "10.0.1.1", 22), "warden0")
    assert not passes(f, syn("10.0.2.3", "10.0.3.9", 22), "warden0")


def test_antispoof_expands_from_the_interface_addresses() -> None:
    f = fw("antispoof for vtnet0 inet\n")
    assert not passes(f, syn("192.0.2.9", "10.0.1.1", 22), "warden0")  # vtnet0's network, not on vtnet0
    assert not passes(f, syn("192.0.2.2", "10.0.1.1", 22), "vtnet0")  # the host's own address
    assert passes(f, syn("192.0.2.9", "192.0.2.2", 22), "vtnet0")


@pytest.mark.parametrize(
    "text",
    [
        "match in all scrub (no-df)\n",
        "block in from no-route to any\n",
        "pass in proto tcp to port nosuchservice\n",
        "pass in on $nosuchmacro\n",
        "pass in all route-to (vtnet0 192.0.2.1)\n",
        "binat on vtnet0 from 10.0.1.5 to any -> 192.0.2.5\n",
        "ether pass in all\n",
        'anchor "a" {\n pass\n}\n',
        "nat on vtnet0 from 10.0.1.0/24 to any\n",
        "pass in from example.org to any\n",
    ],
)
def test_what_it_does_not_understand_is_an_error(text: str) -> None:
    with pytest.raises(PfSyntaxError):
        fw(text)


# -- topology: the bridge's pfil hooks ---------------------------------------------------


def bridge_host(text: str, sysctl: dict[str, int] | None = None) -> Host:
    members = [
        Member(
            "a", "e0a_a", "warden0", V4("10.0.1.2"), IPv4Network("10.0.1.0/24"), V4("10.0.1.1"), frozenset({(TCP, 80)})
        ),
        Member(
            "b", "e0a_b", "warden0", V4("10.0.1.3"), IPv4Network("10.0.1.0/24"), V4("10.0.1.1"), frozenset({(TCP, 80)})
        ),
        Member(
            "c", "e0a_c", "warden0", V4("10.0.2.3"), IPv4Network("10.0.2.0/24"), V4("10.0.2.1"), frozenset({(TCP, 80)})
        ),
    ]
    outside = [Outside("internet", "vtnet0", V4("198.51.100.7"), frozenset({(TCP, 443), (UDP, 53)}))]
    host = Host(fw(text), {"warden0": ["e0a_a", "e0a_b", "e0a_c"]}, "vtnet0", members, outside, {(TCP, 22): "root"})
    if sysctl is not None:
        host.sysctl = sysctl
    return host


def test_bridged_frames_are_filtered_on_the_members_by_default() -> None:
    # if_bridge.c bridge_pfil: pfil_member=1 filters `in on e0a_a` before `in on warden0`
    host = bridge_host("block all\npass quick on warden0 all\n")
    ok, trace = host.connect("a", None, V4("10.0.1.3"), 80)
    assert not ok and "in on e0a_a: BLOCK" in trace[0]
    off = {"net.link.bridge.pfil_member": 0, "net.link.bridge.pfil_bridge": 1}
    assert bridge_host("block all\npass quick on warden0 all\n", off).connect("a", None, V4("10.0.1.3"), 80)[0]


def test_local_delivery_is_filtered_on_the_bridge_and_on_the_member_only_with_local_phys() -> None:
    text = "block all\npass quick on warden0 all\n"
    host = bridge_host(text)
    host.listeners = {(TCP, 22): "root"}
    assert host.connect("a", None, V4("10.0.1.1"), 22)[0]  # GRAB_OUR_PACKETS: no member pass
    host.sysctl = {"net.link.bridge.pfil_local_phys": 1, "net.link.bridge.pfil_member": 1}
    assert not host.connect("a", None, V4("10.0.1.1"), 22)[0]


def test_routed_and_natted_paths_come_back_through_states() -> None:
    text = (
        "nat on vtnet0 from 10.0.0.0/16 to any -> (vtnet0)\nblock all\npass in on warden0 all\npass out on vtnet0 all\n"
    )
    ok, trace = bridge_host(text).connect("c", None, V4("198.51.100.7"), 443)
    assert ok, trace
    ok, trace = bridge_host(text).connect("c", None, V4("10.0.1.2"), 80)  # routed to the other /24
    assert not ok  # `out on warden0` has no pass and no state covers that direction
    ok, _ = bridge_host(text + "pass out on warden0 all\n").connect("c", None, V4("10.0.1.2"), 80)
    assert ok
