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

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from provision.inventory import load_inventory
from provision.pf.engine import TCP, Interface, Packet
from provision.pf.topology import Member
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
INSIDE = """\
root      Y Y Y Y Y Y Y - - - - - Y Y
atlas     . . . Y Y Y Y - - - - - Y Y
hermes    Y Y Y . . Y . - - - - - Y Y
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


def test_reach_command_prints_the_matrix(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from provision import cli

    monkeypatch.setenv("PROVISION_INVENTORY", str(EXAMPLE / "inventory" / "hosts.yml"))
    monkeypatch.setenv("PROVISION_AGENTS_DIR", str(EXAMPLE / "agents"))
    assert cli.reach("fbsd1", pf_conf=str(REPO / "examples/host/etc/pf.conf")) == 0
    out = capsys.readouterr().out
    assert COLUMNS in " ".join(out.split())
    atlas = next(ln.split()[1:] for ln in out.splitlines() if ln.startswith("atlas "))
    assert " ".join(atlas) == ". . . Y Y Y Y - - - - - Y Y"
    with pytest.raises(cli.CommandError, match="bhyve guest"):
        cli.reach("novavm")
