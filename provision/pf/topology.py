"""A FreeBSD host's packet paths, with pf consulted at every pfil hook the kernel runs.

Where the hooks are (freebsd-src sys/net/if_bridge.c, sys/netinet ip_input/ip_output):

* a frame a bridge member receives for another member is bridged (bridge_input →
  bridge_forward): bridge_pfil runs `in` on the member (net.link.bridge.pfil_member)
  then on the bridge (pfil_bridge), and `out` on the bridge then on the destination
  member — "Keep the order: in_if -> bridge_if -> out_if" (bridge_pfil);
* a frame for the bridge's own MAC (a jail talking to its gateway, or through it) is
  handed to the IP stack as received on the bridge (GRAB_OUR_PACKETS): the member is
  filtered `in` only when pfil_local_phys is set, then ip_input filters `in on bridge`;
* the host's own packets and the packets it routes leave through ip_output, filtered
  `out on <interface>`; on a bridge, bridge_output/bridge_enqueue then hand them to the
  member with no further filtering;
* packets from outside arrive through ip_input on the external interface.

Layer 2 (docs/freebsd.md#arp-and-the-bridges-forwarding-table): the host finds a
member's MAC in its ARP table (sys/netinet/if_ether.c), a member (a VNET jail, a guest:
a stack of its own, docs/freebsd.md#arp-in-vnet-jails) finds its neighbour's or its
gateway's — the bridge's own MAC — in its own, and the bridge finds the member behind a
MAC in its forwarding table (sys/net/if_bridge.c).  All learn: a dynamic ARP
entry takes the MAC of the latest reply for its address (in_arpinput →
arp_check_update_lle), a dynamic forwarding entry moves to the member a frame with that
source MAC last came in by (bridge_input → bridge_rtupdate); a static entry of either
never changes (LLE_STATIC: "attempts to modify permanent entry"; IFBAF_STATIC is not
IFBAF_DYNAMIC, so bridge_rtupdate leaves brt_dst alone).  A MAC the bridge does not know
is flooded to every member (bridge_output → bridge_broadcast).

Endpoints are the host itself (a local process of some user, or a listening socket),
bridge members (jails, bhyve guests) with their address and gateway, and machines behind
an interface (the management LAN, the internet).  `connect` plays a TCP handshake (SYN,
SYN-ACK, ACK) or a UDP request and answer through those paths with one Firewall, so
states, translation and `user` matching act as they would.  Nothing is sent anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address

from .engine import ACK, SYN, TCP, UDP, Firewall, Packet

# if_bridge.c defaults: pfil_onlyip=1, pfil_bridge=1, pfil_member=1, pfil_local_phys=0.
BRIDGE_SYSCTL_DEFAULTS = {
    "net.link.bridge.pfil_onlyip": 1,
    "net.link.bridge.pfil_bridge": 1,
    "net.link.bridge.pfil_member": 1,
    "net.link.bridge.pfil_local_phys": 0,
}


@dataclass(frozen=True)
class Member:
    """A bridge member's far end: a jail's epair or a guest's tap, with its stack's view."""

    name: str
    member: str  # host-side interface, a member of `bridge`
    bridge: str
    address: IPv4Address
    network: IPv4Network  # the on-link network of its own interface
    gateway: IPv4Address
    listens: frozenset[tuple[int, int]] = frozenset()  # (proto, port)
    private: bool = False  # ifconfig BRIDGE private MEMBER (bridge_forward IFBIF_PRIVATE)
    mac: str = ""  # the MAC of its own interface (the jail's e0b end, the guest's NIC)

    @property
    def lladdr(self) -> str:
        return self.mac or f"mac-of-{self.name}"


@dataclass(frozen=True)
class Outside:
    """A machine behind one of the host's interfaces: the management LAN, the internet."""

    name: str
    interface: str
    address: IPv4Address
    listens: frozenset[tuple[int, int]] = frozenset()


@dataclass
class Host:
    """The host: interfaces and their addresses (via the firewall), bridges, routes, sockets."""

    firewall: Firewall
    bridges: Mapping[str, list[str]]  # bridge -> member interfaces
    default_interface: str
    members: list[Member] = field(default_factory=list)
    outside: list[Outside] = field(default_factory=list)
    listeners: Mapping[tuple[int, int], str] = field(default_factory=dict)  # (proto, port) -> user
    sysctl: Mapping[str, int] = field(default_factory=lambda: dict(BRIDGE_SYSCTL_DEFAULTS))
    # The host's ARP table on its bridges: address -> (MAC, static) (`arp -an`).
    arp: dict[IPv4Address, tuple[str, bool]] = field(default_factory=dict)
    # Each bridge's forwarding table: MAC -> (member interface, static) (`ifconfig BRIDGE addr`).
    fdb: dict[str, tuple[str, bool]] = field(default_factory=dict)
    # Each member's own ARP table (a VNET jail's or a guest's stack): address -> (MAC, static).
    caches: dict[str, dict[IPv4Address, tuple[str, bool]]] = field(default_factory=dict)
    # Each bridge's own MAC: frames for it go to the host's stack (GRAB_OUR_PACKETS).
    bridge_macs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Every member has spoken once with its own MAC: the bridge learned it (dynamic).
        for m in self.members:
            self.fdb.setdefault(m.lladdr, (m.member, False))

    # -- layer 2 ---------------------------------------------------------------------
    def pin(self, address: IPv4Address, mac: str, member: str) -> None:
        """`arp -S ADDRESS MAC` and `ifconfig BRIDGE static MEMBER MAC`: both entries static."""
        self.arp[address] = (mac, True)
        self.fdb[mac] = (member, True)

    def pin_in(self, name: str, address: IPv4Address, mac: str) -> None:
        """`arp -S ADDRESS MAC` inside member NAME (a jail's exec.start, a guest's
        rc.d/static_arp): a permanent entry in its own table."""
        self.caches.setdefault(name, {})[address] = (mac, True)

    def bridge_mac(self, bridge: str) -> str:
        return self.bridge_macs.get(bridge, f"mac-of-{bridge}")

    def poison(self, origin: str, address: IPv4Address, trace: list[str] | None = None) -> None:
        """ORIGIN (a member) claims ADDRESS with its own MAC to everyone on its bridge: a
        gratuitous ARP, or an answer to each neighbour's request for ADDRESS.  ARP passes
        pf (bridge_pfil); the bridge learns ORIGIN's MAC (bridge_input); every receiver's
        in_arpinput → arp_check_update_lle moves a dynamic entry and leaves a permanent
        one ("attempts to modify permanent entry") — the host's table and each member's."""
        m = self._member(origin)
        self.arp_reply(origin, address, trace)
        for other in self.members:
            if other is m or other.bridge != m.bridge or address not in other.network or other.address == address:
                continue
            cache = self.caches.setdefault(other.name, {})
            old = cache.get(address)
            if old is not None and old[1]:
                if trace is not None:
                    trace.append(f"arp in {other.name}: {m.lladdr} attempts to modify permanent entry for {address}")
                continue
            cache[address] = (m.lladdr, False)

    def arp_reply(self, origin: str, address: IPv4Address, trace: list[str] | None = None) -> None:
        """ORIGIN (a member) sends the host an ARP reply: ADDRESS is at ORIGIN's MAC.

        bridge_pfil passes ARP without asking pf; the frame's source MAC is learned first
        (bridge_input), then in_arpinput creates an entry for a reply to one of the host's
        addresses, updates a dynamic one, and leaves a static one as it is."""
        m = self._member(origin)
        self.learn(origin, m.lladdr)
        old = self.arp.get(address)
        if old is not None and old[1]:
            if trace is not None:
                trace.append(f"arp: {m.lladdr} attempts to modify permanent entry for {address}")
            return
        self.arp[address] = (m.lladdr, False)

    def learn(self, origin: str, src_mac: str) -> None:
        """A frame with source SRC_MAC comes in by ORIGIN's member (bridge_input → bridge_rtupdate)."""
        m = self._member(origin)
        old = self.fdb.get(src_mac)
        if old is None or not old[1]:
            self.fdb[src_mac] = (m.member, False)

    def _member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise ValueError(f"unknown member {name}")

    def _by_port(self, bridge: str, mac: str) -> list[Member]:
        """Who receives a frame for MAC on BRIDGE: the member its forwarding entry names,
        else (unknown MAC: flooded) the member whose own MAC it is."""
        entry = self.fdb.get(mac)
        if entry is not None:
            return [m for m in self.members if m.bridge == bridge and m.member == entry[0]]
        return [m for m in self.members if m.bridge == bridge and m.lladdr == mac]

    def _resolve_from(self, m: Member, address: IPv4Address) -> str | None:
        """M's own ARP lookup: its entry, else a request whose owner answers (dynamic):
        the bridge for one of the host's addresses on it, else the member holding ADDRESS."""
        cache = self.caches.setdefault(m.name, {})
        if address not in cache:
            own = [a.ip for a in self.firewall.interfaces[m.bridge].addresses]
            if address in own:
                cache[address] = (self.bridge_mac(m.bridge), False)
            else:
                owner = next((o for o in self.members if o.address == address and o.bridge == m.bridge), None)
                if owner is None:
                    return None
                cache[address] = (owner.lladdr, False)
        return cache[address][0]

    def _resolve(self, address: IPv4Address) -> str | None:
        """The host's ARP lookup: its entry, else a request whose owner answers (dynamic)."""
        if address not in self.arp:
            owner = next((m for m in self.members if m.address == address), None)
            if owner is None:
                return None
            self.arp[address] = (owner.lladdr, False)
        return self.arp[address][0]

    # -- facts -----------------------------------------------------------------------
    def addresses(self) -> list[IPv4Address]:
        return [a.ip for i in self.firewall.interfaces.values() for a in i.addresses if isinstance(a.ip, IPv4Address)]

    def _route(self, dst: IPv4Address | IPv6Address) -> tuple[str, IPv4Address | None]:
        """(interface, source address): the connected network holding DST, else the default route."""
        for i in self.firewall.interfaces.values():
            for a in i.addresses:
                if isinstance(a.ip, IPv4Address) and dst in a.network and i.name != "lo0":
                    return i.name, a.ip
        ext = self.firewall.interfaces[self.default_interface]
        first = next((a.ip for a in ext.addresses if isinstance(a.ip, IPv4Address)), None)
        return self.default_interface, first

    def _sys(self, name: str) -> bool:
        return bool(self.sysctl.get(f"net.link.bridge.{name}", BRIDGE_SYSCTL_DEFAULTS[f"net.link.bridge.{name}"]))

    # -- hooks -----------------------------------------------------------------------
    def _hook(self, p: Packet, ifname: str, direction: str, trace: list[str]) -> Packet | None:
        v = self.firewall.test(p, ifname, direction)
        trace.append(f"{direction} on {ifname}: {'pass' if v.passed else 'BLOCK'} ({v.reason})")
        return v.packet if v.passed else None

    def _local(self, p: Packet) -> bool:
        return p.dst in self.addresses()

    # -- paths -----------------------------------------------------------------------
    def _host_input(self, p: Packet, rcvif: str, user: str | None, trace: list[str]) -> tuple[str, Packet] | None:
        """ip_input on RCVIF, then local delivery or forwarding (gateway_enable=YES)."""
        q = self._hook(replace(p, user=user if self._local(p) else None), rcvif, "in", trace)
        if q is None:
            return None
        if self._local(q):
            return "host", q
        out_if, _ = self._route(q.dst)  # ip_forward → ip_output
        r = self._hook(replace(q, user=None), out_if, "out", trace)
        return None if r is None else self._link_output(r, out_if, trace)

    def _link_output(self, p: Packet, ifname: str, trace: list[str]) -> tuple[str, Packet] | None:
        """After ip_output: the host's ARP entry names a MAC, the bridge's forwarding entry the
        member, which gets the frame with no pfil (bridge_output, bridge_enqueue); other
        interfaces reach what is behind them."""
        if ifname in self.bridges:
            mac = self._resolve(p.dst) if isinstance(p.dst, IPv4Address) else None
            to = self._by_port(ifname, mac) if mac is not None else []
            if not to:
                trace.append(f"no neighbour {p.dst} on {ifname}")
                return None
            if to[0].address != p.dst:
                trace.append(f"{p.dst} resolves to {mac}, on {to[0].member}")
            return to[0].name, p
        for o in self.outside:
            if o.interface == ifname and o.address == p.dst:
                return o.name, p
        trace.append(f"nobody at {p.dst} behind {ifname}")
        return None

    def _member_input(
        self, m: Member, p: Packet, local_user: str | None, trace: list[str]
    ) -> tuple[str, Packet] | None:
        """A frame from M's stack: on-link destinations by ARP, the rest to the gateway's MAC."""
        next_hop = p.dst if p.dst in m.network else m.gateway
        assert isinstance(next_hop, IPv4Address)
        mac = self._resolve_from(m, next_hop)
        if mac is None:
            trace.append(f"no neighbour {next_hop} on {m.bridge}")
            return None
        if mac == self.bridge_mac(m.bridge):
            # GRAB_OUR_PACKETS: member filtered only with pfil_local_phys, then ip_input.
            if self._sys("pfil_local_phys") and self._sys("pfil_member"):
                # pf_socket_lookup finds the listening socket by address and port, on
                # whichever interface pf runs: the user is known on the member already.
                q = self._hook(replace(p, user=local_user if self._local(p) else None), m.member, "in", trace)
                if q is None:
                    return None
                p = q
            return self._host_input(p, m.bridge, local_user, trace)
        # The frame goes to the MAC M's table names, and the bridge to whichever member
        # its forwarding entry for that MAC names (bridge_forward → bridge_rtlookup).
        ports = self._by_port(m.bridge, mac)
        if not ports:
            trace.append(f"no neighbour {next_hop} on {m.bridge}")
            return None
        d = ports[0]
        if d is m:
            trace.append(f"bridge: {mac} is on the sending member")
            return None
        if d.address != next_hop:
            trace.append(f"{m.name}: {next_hop} resolves to {mac}, on {d.member}")
        if m.private and d.private:
            trace.append("bridge: private members do not talk to each other")
            return None
        fwd: Packet | None = p
        member, bridge = self._sys("pfil_member"), self._sys("pfil_bridge")
        steps = [(m.member, "in", member), (m.bridge, "in", bridge), (m.bridge, "out", bridge)]
        steps.append((d.member, "out", member))
        for ifname, direction, on in steps:
            if on and fwd is not None:
                fwd = self._hook(fwd, ifname, direction, trace)
        return None if fwd is None else (d.name, fwd)

    def send(self, origin: str, p: Packet, local_user: str | None, trace: list[str]) -> tuple[str, Packet] | None:
        """Send P from ORIGIN ("host", a member's or an outside machine's name): where it lands."""
        if origin == "host":
            if self._local(p):
                return "host", p  # loopback: pf sees it on lo0, not a path this model follows
            out_if, _ = self._route(p.dst)
            q = self._hook(replace(p, user=local_user), out_if, "out", trace)
            return None if q is None else self._link_output(q, out_if, trace)
        for m in self.members:
            if m.name == origin:
                return self._member_input(m, p, local_user, trace)
        for o in self.outside:
            if o.name == origin:
                return self._host_input(p, o.interface, local_user, trace)
        raise ValueError(f"unknown endpoint {origin}")

    def source_address(self, origin: str, dst: IPv4Address) -> IPv4Address:
        if origin == "host":
            _, src = self._route(dst)
            assert src is not None
            return src
        for m in self.members:
            if m.name == origin:
                return m.address
        for o in self.outside:
            if o.name == origin:
                return o.address
        raise ValueError(f"unknown endpoint {origin}")

    def _listens(self, where: str, proto: int, port: int) -> tuple[bool, str | None]:
        if where == "host":
            user = self.listeners.get((proto, port))
            return user is not None, user
        for e in self.members:
            if e.name == where:
                return (proto, port) in e.listens, None
        for o in self.outside:
            if o.name == where:
                return (proto, port) in o.listens, None
        return False, None

    def connect(
        self,
        origin: str,
        user: str | None,
        dst: IPv4Address,
        port: int,
        proto: int = TCP,
        fresh: bool = True,
    ) -> tuple[bool, list[str]]:
        """Can ORIGIN (as USER, when it is the host) open PROTO/PORT at DST?  The handshake
        must land at the endpoint holding DST, find a listener, and come back untranslated."""
        if fresh:
            self.firewall.states.clear()
        trace: list[str] = []
        src = self.source_address(origin, dst)
        first = Packet(proto, src, dst, 49152, port, SYN if proto == TCP else 0)
        # pf.conf(5) user: every packet of a connection with a local end carries the
        # owner of that socket: the connecting process, or the listener.
        if origin != "host" and dst in self.addresses():
            user = self.listeners.get((proto, port))
        got = self.send(origin, first, user, trace)
        if got is None:
            return False, trace
        where, arrived = got
        listening, owner = self._listens(where, proto, arrived.dport)
        if not listening:
            trace.append(f"{where}: nothing listens on {arrived.dport}")
            return False, trace
        answer = arrived.reply(SYN | ACK if proto == TCP else 0)
        back = self.send(where, answer, owner if where == "host" else user, trace)
        if back is None or back[0] != origin or back[1].src != dst or back[1].dport != 49152:
            trace.append("the answer does not come back")
            return False, trace
        if proto == TCP:
            third = replace(first, flags=ACK)
            if self.send(origin, third, user, trace) is None:
                return False, trace
        return True, trace


__all__ = ["BRIDGE_SYSCTL_DEFAULTS", "UDP", "Host", "Member", "Outside"]
