"""`invoke reach`: who can reach whom on one machine, computed from its PF rules.

The machine is modelled from its layout (render.py): the external interface, lo0, the
bridge with a gateway per agent /24 (and the guests' uplink), one epair per jail and a
tap per bhyve guest as bridge members, this host's listening sockets (sshd as root, each
agent's API port as the agent, a DNS resolver), a management-LAN host and an internet
host behind the external interface.  The ruleset is the operator's pf.conf with our
hook lines (pfconf.hook), the rendered anchor, and the bridge sysctls we set
(isolation.SYSCTLS).  Each cell plays a TCP handshake (UDP for DNS) through the
topology (pf/topology.py) with a fresh state table.  Nothing is sent on any network:
the addresses are data.

Cells: `Y` reachable, `.` blocked, `-` not a network path (a jail to itself, a host
process to a socket on its own host: loopback, which pf.conf usually skips).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from .isolation import SYSCTLS, guest_tap
from .models import parse_host_ports
from .pf import Firewall, parse_ruleset
from .pf.engine import TCP, UDP, Interface, addresses_of
from .pf.topology import Host, Member, Outside
from .pfconf import hook

# What each jail role serves (the Bastillefile templates install these services).
ROLE_PORTS = {"git": 22, "cms": 80, "ollama": 11434, "llamacpp": 8080, "db": 5432}
INTERNET = IPv4Address("203.0.113.10")  # TEST-NET-3 (RFC 5737): data only
DEFAULT_EXT = IPv4Interface("198.51.100.2/24")  # TEST-NET-2, when no warden_host_networks says better
DNS_USER = "unbound"


@dataclass(frozen=True)
class Column:
    name: str
    target: str  # a member name, "host" (address chosen per source), "host-ext", "lan", "internet"
    proto: int
    port: int


@dataclass
class Matrix:
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], str]
    traces: dict[tuple[str, str], list[str]]
    assumptions: list[str]

    def table(self) -> str:
        width = max(len(r) for r in self.rows)
        head = " " * width + " " + " ".join(self.columns)
        lines = [head]
        for r in self.rows:
            cells = [self.cells[(r, c)].center(len(c)) for c in self.columns]
            lines.append(r.ljust(width) + " " + " ".join(cells))
        return "\n".join(lines)


def _ext_address(host_networks: list[IPv4Network]) -> IPv4Interface:
    if host_networks:
        net = host_networks[0]
        return IPv4Interface(f"{net.network_address + 2}/{net.prefixlen}")
    return DEFAULT_EXT


def build_host(
    layout: object,
    pf_conf: str,
    anchor_text: str,
    *,
    ext_address: IPv4Interface | None = None,
    sysctl: Mapping[str, int] | None = None,
) -> tuple[Host, list[Column], list[tuple[str, str, str | None]], list[str]]:
    """The modelled machine, its columns, its rows (name, origin, user) and the assumptions made."""
    from .models import bridge_mac
    from .render import PF_ANCHOR, PF_ANCHOR_FILE, HostLayout, jail_specs, policy_of

    assert isinstance(layout, HostLayout)
    assumptions: list[str] = []
    host_nets = list(layout.host_networks)
    ext = ext_address or _ext_address(host_nets)
    if ext_address is None:
        assumptions.append(f"{layout.ext_if} has the address {ext}")
    gateways: list[tuple[IPv4Network, IPv4Address]] = [(a.subnet, a.gateway) for a in layout.agents]
    if layout.guests and layout.vm_uplink is not None:
        gateways.append((layout.vm_uplink, layout.vm_uplink.network_address + 1))
    if layout.parent is not None and layout.vm_uplink is not None and layout.uplink_ip is not None:
        ext = IPv4Interface(f"{layout.uplink_ip}/{layout.vm_uplink.prefixlen}")
    ext_if = layout.ext_if or "ext0"
    ifaces: dict[str, Interface] = {
        ext_if: Interface(ext_if, (ext,)),
        "lo0": Interface("lo0", (IPv4Interface("127.0.0.1/8"),), frozenset({"lo"})),
        layout.bridge: Interface(
            layout.bridge,
            tuple(IPv4Interface(f"{gw}/{net.prefixlen}") for net, gw in sorted(gateways)),
            frozenset({"bridge"}),
        ),
    }
    members: list[Member] = []
    owner = {}
    for agent in layout.agents:
        for jail in agent.jails:
            if jail.ip in agent.subnet or jail.name not in owner:
                owner[jail.name] = (agent, jail)
    # The MACs and names the policy pins (isolation.py), as the network role sets them.
    pinned = {m.jail: m for m in policy_of(layout).members}
    for name in sorted(owner, key=lambda n: owner[n][1].ip):
        agent, jail = owner[name]
        epair = f"e0a_{name}"
        ifaces[epair] = Interface(epair, (), frozenset({"epair"}))
        port = ROLE_PORTS[jail.role]
        mac = pinned[name].mac if name in pinned else ""
        members.append(
            Member(name, epair, layout.bridge, jail.ip, agent.subnet, agent.gateway, frozenset({(TCP, port)}), mac=mac)
        )
    for i, guest in enumerate(sorted(layout.guests, key=lambda g: g.name)):
        assert guest.vm_ip is not None and layout.vm_uplink is not None
        tap = guest_tap(guest.vm_name) or f"tap{i}"
        ifaces[tap] = Interface(tap, (), frozenset({"tap"}))
        members.append(
            Member(
                guest.vm_name,
                tap,
                layout.bridge,
                guest.vm_ip,
                layout.vm_uplink,
                layout.vm_uplink.network_address + 1,
                frozenset({(TCP, 22)}),
            )
        )
    outside: list[Outside] = []
    if host_nets:
        lan = host_nets[0]
        outside.append(Outside("lan", ext_if, lan.broadcast_address - 1, frozenset({(TCP, 22)})))
    outside.append(Outside("internet", ext_if, INTERNET, frozenset({(TCP, 443)})))
    users = {"root": 0, DNS_USER: 59}
    users.update({a.name: 1001 + i for i, a in enumerate(sorted(layout.agents, key=lambda a: a.name))})
    # The owners warden_jail_host_ports names (pfctl resolves them on the host at load time).
    for i, served_by in enumerate(sorted({o for *_, o in parse_host_ports(layout.jail_host_ports)} - set(users))):
        users[served_by] = 2001 + i
        assumptions.append(f"{served_by}, owner of a warden_jail_host_ports port, has uid {2001 + i}")
    listeners: dict[tuple[int, int], str] = {(TCP, 22): "root", (UDP, 53): DNS_USER}
    for a in layout.agents:
        listeners[(TCP, a.api_port)] = a.name
    hooked = hook(pf_conf, PF_ANCHOR, PF_ANCHOR_FILE)
    rs = parse_ruleset(hooked, files={PF_ANCHOR_FILE: anchor_text}, interfaces=addresses_of(ifaces))
    fw = Firewall(rs, ifaces, users)
    values = {name: int(v) for name, v in SYSCTLS} if sysctl is None else dict(sysctl)
    bridges = {layout.bridge: [m.member for m in members]}
    host = Host(fw, bridges, ext_if, members, outside, listeners, values)
    host.bridge_macs[layout.bridge] = bridge_mac(layout.name, layout.bridge)  # ifconfig_<bridge>_aliases
    for m in members:
        if m.mac:  # `arp -S` and `ifconfig BRIDGE static` (roles/warden_network, jail.conf)
            host.pin(m.address, m.mac, m.member)
    # Each jail's own permanent entries (jail.conf exec.start: its gateway and its /24's
    # jails), each guest's for its default router (its rc.conf, rendered by its own layout).
    for spec in jail_specs(layout):
        for pair in spec.arp:
            address, mac = pair.split(" ")
            host.pin_in(spec.name, IPv4Address(address), mac)
    if layout.guests and layout.vm_uplink is not None:
        for m in members:
            if m.network == layout.vm_uplink:
                host.pin_in(m.name, m.gateway, host.bridge_mac(layout.bridge))
    columns = [Column(m.name, m.name, TCP, next(iter(m.listens))[1]) for m in members]
    columns.append(Column("sshd", "host", TCP, 22))
    columns.append(Column("sshd-ext", "host-ext", TCP, 22))
    columns += [Column(f"api:{a.name}", "host", TCP, a.api_port) for a in sorted(layout.agents, key=lambda a: a.name)]
    columns.append(Column("dns", "host", UDP, 53))
    columns += [Column(o.name, o.name, TCP, next(iter(o.listens))[1]) for o in outside]
    rows: list[tuple[str, str, str | None]] = [("root", "host", "root")]
    rows += [(a.name, "host", a.name) for a in sorted(layout.agents, key=lambda a: a.name)]
    rows += [(m.name, m.name, None) for m in members]
    rows += [(o.name, o.name, None) for o in outside]
    return host, columns, rows, assumptions


def matrix(
    layout: object,
    pf_conf: str,
    anchor_text: str,
    *,
    ext_address: IPv4Interface | None = None,
    sysctl: Mapping[str, int] | None = None,
) -> Matrix:
    """Every row-by-column verdict for LAYOUT under PF_CONF (the operator's file, unhooked or
    hooked) and ANCHOR_TEXT (the rendered /etc/pf.warden.conf)."""
    host, columns, rows, assumptions = build_host(layout, pf_conf, anchor_text, ext_address=ext_address, sysctl=sysctl)
    ext_ip = next(a.ip for a in host.firewall.interfaces[host.default_interface].addresses)
    where = {m.name: m.address for m in host.members} | {o.name: o.address for o in host.outside}
    gateway = {m.name: m.gateway for m in host.members}
    cells: dict[tuple[str, str], str] = {}
    traces: dict[tuple[str, str], list[str]] = {}
    for name, origin, user in rows:
        for col in columns:
            if col.target == name or (origin == "host" and col.target in ("host", "host-ext")):
                cells[(name, col.name)] = "-"
                continue
            if col.target == "host":
                dst = gateway.get(origin, ext_ip)
            elif col.target == "host-ext":
                dst = ext_ip
            else:
                dst = where[col.target]
            assert isinstance(dst, IPv4Address)
            ok, trace = host.connect(origin, user, dst, col.port, col.proto)
            cells[(name, col.name)] = "Y" if ok else "."
            traces[(name, col.name)] = trace
    return Matrix([r[0] for r in rows], [c.name for c in columns], cells, traces, assumptions)
