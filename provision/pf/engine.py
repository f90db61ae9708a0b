"""What pf(4) does to one packet at one (interface, direction) hook.

The order is pf.c pf_test: `set skip` interfaces pass untouched; a packet matching a
state passes without rule evaluation (and is translated as the state says); otherwise
translation rules (nat on the way out, rdr on the way in: the first match wins,
pf.c pf_get_translation) rewrite the packet, then the filter rules see the rewritten
packet (pf.conf(5) TRANSLATION: "the filter engine will see packets as they look after
any addresses and ports have been translated") and the last matching rule decides,
unless a matching rule is `quick` (pf.conf(5) PARAMETERS quick; ANCHORS: a quick match
inside an anchor ends the whole evaluation).  No matching rule means pass without state
(pf.c V_pf_default_rule).  A pass creates a state when its rule keeps state or the
packet was translated (pf.c pf_test_rule → pf_create_state).

States are keyed as pf.c keeps them (pf_state_key_addr_setup, pf_find_state): the key
holds the addresses with the inbound source first, so one key covers a connection's
inbound packets one way and its outbound packets the other way; a lookup on the way in
searches the wire-side keys, on the way out the stack-side keys, and a state matches on
any interface unless `set state-policy if-bound` (pf.conf(5) set state-policy: floating
is the default).  Two keys differ only under translation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_network

from .grammar import Addr, PfSyntaxError, Rule, Ruleset

Address = IPv4Address | IPv6Address
Iface = IPv4Interface | IPv6Interface
TCP, UDP = 6, 17
SYN, ACK = 0x02, 0x10


@dataclass(frozen=True)
class Packet:
    """An IP packet as pf sees it; `user` is the local socket's owner (None: unknown)."""

    proto: int
    src: Address
    dst: Address
    sport: int = 0
    dport: int = 0
    flags: int = 0  # TCP flags
    user: str | None = None
    icmp_type: int | None = None
    tag: str | None = None

    def reply(self, flags: int = 0) -> Packet:
        return replace(self, src=self.dst, dst=self.src, sport=self.dport, dport=self.sport, flags=flags, tag=None)


@dataclass(frozen=True)
class Interface:
    """What pf knows about an interface: its addresses (with prefix) and its groups."""

    name: str
    addresses: tuple[Iface, ...] = ()
    groups: frozenset[str] = frozenset()


Key = tuple[int, Address, int, Address, int]


@dataclass
class State:
    wire: Key
    stack: Key
    kif: str | None  # None: floating
    rule: str


@dataclass(frozen=True)
class Verdict:
    passed: bool
    packet: Packet  # as it leaves the hook (translated)
    reason: str  # "skip", "state: …", "default pass", or the deciding rule's text
    where: str = ""


@dataclass
class Firewall:
    """pf with one loaded ruleset and its state table; `users` maps user names to uids."""

    ruleset: Ruleset
    interfaces: Mapping[str, Interface]
    users: Mapping[str, int] = field(default_factory=lambda: {"root": 0})
    enabled: bool = True
    states: list[State] = field(default_factory=list)

    def __post_init__(self) -> None:
        for rs in self.ruleset.anchors.values():
            for r in [*rs.filter, *rs.nat, *rs.rdr]:
                u = r.user
                if u is not None and u.value != "unknown" and not u.value.isdigit() and u.value not in self.users:
                    raise PfSyntaxError(r.where, f"unknown user {u.value}")
                for a in (r.src, r.dst, *([r.target] if r.target else [])):
                    if a.kind in ("iface", "dynamic", "self"):
                        self._addresses(a, r.where)  # pfctl resolves interface names at load time

    # -- addresses ------------------------------------------------------------------
    def _in_group(self, ifname: str, name: str) -> bool:
        """pfi_kkif_match: the interface itself, or a group it belongs to (every one is in `all`)."""
        i = self.interfaces.get(ifname)
        return ifname == name or name == "all" or (i is not None and name in i.groups)

    def _addresses(self, a: Addr, where: str) -> list[Iface]:
        if a.kind == "self":
            chosen = [i for i in self.interfaces.values()]
        else:
            chosen = [i for i in self.interfaces.values() if self._in_group(i.name, a.name)]
            if not chosen:
                raise PfSyntaxError(where, f"no IP address found for {a.name}")
        out: list[Iface] = []
        for i in chosen:
            addrs = list(i.addresses[:1] if a.mod == "0" else i.addresses)
            out.extend(addrs)
        return out

    def _addr_match(self, a: Addr, addr: Address, rs: Ruleset, where: str) -> bool:
        if a.kind == "any":
            hit = True
        elif a.kind == "net":
            assert a.net is not None
            hit = a.net.version == addr.version and addr in a.net
        elif a.kind == "table":
            # pf_table.c pfr_attach_table: an anchor's table of that name, else the main one.
            table = rs.tables.get(a.name) or self.ruleset.tables.get(a.name)
            hit = table is not None and table.contains(addr)
        else:
            ifaddrs = self._addresses(a, where)
            if a.mod == "network":
                hit = any(addr in i.network for i in ifaddrs if i.version == addr.version)
            elif a.mod == "broadcast":
                hit = any(addr == i.network.broadcast_address for i in ifaddrs if i.version == addr.version)
            else:
                hit = any(addr == i.ip for i in ifaddrs)
        return hit != a.neg

    # -- rule matching --------------------------------------------------------------
    def _user_match(self, r: Rule, p: Packet) -> bool:
        """pf.conf(5) user: only TCP and UDP packets have one (pf.c pf_socket_lookup);
        forwarded packets are "unknown" and match only `= unknown` / `!= unknown`."""
        assert r.user is not None
        user = p.user if p.proto in (TCP, UDP) else None
        op, value = r.user.op, r.user.value
        if value == "unknown":
            return (user is None) == (op == "=")
        if user is None:
            return False
        uid = self.users.get(user, -1)
        want = int(value) if value.isdigit() else self.users[value]
        return {
            "=": uid == want,
            "!=": uid != want,
            "<": uid < want,
            "<=": uid <= want,
            ">": uid > want,
            ">=": uid >= want,
        }[op]

    def _match(self, r: Rule, rs: Ruleset, p: Packet, ifname: str, direction: str) -> bool:
        if r.direction is not None and r.direction != direction:
            return False
        if r.iface is not None and self._in_group(ifname, r.iface.name) == r.iface.neg:
            return False
        if r.af is not None and r.af != p.src.version:
            return False
        if r.proto is not None and r.proto != p.proto:
            return False
        if not self._addr_match(r.src, p.src, rs, r.where) or not self._addr_match(r.dst, p.dst, rs, r.where):
            return False
        if r.sport is not None and (p.proto not in (TCP, UDP) or not r.sport.match(p.sport)):
            return False
        if r.dport is not None and (p.proto not in (TCP, UDP) or not r.dport.match(p.dport)):
            return False
        if r.user is not None and not self._user_match(r, p):
            return False
        if r.flags is not None and p.proto == TCP and (p.flags & r.flags[1]) != r.flags[0]:
            return False
        if r.icmp_type is not None and p.icmp_type != r.icmp_type:
            return False
        return r.tagged is None or (p.tag == r.tagged) != r.tagged_neg

    def _children(self, rs: Ruleset, name: str) -> list[Ruleset]:
        """Anchors an anchor rule evaluates: relative to the calling ruleset; `x/*` = the
        anchors directly under x, alphabetically (pf.conf(5) ANCHORS)."""
        base = f"{rs.path}/{name}".strip("/")
        if base.endswith("/*") or base == "*":
            parent = base[:-2] if base != "*" else ""
            prefix = f"{parent}/" if parent else ""
            names = sorted(
                p for p in self.ruleset.anchors if p.startswith(prefix) and p and "/" not in p[len(prefix) :]
            )
            return [self.ruleset.anchors[n] for n in names]
        child = self.ruleset.anchors.get(base)
        return [child] if child is not None else []

    def _filter(self, rs: Ruleset, p: Packet, ifname: str, direction: str) -> tuple[Rule | None, bool, Packet]:
        """(last matching rule, stop, packet with tags) for RS: pf.c pf_test_rule's loop."""
        last: Rule | None = None
        for r in rs.filter:
            if not self._match(r, rs, p, ifname, direction):
                continue
            if r.kind == "anchor":
                assert r.anchor is not None
                hit = False
                for child in self._children(rs, r.anchor):
                    m, stop, p = self._filter(child, p, ifname, direction)
                    if m is not None:
                        last, hit = m, True
                    if stop:
                        return last, True, p
                if r.quick and hit:
                    return last, True, p
                continue
            if r.tag is not None:
                p = replace(p, tag=r.tag)  # tags are sticky (pf.conf(5) tag)
            last = r
            if r.quick:
                return last, True, p
        return last, False, p

    def _translation(self, rs: Ruleset, p: Packet, ifname: str, direction: str) -> Rule | None:
        """First matching nat (out) or rdr (in) rule, anchors included (pf.c pf_match_translation)."""
        rules = rs.nat if direction == "out" else rs.rdr
        for r in rules:
            if not self._match(replace(r, direction=None), rs, p, ifname, direction):
                continue
            if r.kind in ("nat-anchor", "rdr-anchor"):
                assert r.anchor is not None
                for child in self._children(rs, r.anchor):
                    m = self._translation(child, p, ifname, direction)
                    if m is not None:
                        return m
                continue
            return r
        return None

    # -- states ---------------------------------------------------------------------
    @staticmethod
    def _key(p: Packet, direction: str) -> Key:
        # pf.c pf_state_key_addr_setup: addr[sidx] = src, with sidx 0 on the way in, 1 out.
        if direction == "in":
            return (p.proto, p.src, p.sport, p.dst, p.dport)
        return (p.proto, p.dst, p.dport, p.src, p.sport)

    def _find_state(self, p: Packet, ifname: str, direction: str) -> State | None:
        key = self._key(p, direction)
        for s in self.states:
            if (s.wire if direction == "in" else s.stack) == key and s.kif in (None, ifname):
                return s
        return None

    def _skipped(self, ifname: str) -> bool:
        return any(self._in_group(ifname, spec.name) != spec.neg for spec in self.ruleset.skip)

    def test(self, p: Packet, ifname: str, direction: str) -> Verdict:
        """pf_test for P on IFNAME, DIRECTION ("in" or "out"); states are kept in self."""
        if ifname not in self.interfaces:
            raise ValueError(f"unknown interface {ifname}")
        if not self.enabled or self._skipped(ifname):
            return Verdict(True, p, "skip" if self.enabled else "pf disabled")
        state = self._find_state(p, ifname, direction)
        if state is not None:
            if state.wire != state.stack:
                other = state.stack if direction == "in" else state.wire
                if direction == "in":
                    p = replace(p, src=other[1], sport=other[2], dst=other[3], dport=other[4])
                else:
                    p = replace(p, src=other[3], sport=other[4], dst=other[1], dport=other[2])
            return Verdict(True, p, f"state: {state.rule}")
        original = p
        trans = self._translation(self.ruleset, p, ifname, direction)
        translated = False
        if trans is not None and trans.kind in ("nat", "rdr"):
            assert trans.target is not None
            addrs = (
                [trans.target.net.network_address]
                if trans.target.kind == "net" and trans.target.net is not None
                else [i.ip for i in self._addresses(trans.target, trans.where)]
            )
            new = next((a for a in addrs if a.version == p.src.version), None)
            if new is None:
                raise PfSyntaxError(trans.where, "translation target has no address of this family")
            # nat rewrites the source on the way out, rdr the destination on the way in
            p = replace(p, src=new) if trans.kind == "nat" else replace(p, dst=new, dport=trans.target_port or p.dport)
            translated = True
        if trans is not None and trans.nat_pass and translated:
            rule: Rule | None = trans
            passed, reason, where = True, trans.text, trans.where
        else:
            rule, _, p = self._filter(self.ruleset, p, ifname, direction)
            if rule is None:
                passed, reason, where = True, "default pass", ""
            else:
                passed, reason, where = rule.kind == "pass", rule.text, rule.where
        if passed and ((rule is not None and rule.keep_state) or translated):
            policy = (rule.state_policy if rule is not None else None) or self.ruleset.state_policy
            kif = None if policy == "floating" else ifname
            if direction == "in":
                wire, stack = self._key(original, "in"), self._key(p, "in")
            else:
                stack, wire = self._key(original, "out"), self._key(p, "out")
            self.states.append(State(wire, stack, kif, reason))
        return Verdict(passed, p, reason, where)


def addresses_of(ifaces: Mapping[str, Interface]) -> dict[str, list[Iface]]:
    """name -> addresses, the shape `parse_ruleset` wants for `antispoof`."""
    return {name: list(i.addresses) for name, i in ifaces.items()}


def host_net(addr: str) -> Iface:
    """An address with its prefix, e.g. '10.0.1.1/24' (a helper for building interfaces)."""
    net = ip_network(addr, strict=False)
    return IPv4Interface(addr) if net.version == 4 else IPv6Interface(addr)
