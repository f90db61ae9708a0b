"""Who may reach what on one machine: the isolation policy, and the PF rules that hold it.

The one place that says it (docs/isolation.md explains the model with the example fleet):

* root on the machine reaches every jail; an agent's processes reach their own jails and
  the shared LLM jails they use, and of the management LAN (`warden_host_networks`) only
  its DNS resolvers (port 53);
* a jail reaches the jails of its own agent, the shared LLM jails and `warden_agent_links`
  peers its agent is given, the internet through NAT, and on its own gateway (this host's
  address in its /24) the DNS resolver, its own agent's API port and the ports listed in
  `warden_jail_host_ports` — each served by the user that owns it, not by whoever binds
  the port while its server is down;
* everything else from a jail or guest is blocked: other agents' jails, this host's
  other addresses and ports (sshd, other agents' API ports), the management LAN
  (`warden_host_networks`);
* on the bridge, a jail speaks only as its own address (per-member rules: if_bridge.c
  filters bridged frames on the member epairs with net.link.bridge.pfil_member=1, and
  frames for the host with pfil_local_phys=1; `sysctls()` owns those values), and nobody
  there speaks as this host (a guest spoofing the host's uplink address is dropped).

The rules are rendered into the warden anchor (templates/etc/pf.warden.conf.j2 writes
each rule's shape, every value through the `pf` filter), which pfconf.py hooks FIRST in
the filter section, and every rule that decides warden traffic is `quick`: pf stops at the first
quick match (pf.conf(5) PARAMETERS quick, ANCHORS), so the operator's later rules —
a `block in all`, a `pass out quick` — can neither open nor close what is decided here,
and rules the operator puts above the anchor line still win (their own choice).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from .models import LLM_ROLES, Agent, jail_mac, parse_host_ports

# Names and addresses reach the anchor through the template's `pf` filter (escape.py),
# which refuses anything but a plain token; models.py validates them by full match first.
DNS_PORT = 53
# What this host's agent processes may still reach on the management networks
# (warden_host_networks): DNS, since the host's /etc/resolv.conf, which their resolver
# reads, commonly names a LAN resolver (the router; VirtualBox's 10.0.2.3 in the Vagrant
# box). Everything else there is blocked for them (docs/isolation.md "Host processes").
LAN_OPEN_PORTS = (DNS_PORT,)

# if_bridge.c: pfil_member filters bridged frames on the member epairs, pfil_bridge on
# the bridge, pfil_onlyip drops non-IP frames (ARP excepted) instead of passing them
# unfiltered, pfil_local_phys filters frames for the host on the member they came in
# by (GRAB_OUR_PACKETS) — which is where a jail's source address is checked.
SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net.link.bridge.pfil_onlyip", "1"),
    ("net.link.bridge.pfil_member", "1"),
    ("net.link.bridge.pfil_bridge", "1"),
    ("net.link.bridge.pfil_local_phys", "1"),
)


@dataclass(frozen=True)
class Member:
    """A bridge member: a jail's host-side epair or a guest's tap, the one address it may
    use and, for a jail, the MAC of its interface (pinned in the host's ARP table and the
    bridge's forwarding table; docs/isolation.md "Layer 2 on the shared bridge")."""

    jail: str
    interface: str
    address: IPv4Address
    mac: str = ""  # "" for a guest: vm-bhyve chooses it at `vm create`

    @property
    def pair(self) -> str:
        """Its rc.conf static_arp pair name (rc.d/static_arp: static_arp_<pair>)."""
        return f"warden_{self.jail}"


def guest_tap(vm_name: str) -> str:
    """The name vm-bhyve gives the guest's tap (`network0_name`, lib/vm-switch-standard
    switch::standard::provision: `ifconfig tap create name NAME`), or "" when it would
    not fit an interface name (15 characters, docs/freebsd.md#interface-name-length)."""
    name = f"vm_{vm_name.removesuffix('vm')}"
    return name if len(name) <= 15 else ""


@dataclass(frozen=True)
class Grant:
    """SRC may open connections to DST (a network or an address), and why."""

    src: str
    dst: str
    why: str


@dataclass(frozen=True)
class ProcessGrant:
    """This host's processes of USERS may open connections to DST, and why."""

    users: tuple[str, ...]
    dst: str
    why: str


@dataclass(frozen=True)
class HostPort:
    """Sources in SRC may reach PROTO/PORT on GATEWAY (this host's address in their /24),
    when USER's socket listens there ("": whoever listens, for a port only root can bind)."""

    src: str
    gateway: str
    proto: str
    port: int
    why: str
    user: str = ""


@dataclass
class Policy:
    bridge: str
    ext_if: str
    agent_nets: list[str]  # the networks kept apart (agent /24s, the guests' uplink)
    self_addresses: list[str]  # this host's addresses on the bridge
    members: list[Member] = field(default_factory=list)
    process_grants: list[ProcessGrant] = field(default_factory=list)
    jail_grants: list[Grant] = field(default_factory=list)
    host_ports: list[HostPort] = field(default_factory=list)
    host_networks: list[str] = field(default_factory=list)
    # This host's agent users, kept off the management networks but for DNS (LAN_OPEN_PORTS).
    lan_blocked_users: list[str] = field(default_factory=list)
    lan_open_ports: list[int] = field(default_factory=list)
    unpinned: list[str] = field(default_factory=list)  # jails whose epair Bastille numbers


def build_policy(
    *,
    host: str,
    bridge: str,
    ext_if: str,
    agents: Sequence[Agent],
    links: Iterable[tuple[str, str]] = (),
    guests: Sequence[Agent] = (),
    uplink: IPv4Network | None = None,
    host_networks: Sequence[IPv4Network] = (),
    jail_host_ports: Iterable[object] = (),
    guest_jump_user: str | None = None,
) -> Policy:
    """The policy of one machine: its host agents, and on a host with bhyve guests their uplink."""
    nets = sorted(a.subnet for a in agents)
    gateways = sorted(a.gateway for a in agents)
    if guests and uplink is not None:
        nets = sorted([*nets, uplink])
        gateways = sorted([*gateways, uplink.network_address + 1])
    policy = Policy(
        bridge=bridge,
        ext_if=ext_if,
        agent_nets=[str(n) for n in nets],
        self_addresses=[str(g) for g in gateways],
        host_networks=[str(n) for n in sorted(host_networks)],
        lan_blocked_users=sorted(a.name for a in agents) if host_networks else [],
        lan_open_ports=list(LAN_OPEN_PORTS) if host_networks and agents else [],
    )
    seen: set[str] = set()
    for agent in sorted(agents, key=lambda a: a.name):
        for jail in agent.jails:
            if jail.name in seen or jail.ip not in agent.subnet:
                continue  # a shared jail is protected once, by the agent whose /24 holds it
            seen.add(jail.name)
            epair = f"e0a_{jail.name}"
            if len(epair) > 15:
                # Bastille numbers such an epair (e0a_bastilleN): it cannot be named here.
                # `invoke check` warns about the name (docs/freebsd.md#interface-name-length).
                policy.unpinned.append(jail.name)
                continue
            policy.members.append(Member(jail.name, epair, jail.ip, jail_mac(host, jail.name)))
    for guest in sorted(guests, key=lambda g: g.name):
        tap = guest_tap(guest.vm_name)
        if guest.vm_ip is None:
            continue
        if not tap:
            policy.unpinned.append(guest.vm_name)
            continue
        policy.members.append(Member(guest.vm_name, tap, guest.vm_ip))
    policy.members.sort(key=lambda m: m.address)
    # This host's processes: root everywhere, an agent to its own /24 and the LLM jails it shares.
    for agent in sorted(agents, key=lambda a: a.subnet):
        user = agent.name
        why = f"root and {user} reach {user}'s jails"
        policy.process_grants.append(ProcessGrant(("root", user), str(agent.subnet), why))
    for agent in sorted(agents, key=lambda a: a.name):
        for jail in agent.jails:
            if jail.role in LLM_ROLES and jail.ip not in agent.subnet:
                why = f"{agent.name} uses the shared {jail.name}"
                policy.process_grants.append(ProcessGrant((agent.name,), str(jail.ip), why))
    if guests and uplink is not None:
        # and the user Ansible jumps through this host as: sshd opens the forwarded
        # connection to a guest in that user's session (guestseed.jump_user).
        if guest_jump_user and guest_jump_user != "root":
            why = f"root and {guest_jump_user} (ansible_user, the jump to the guests) reach the bhyve guests"
            policy.process_grants.append(ProcessGrant(("root", guest_jump_user), str(uplink), why))
        else:
            policy.process_grants.append(ProcessGrant(("root",), str(uplink), "root reaches the bhyve guests"))
    # Jails: their own /24, the shared LLM jails, the linked agents.
    for agent in sorted(agents, key=lambda a: a.subnet):
        policy.jail_grants.append(Grant(str(agent.subnet), str(agent.subnet), f"{agent.name}'s jails reach each other"))
    for agent in sorted(agents, key=lambda a: a.name):
        for jail in agent.jails:
            if jail.role in LLM_ROLES and jail.ip not in agent.subnet:
                why = f"{agent.name} uses the shared {jail.name} jail"
                policy.jail_grants.append(Grant(str(agent.subnet), str(jail.ip), why))
    here = {a.name: a for a in [*agents, *guests]}
    for a, b in sorted({tuple(sorted(pair)) for pair in links}):
        if a in here and b in here:
            na, nb = _net_of(here[a]), _net_of(here[b])
            policy.jail_grants.append(Grant(na, nb, f"warden_agent_links: {a} -> {b}"))
            policy.jail_grants.append(Grant(nb, na, f"warden_agent_links: {b} -> {a}"))
    # Ports on the gateway: DNS, the agent's own API port, warden_jail_host_ports.
    extra = parse_host_ports(jail_host_ports)
    sources: list[tuple[str, str, Agent | None]] = [
        (str(a.subnet), str(a.gateway), a) for a in sorted(agents, key=lambda a: a.subnet)
    ]
    if guests and uplink is not None:
        sources.append((str(uplink), str(uplink.network_address + 1), None))
    # A port above 1023 is open to any user's bind while its server is down (restart, crash,
    # boot order), and the jails would talk to whoever took it: each such rule names the
    # user whose listening socket it is (pf.conf(5) user: "for incoming connections to the
    # firewall itself, the user that listens on the destination port"). Port 53 is reserved
    # (net.inet.ip.portrange.reservedhigh=1023), so only root can bind it: the resolver's
    # rule names no user (docs/freebsd.md#pf-user-matching).
    for net, gw, owner in sources:
        for proto in ("tcp", "udp"):
            policy.host_ports.append(HostPort(net, gw, proto, DNS_PORT, "the DNS resolver the jails are given"))
        if owner is not None:
            why = f"{owner.name}'s own API port, {owner.name}'s socket only"
            policy.host_ports.append(HostPort(net, gw, "tcp", owner.api_port, why, owner.name))
        for proto, port, user in extra:
            why = f"warden_jail_host_ports, {user}'s socket only"
            policy.host_ports.append(HostPort(net, gw, proto, port, why, user))
    return policy


def _net_of(agent: Agent) -> str:
    """How an agent's traffic looks here: its /24, or a guest's uplink address (NAT inside the guest)."""
    if agent.placement == "bhyve" and agent.vm_ip is not None:
        return f"{agent.vm_ip}/32"
    return str(agent.subnet)


def sysctl_lines() -> list[str]:
    """/etc/sysctl.conf lines the policy depends on (sysctl.conf(5): name=value)."""
    return [f"{name}={value}" for name, value in SYSCTLS]


SYSCTL_BEGIN = "# BEGIN warden-provision: the bridge filtering docs/isolation.md relies on"
SYSCTL_END = "# END warden-provision"


def sysctl_conf_result(text: str, lines: Sequence[str]) -> str:
    """TEXT with our block replaced by LINES, at the end so that it is applied last
    (rc.d/sysctl sets the lines in file order); the operator's lines stay verbatim."""
    kept: list[str] = []
    inside = False
    for ln in text.splitlines(keepends=True):
        bare = ln.rstrip("\r\n")
        if bare == SYSCTL_BEGIN:
            inside = True
        elif inside and bare == SYSCTL_END:
            inside = False
        elif not inside:
            kept.append(ln)
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    block = [f"{SYSCTL_BEGIN}\n", *(f"{line}\n" for line in lines), f"{SYSCTL_END}\n"] if lines else []
    return "".join(kept + block)


def sysctl_changes(live: dict[str, str], lines: Sequence[str]) -> list[str]:
    """`name=value` arguments for sysctl(8) that make the running kernel match LINES."""
    out = []
    for line in lines:
        name, _, value = line.partition("=")
        if live.get(name) != value:
            out.append(line)
    return out


# -- layer 2: the host's ARP table and the bridge's forwarding table -------------------------
# docs/isolation.md "Layer 2 on the shared bridge"; output formats in
# docs/freebsd.md#arp-and-the-bridges-forwarding-table.

_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_IFNAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,14}")
# arp.c print_entry: "? (IP) at MAC on IF permanent [bridge]" (or "expires in N seconds").
_ARP_LINE = re.compile(r"\S+ \(([0-9.]+)\) at (\S+) on (\S+) (permanent|expires in -?\d+ seconds|expired)\b.*")
# ifbridge.c bridge_addresses: "MAC Vlan1 MEMBER EXPIRE flags=1<STATIC>".
_FDB_LINE = re.compile(r"(\S+) Vlan\d+ (\S+) \d+ flags=[0-9a-f]+<([A-Z,]*)>")


def arp_entries(text: str) -> dict[str, tuple[str, str, bool]]:
    """`arp -an` output: address -> (MAC, interface, permanent)."""
    out = {}
    for line in text.splitlines():
        m = _ARP_LINE.fullmatch(line.strip())
        if m:
            out[m.group(1)] = (m.group(2), m.group(3), m.group(4) == "permanent")
    return out


def bridge_entries(text: str) -> dict[str, tuple[str, bool]]:
    """`ifconfig BRIDGE addr` output: MAC -> (member, static)."""
    out = {}
    for line in text.splitlines():
        m = _FDB_LINE.fullmatch(line.strip())
        if m:
            out[m.group(1)] = (m.group(2), "STATIC" in m.group(3).split(","))
    return out


def static_arp_pins(rc_conf: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    """address -> MAC from the `static_arp_warden_*` values set in rc.conf: (op, name, value) edits."""
    pins = {}
    for op, name, value in rc_conf:
        if op == "set" and name.startswith("static_arp_warden_"):
            address, _, mac = value.partition(" ")
            pins[address] = mac
    return pins


def arp_pin_changes(
    wanted: dict[str, str], before: dict[str, str], live: dict[str, tuple[str, str, bool]]
) -> tuple[list[tuple[str, str]], list[str]]:
    """(`arp -S` pairs, `arp -d` addresses) taking the live table to WANTED; BEFORE are the
    pins the previous apply made, removed when no longer wanted (a removed jail)."""
    add = [(a, mac) for a, mac in sorted(wanted.items()) if live.get(a, ("", "", False))[::2] != (mac, True)]
    drop = [a for a in sorted(before) if a not in wanted and live.get(a, ("", "", False))[2]]
    return add, drop


def bridge_pin_changes(
    wanted: Iterable[tuple[str, str]], interfaces: Iterable[str], live: dict[str, tuple[str, bool]]
) -> list[tuple[str, str]]:
    """(member, MAC) to pin with `ifconfig BRIDGE static`: each wanted pin whose member
    exists now (an epair exists while its jail runs) and is not pinned there yet."""
    present = set(interfaces)
    return [(member, mac) for member, mac in wanted if member in present and live.get(mac) != (member, True)]


def prestart_pin(bridge: str, member: str, mac: str) -> str:
    """The jail.conf line that pins MAC to MEMBER at each start: jail(8) runs exec.prestart
    after Bastille's lines have created the epair and added it to BRIDGE."""
    if not (_IFNAME_RE.fullmatch(bridge) and _IFNAME_RE.fullmatch(member) and _MAC_RE.fullmatch(mac)):
        raise ValueError(f"refusing a bridge pin {bridge!r} {member!r} {mac!r} in jail.conf")
    return f'  exec.prestart += "ifconfig {bridge} static {member} {mac}";'


_IP_RE = re.compile(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}")
# The jail's own arp(8): jail(8) runs exec.start commands inside the jail, with its binaries.
JAIL_ARP = "/usr/sbin/arp"


def start_arp_pin(pair: str) -> str:
    """The jail.conf line that makes PAIR ("IP MAC") a permanent entry in the jail's own ARP
    table at each start.  Its own rc.d/static_arp would read the jail's rc.conf, a file the
    jail's root controls and root on the host never writes; so jail(8) does it from the
    host's jail.conf: exec.start commands run in sequence inside the jail, after Bastille's
    `/bin/sh /etc/rc` has configured its interface, and a failing one stops the start
    (docs/freebsd.md#arp-in-vnet-jails)."""
    address, _, mac = pair.partition(" ")
    if not (_IP_RE.fullmatch(address) and _MAC_RE.fullmatch(mac)):
        raise ValueError(f"refusing a jail ARP pin {pair!r} in jail.conf")
    return f'  exec.start += "{JAIL_ARP} -S {address} {mac}";'
