"""Isolation proven by a reachability matrix (provision/reach.py over provision/pf).

The example fleet's host fbsd1 carries atlas (10.0.1.0/24: atlasgit .2, atlascms .3, the
shared ollama .4, atlasdb .5, API port 3100) and hermes (10.0.0.0/24: hermesgit .2,
hermescms .3, hermesdb .5, API port 3101; it uses atlas's ollama), management LAN
192.168.10.0/24.  The tables below are written by hand from the policy in
docs/isolation.md, not computed: `Y` reachable, `.` blocked, `-` no network path.

Columns: each jail on its service port (git 22, cms 80, ollama 11434, db 5432); sshd on
the source's own gateway (for the LAN and the internet: the external address); sshd on
the external address; each agent's API port on the source's own gateway; the DNS
resolver there (udp 53); a LAN host (tcp 22); an internet host (tcp 443).
"""

from __future__ import annotations

import dataclasses
import shutil
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from provision.inventory import load_inventory
from provision.pf.engine import TCP, UDP, Interface, Packet
from provision.pf.topology import Member, Outside
from provision.reach import build_host, matrix
from provision.registry import load_fleet
from provision.render import HostLayout, layouts

from .conftest import REPO

EXAMPLE = REPO / "examples" / "fleet"
DEFAULT_DENY = (REPO / "examples/host/etc/pf.conf").read_text()
PERMISSIVE = "set skip on lo0\npass in all\npass out all\n"

COLUMNS = (
    "hermesgit hermescms hermesdb atlasgit atlascms ollama atlasdb sshd sshd-ext api:atlas api:hermes dns lan internet"
)

# What the anchor decides, whatever pf.conf says: the host's processes and the jails.
# The agents' own processes reach the management LAN no more than their jails do.
INSIDE = """\
root      Y Y Y Y Y Y Y - - - - - Y Y
atlas     . . . Y Y Y Y - - - - - . Y
hermes    Y Y Y . . Y . - - - - - . Y
hermesgit - Y Y . . Y . . . . Y Y . Y
hermescms Y - Y . . Y . . . . Y Y . Y
hermesdb  Y Y - . . Y . . . . Y Y . Y
atlasgit  . . . - Y Y Y . . Y . Y . Y
atlascms  . . . Y - Y Y . . Y . Y . Y
ollama    . . . Y Y - Y . . Y . Y . Y
atlasdb   . . . Y Y Y - . . Y . Y . Y
"""

# From outside, pf.conf decides.  An empty pf.conf passes everything on the way in, but
# a jail's answer to the LAN is a packet to the management LAN, which the anchor blocks,
# and its answer to the internet leaves through `nat pass` with the host's address.
EMPTY = (
    INSIDE
    + """\
lan       . . . . . . . Y Y Y Y Y - Y
internet  . . . . . . . Y Y Y Y Y Y -
"""
)

# examples/host/etc/pf.conf: `block in log all`, ssh from anywhere (to any address: the git
# jails serve ssh too, and the operator's `pass out quick` carries it on), nothing else.
DEFAULT = (
    INSIDE
    + """\
lan       Y . . Y . . . Y Y . . . - .
internet  Y . . Y . . . Y Y . . . Y -
"""
)

# `pass in all` / `pass out all`: whatever arrives is let through, with states.
OPEN = (
    INSIDE
    + """\
lan       Y Y Y Y Y Y Y Y Y Y Y Y - Y
internet  Y Y Y Y Y Y Y Y Y Y Y Y Y -
"""
)


def table(text: str) -> dict[tuple[str, str], str]:
    cols = COLUMNS.split()
    out = {}
    for line in text.splitlines():
        row, *cells = line.split()
        assert len(cells) == len(cols), line
        out.update({(row, c): v for c, v in zip(cols, cells, strict=True)})
    return out


@pytest.fixture(scope="module")
def fbsd1(example: Path) -> tuple[HostLayout, str]:
    hosts, problems = load_inventory(EXAMPLE / "inventory" / "hosts.yml")
    assert not problems
    fleet = load_fleet(EXAMPLE / "agents", hosts)
    layout = next(lay for lay in layouts(fleet) if lay.name == "fbsd1")
    return layout, (example / "fbsd1/etc/pf.warden.conf").read_text()


def check(layout: HostLayout, anchor: str, pf_conf: str, expected: str) -> None:
    m = matrix(layout, pf_conf, anchor)
    assert m.columns == COLUMNS.split()
    want = table(expected)
    wrong = {k: (m.cells[k], v) for k, v in want.items() if m.cells[k] != v}
    shown = "\n".join(f"{r} -> {c}: got {g}, want {w}: {m.traces.get((r, c))}" for (r, c), (g, w) in wrong.items())
    assert not wrong, f"\n{m.table()}\n{shown}"


def test_reachability_with_an_empty_pf_conf(fbsd1: tuple[HostLayout, str]) -> None:
    check(*fbsd1, "", EMPTY)


def test_reachability_with_the_bundled_default_deny_pf_conf(fbsd1: tuple[HostLayout, str]) -> None:
    check(*fbsd1, DEFAULT_DENY, DEFAULT)


def test_reachability_with_a_permissive_pf_conf(fbsd1: tuple[HostLayout, str]) -> None:
    check(*fbsd1, PERMISSIVE, OPEN)


def test_reachability_holds_against_quick_rules_below_the_hook(fbsd1: tuple[HostLayout, str]) -> None:
    # the operator's quick rules come after our hook: they neither open nor close agent traffic
    check(*fbsd1, "set skip on lo0\nblock in quick on warden0 all\npass out quick all\npass in all\n", OPEN)


def test_reachability_needs_the_bridge_sysctls_we_set(fbsd1: tuple[HostLayout, str]) -> None:
    # Bastille's advice (pfil_member=0, pfil_bridge=0) takes pf off bridged frames: a jail
    # forging another agent's address is no longer caught on its epair.
    layout, anchor = fbsd1
    host, *_ = build_host(layout, DEFAULT_DENY, anchor)
    forged = Packet(TCP, IPv4Address("10.0.0.3"), IPv4Address("10.0.0.5"), 40000, 5432, 0x02)
    spoofer = Member(
        "atlascms", "e0a_atlascms", "warden0", IPv4Address("10.0.0.3"), IPv4Network("10.0.0.0/24"),
        IPv4Address("10.0.0.1"),
    )  # fmt: skip
    host.members = [m for m in host.members if m.name != "atlascms"] + [spoofer]
    trace: list[str] = []
    assert host.send("atlascms", forged, None, trace) is None  # dropped on e0a_atlascms
    assert "in on e0a_atlascms: BLOCK" in trace[0]
    host.sysctl = {"net.link.bridge.pfil_member": 0, "net.link.bridge.pfil_bridge": 0}
    host.firewall.states.clear()
    assert host.send("atlascms", forged, None, []) is not None


def test_a_jail_cannot_speak_as_another_agents_address_to_the_host(fbsd1: tuple[HostLayout, str]) -> None:
    # pfil_local_phys: frames for the host are filtered on the epair too, so a forged source
    # cannot reach hermes's API port on hermes's gateway
    layout, anchor = fbsd1
    host, *_ = build_host(layout, DEFAULT_DENY, anchor)
    forged = Packet(TCP, IPv4Address("10.0.0.3"), IPv4Address("10.0.0.1"), 40000, 3101, 0x02)
    trace: list[str] = []
    assert host.send("atlascms", forged, None, trace) is None
    assert trace[0].startswith("in on e0a_atlascms: BLOCK")


def test_a_guest_cannot_forge_the_hosts_uplink_address(example: Path) -> None:
    # fbsd2 carries novavm on the uplink; a second guest forging 10.255.0.1 (the address the
    # guest's anchor trusts) is dropped by the host's bridge before it reaches novavm
    hosts, _ = load_inventory(EXAMPLE / "inventory" / "hosts.yml")
    fleet = load_fleet(EXAMPLE / "agents", hosts)
    layout = next(lay for lay in layouts(fleet) if lay.name == "fbsd2")
    host, *_ = build_host(layout, "", (example / "fbsd2/etc/pf.warden.conf").read_text())
    uplink = IPv4Network("10.255.0.0/24")
    evil = Member("evilvm", "tap1", "warden0", IPv4Address("10.255.0.11"), uplink, IPv4Address("10.255.0.1"))
    host.members.append(evil)
    host.bridges = {"warden0": ["tap0", "tap1"]}
    ifaces = dict(host.firewall.interfaces)
    ifaces["tap1"] = Interface("tap1", (), frozenset({"tap"}))
    host.firewall.interfaces = ifaces
    forged = Packet(TCP, IPv4Address("10.255.0.1"), IPv4Address("10.255.0.10"), 40000, 22, 0x02)
    trace: list[str] = []
    assert host.send("evilvm", forged, None, trace) is None
    assert trace[0].startswith("in on tap1: BLOCK"), trace  # guests are other agents
    # even where the tap is not filtered, the bridge drops anyone speaking as the host
    host.sysctl = {"net.link.bridge.pfil_member": 0, "net.link.bridge.pfil_bridge": 1}
    trace = []
    assert host.send("evilvm", forged, None, trace) is None
    assert trace[0].startswith("in on warden0: BLOCK (block drop in quick on warden0 from <warden_self>"), trace
    honest = Packet(TCP, IPv4Address("10.255.0.11"), IPv4Address("10.255.0.10"), 40000, 22, 0x02)
    assert host.send("evilvm", honest, None, []) is None  # and guests stay apart anyway


# -- who owns the socket: pf.conf(5) user on the gateway ports and towards the LAN


def test_an_agent_binding_another_agents_api_port_while_it_is_down_gets_nothing(
    fbsd1: tuple[HostLayout, str],
) -> None:
    # atlas is restarting; hermes (an unprivileged host user) binds 10.0.1.1:3100 first
    # (a port above 1023: in_pcbbind_setup lets any user take it when nobody holds it).
    # atlas's jails would send their API calls, and credentials, to hermes.
    layout, anchor = fbsd1
    host, *_ = build_host(layout, DEFAULT_DENY, anchor)
    gateway = IPv4Address("10.0.1.1")
    assert host.listeners[(TCP, 3100)] == "atlas"
    assert host.connect("atlascms", None, gateway, 3100)[0]
    host.listeners = {**host.listeners, (TCP, 3100): "hermes"}
    ok, trace = host.connect("atlascms", None, gateway, 3100)
    assert not ok, trace
    # pf_socket_lookup finds hermes's socket already on the epair (pfil_local_phys)
    assert trace == ["in on e0a_atlascms: BLOCK (block drop in quick from <warden_agents> to (self))"]
    # hermes's own port, taken by atlas, likewise
    host.listeners = {**host.listeners, (TCP, 3100): "atlas", (TCP, 3101): "atlas"}
    assert not host.connect("hermescms", None, IPv4Address("10.0.0.1"), 3101)[0]


def test_a_jail_host_port_is_served_by_its_owner_only(fbsd1: tuple[HostLayout, str]) -> None:
    # warden_jail_host_ports: 8443 is root's (a daemon that binds as root keeps root's
    # credentials, pf.conf(5) user), 9000 is named as squid's.
    from provision.render import _env, render_layout

    layout = dataclasses.replace(fbsd1[0], jail_host_ports=("8443", "tcp/9000@squid"))
    _, files = render_layout(layout, _env())
    anchor = files["/etc/pf.warden.conf"][0]
    assert 'pass in quick proto tcp from 10.0.1.0/24 to 10.0.1.1 port 8443 user "root" keep state' in anchor
    assert 'pass in quick proto tcp from 10.0.0.0/24 to 10.0.0.1 port 9000 user "squid" keep state' in anchor
    host, *_ = build_host(layout, DEFAULT_DENY, anchor)
    gateway = IPv4Address("10.0.1.1")
    host.listeners = {**host.listeners, (TCP, 8443): "root", (TCP, 9000): "squid"}
    assert host.connect("atlascms", None, gateway, 8443)[0]
    assert host.connect("atlascms", None, gateway, 9000)[0]
    host.listeners = {**host.listeners, (TCP, 8443): "hermes", (TCP, 9000): "atlas"}  # both servers down
    assert not host.connect("atlascms", None, gateway, 8443)[0]
    assert not host.connect("atlascms", None, gateway, 9000)[0]


def test_agents_processes_open_only_dns_on_the_management_lan(fbsd1: tuple[HostLayout, str]) -> None:
    # a LAN host that also runs the resolver the host's resolv.conf names (a router)
    layout, anchor = fbsd1
    host, *_ = build_host(layout, "", anchor)
    lan = next(o for o in host.outside if o.name == "lan")
    host.outside = [o for o in host.outside if o.name != "lan"]
    host.outside.append(Outside("lan", lan.interface, lan.address, frozenset({(TCP, 22), (TCP, 80), (UDP, 53)})))
    for user in ("atlas", "hermes"):
        for port in (22, 80):
            ok, trace = host.connect("host", user, lan.address, port)
            assert not ok and "flags S/SA" in trace[0], trace
        assert host.connect("host", user, lan.address, 53, UDP)[0]
    assert host.connect("host", "root", lan.address, 22)[0]
    assert host.connect("host", "unbound", lan.address, 53, UDP)[0]  # a host resolver forwarding there
    # what pf.conf lets in from the LAN (here: everything, statelessly) is still answered
    assert host.connect("lan", None, IPv4Address("192.168.10.2"), 3100)[0]


def test_reach_command_prints_the_matrix(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from provision import cli

    monkeypatch.setenv("PROVISION_INVENTORY", str(EXAMPLE / "inventory" / "hosts.yml"))
    monkeypatch.setenv("PROVISION_AGENTS_DIR", str(EXAMPLE / "agents"))
    assert cli.reach("fbsd1", pf_conf=str(REPO / "examples/host/etc/pf.conf")) == 0
    out = capsys.readouterr().out
    assert COLUMNS in " ".join(out.split())
    atlas = next(ln.split()[1:] for ln in out.splitlines() if ln.startswith("atlas "))
    assert " ".join(atlas) == ". . . Y Y Y Y - - - - - . Y"
    with pytest.raises(cli.CommandError, match="bhyve guest"):
        cli.reach("novavm")


# -- layer 2: ARP and the bridge's forwarding table (docs/isolation.md "Layer 2 on the shared bridge")


def _unpin(host: object) -> None:
    """The host as it is without warden's pins: every ARP and forwarding entry dynamic."""
    from provision.pf.topology import Host

    assert isinstance(host, Host)
    host.arp = {}
    host.fdb = {m.lladdr: (m.member, False) for m in host.members}
    host.caches = {}


def test_a_jail_answering_arp_for_another_agents_address_does_not_get_the_hosts_packets(
    fbsd1: tuple[HostLayout, str],
) -> None:
    # root in atlascms answers ARP for hermescms's 10.0.0.3; ARP passes pf (bridge_pfil),
    # and the host's own packets leave by bridge_output, unfiltered on the members.
    layout, anchor = fbsd1
    host, *_ = build_host(layout, DEFAULT_DENY, anchor)
    victim = IPv4Address("10.0.0.3")
    syn = Packet(TCP, IPv4Address("10.0.0.1"), victim, 40000, 80, 0x02)
    trace: list[str] = []
    host.arp_reply("atlascms", victim, trace)
    assert "attempts to modify permanent entry for 10.0.0.3" in trace[0]
    got = host.send("host", syn, "root", [])
    assert got is not None and got[0] == "hermescms"
    assert host.connect("host", "root", victim, 80)[0]
    # Without the permanent entry the reply is believed and the SYN lands in atlascms.
    _unpin(host)
    host.arp_reply("atlascms", victim)
    got = host.send("host", syn, "root", [])
    assert got is not None and got[0] == "atlascms"


def test_a_jail_sending_with_another_jails_mac_does_not_steal_its_frames(fbsd1: tuple[HostLayout, str]) -> None:
    # atlascms sends a frame whose source is hermescms's MAC: the bridge would move that
    # MAC to e0a_atlascms (bridge_rtupdate) and hand it the host's frames for hermescms.
    layout, anchor = fbsd1
    host, *_ = build_host(layout, DEFAULT_DENY, anchor)
    victim = next(m for m in host.members if m.name == "hermescms")
    assert victim.mac.startswith("02:")
    host.learn("atlascms", victim.lladdr)
    assert host.fdb[victim.lladdr] == ("e0a_hermescms", True)
    syn = Packet(TCP, IPv4Address("10.0.0.1"), victim.address, 40000, 80, 0x02)
    got = host.send("host", syn, "root", [])
    assert got is not None and got[0] == "hermescms"
    assert host.connect("hermesgit", None, victim.address, 80)[0]
    _unpin(host)
    host.learn("atlascms", victim.lladdr)
    got = host.send("host", syn, "root", [])
    assert got is not None and got[0] == "atlascms"  # what the pins prevent
    # hermes's own jail-to-jail traffic goes there too: the state its first packet made on
    # e0a_hermesgit floats, so `out on e0a_atlascms` matches that state before any rule.
    host.firewall.states.clear()
    hello = Packet(TCP, IPv4Address("10.0.0.2"), victim.address, 40000, 80, 0x02)
    got = host.send("hermesgit", hello, None, [])
    assert got is not None and got[0] == "atlascms"


def test_a_jail_poisoning_another_agents_arp_caches_does_not_get_their_traffic(
    fbsd1: tuple[HostLayout, str],
) -> None:
    # root in atlascms claims hermes's gateway 10.0.0.1 and hermesdb's 10.0.0.5 (gratuitous
    # ARP, or answers to the hermes jails' requests).  ARP passes pf, and rc.d/static_arp
    # does not run in a VNET jail: only the entries jail.conf's exec.start sets in each
    # jail are permanent (docs/isolation.md "Layer 2 on the shared bridge").
    layout, anchor = fbsd1
    host, *_ = build_host(layout, DEFAULT_DENY, anchor)
    gateway, db, cms = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.5"), IPv4Address("10.0.0.3")
    trace: list[str] = []
    for victim in (gateway, db):
        host.poison("atlascms", victim, trace)
    assert any(t.startswith("arp in hermescms:") and t.endswith(f"permanent entry for {gateway}") for t in trace)
    assert any(t.startswith("arp in hermescms:") and t.endswith(f"permanent entry for {db}") for t in trace)
    # hermescms's database connection, its agent's API on the gateway, the internet: all
    # still reach the real peer.
    assert host.connect("hermescms", None, db, 5432)[0]
    assert host.connect("hermescms", None, gateway, 3101)[0]
    assert host.connect("hermescms", None, IPv4Address("203.0.113.10"), 443)[0]
    to_db = Packet(TCP, cms, db, 40000, 5432, 0x02)
    to_api = Packet(TCP, cms, gateway, 40000, 3101, 0x02)
    to_llm = Packet(TCP, cms, IPv4Address("10.0.1.4"), 40000, 11434, 0x02)  # the shared ollama, routed
    to_web = Packet(TCP, cms, IPv4Address("203.0.113.10"), 40000, 443, 0x02)
    assert (host.send("hermescms", to_db, None, []) or ("",))[0] == "hermesdb"
    assert (host.send("hermescms", to_api, "hermes", []) or ("",))[0] == "host"  # the API socket is hermes's
    assert (host.send("hermescms", to_llm, None, []) or ("",))[0] == "ollama"
    assert (host.send("hermescms", to_web, None, []) or ("",))[0] == "internet"
    # Without the jails' own pins the frames go to e0a_atlascms, and the states their first
    # pass made float: atlascms reads hermes's database traffic and everything hermescms
    # sends through its gateway (only what is for the host's own addresses is dropped on
    # the epair: `block drop in quick from <warden_agents> to (self)`).
    _unpin(host)
    for victim in (gateway, db):
        host.poison("atlascms", victim)
    for packet in (to_db, to_llm, to_web):
        host.firewall.states.clear()
        got = host.send("hermescms", packet, None, [])
        assert got is not None and got[0] == "atlascms", packet


def _guest_env(name: str, subnet: str, vm_ip: str) -> str:
    return (
        (EXAMPLE / "agents/nova/.env")
        .read_text()
        .replace("nova", name)
        .replace("Nova", name.title())
        .replace("10.1.0", subnet)
        .replace("10.255.0.10", vm_ip)
    )


def _three_guests(tmp_path: Path) -> list[HostLayout]:
    """fbsd2 with three guests: nova and orion are linked, vega is not."""

    shutil.copytree(EXAMPLE, tmp_path / "fleet")
    agents = tmp_path / "fleet/agents"
    for name, subnet, ip in (("orion", "10.2.0", "10.255.0.11"), ("vega", "10.3.0", "10.255.0.12")):
        (agents / name).mkdir()
        (agents / name / ".env").write_text(_guest_env(name, subnet, ip))
    inv = tmp_path / "fleet/inventory/hosts.yml"
    text = inv.read_text().replace("          warden_pool: 10.1.0.0/16\n", "          warden_pool: 10.0.0.0/8\n")
    text = text.replace("        fbsd2:\n", "        fbsd2:\n          warden_agent_links: [[nova, orion]]\n")
    inv.write_text(text)
    hosts, problems = load_inventory(inv)
    assert not problems, problems
    return layouts(load_fleet(agents, hosts))


def test_a_guest_forging_a_linked_guests_uplink_address_is_dropped(tmp_path: Path) -> None:
    # vega forges orion's uplink address to reach nova, whose own anchor lets orion in.
    from provision.render import _env, render_layout

    layout = next(lay for lay in _three_guests(tmp_path) if lay.name == "fbsd2")
    _, files = render_layout(layout, _env())
    host, *_ = build_host(layout, "", files["/etc/pf.warden.conf"][0])
    nova = IPv4Address("10.255.0.10")
    assert host.connect("orionvm", None, nova, 22)[0]  # linked
    assert not host.connect("vegavm", None, nova, 22)[0]  # not linked
    forged = Packet(TCP, IPv4Address("10.255.0.11"), nova, 40000, 22, 0x02)
    trace: list[str] = []
    assert host.send("vegavm", forged, None, trace) is None
    assert trace[0].startswith("in on vm_vega: BLOCK"), trace


def test_a_guest_claiming_the_uplink_gateway_does_not_get_another_guests_traffic(tmp_path: Path) -> None:
    # root in vegavm claims 10.255.0.1, the host on the uplink, which the guest anchors
    # trust.  Each guest's rc.conf pins it (rc.d/static_arp runs in a guest) to the MAC
    # the host's rc.conf gives warden0.
    from provision.render import _env, render_layout

    by_name = {lay.name: lay for lay in _three_guests(tmp_path)}
    host_manifest, files = render_layout(by_name["fbsd2"], _env())
    ether = next(e.value for e in host_manifest.rc_conf if e.name == "ifconfig_warden0_aliases")
    for guest in ("novavm", "orionvm", "vegavm"):
        guest_manifest, _ = render_layout(by_name[guest], _env())
        pin = next(e.value for e in guest_manifest.rc_conf if e.name == "static_arp_warden_uplink")
        assert pin == f"10.255.0.1 {ether.removeprefix('ether ')}"
    host, *_ = build_host(by_name["fbsd2"], PERMISSIVE, files["/etc/pf.warden.conf"][0])
    uplink = IPv4Address("10.255.0.1")
    out = Packet(TCP, IPv4Address("10.255.0.10"), IPv4Address("203.0.113.10"), 40000, 443, 0x02)
    trace: list[str] = []
    host.poison("vegavm", uplink, trace)
    assert any(t.startswith("arp in novavm:") and t.endswith(f"permanent entry for {uplink}") for t in trace)
    got = host.send("novavm", out, None, [])
    assert got is not None and got[0] == "internet"
    _unpin(host)
    host.poison("vegavm", uplink)
    host.firewall.states.clear()
    got = host.send("novavm", out, None, [])
    assert got is not None and got[0] == "vegavm"
