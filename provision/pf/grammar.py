"""pf.conf(5) text to expanded rules, the way pfctl(8) reads it (sbin/pfctl/parse.y).

Covered: macros (`name = "value"`, `$name`, lists in macros), tables (`table <t> [persist|
const|counters] { addr, !addr }`), `set skip on`, `set state-policy` and the options that do
not change a verdict, `scrub` (accepted: normalization does not decide pass or block),
`nat`/`no nat`/`rdr`/`no rdr` (with `pass`), `nat-anchor`/`rdr-anchor`/`anchor` (with
filter parameters, `quick`, `"name/*"`), `load anchor … from`, `include`, `antispoof`,
and `pass`/`block` with `in|out`, `log`, `quick`, `on [!]if|group`, `inet|inet6`,
`proto`, `from … port … to … port …`/`all`, `user`, `flags`, `icmp-type`/`icmp6-type`,
`keep|modulate|synproxy state (…)`/`no state`, `tag`/`tagged`, `label`.  Lists expand
into one rule per combination, as parse.y `expand_rule` does, so `{ !a, b }` means what
pfctl makes of it.  Everything else raises `PfSyntaxError` naming the file and line.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network, ip_network
from typing import Literal

Net = IPv4Network | IPv6Network
Iface = IPv4Interface | IPv6Interface


class PfSyntaxError(Exception):
    """A statement the evaluator does not understand (or pfctl would refuse)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


# /etc/services names pfctl resolves with getservbyname(3) (parse.y getservice); the
# ones pf.conf files use in practice.  Anything else is refused, not guessed.
SERVICES = {
    "ssh": 22,
    "smtp": 25,
    "domain": 53,
    "bootps": 67,
    "bootpc": 68,
    "http": 80,
    "www": 80,
    "auth": 113,
    "ntp": 123,
    "https": 443,
    "dhcpv6-client": 546,
    "dhcpv6-server": 547,
}
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmp6": 58, "ipv6-icmp": 58}
# icmp(4)/icmp6(4) type names as pfctl knows them (pfctl_parser.c icmp_type, icmp6_type).
ICMP_TYPES = {"echorep": 0, "unreach": 3, "squench": 4, "redir": 5, "echoreq": 8, "timex": 11, "paramprob": 12}
ICMP6_TYPES = {
    "unreach": 1,
    "toobig": 2,
    "timex": 3,
    "paramprob": 4,
    "echoreq": 128,
    "echorep": 129,
    "routersol": 133,
    "routeradv": 134,
    "neighbrsol": 135,
    "neighbradv": 136,
    "redir": 137,
}
TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "W": 0x80}
# `set` options that tune pf but never turn a pass into a block or back (pf.conf(5) OPTIONS).
NEUTRAL_OPTIONS = {
    "block-policy",
    "debug",
    "fail-policy",
    "fingerprints",
    "hostid",
    "keepcounters",
    "limit",
    "loginterface",
    "optimization",
    "reassemble",
    "require-order",
    "ruleset-optimization",
    "state-defaults",
    "syncookies",
    "timeout",
}


@dataclass(frozen=True)
class Addr:
    """One host of a rule after list expansion: any, a network, a table, an interface's addresses."""

    kind: Literal["any", "net", "table", "iface", "dynamic", "self"]
    net: Net | None = None
    name: str = ""  # table or interface name
    mod: str = ""  # interface modifier: "", "network", "broadcast", "0"
    neg: bool = False

    @property
    def af(self) -> int | None:
        return None if self.net is None else self.net.version

    def __str__(self) -> str:
        bang = "! " if self.neg else ""
        if self.kind == "any":
            return "any"
        if self.kind == "net":
            return f"{bang}{self.net}"
        if self.kind == "table":
            return f"{bang}<{self.name}>"
        mod = f":{self.mod}" if self.mod else ""
        if self.kind == "dynamic":
            return f"{bang}({self.name}{mod})"
        return f"{bang}{self.name}{mod}"


ANY = Addr("any")


@dataclass(frozen=True)
class PortOp:
    """A port comparison (pf.conf(5) PARAMETERS: = != < <= > >= : >< <>)."""

    op: str
    a: int
    b: int = 0

    def match(self, port: int) -> bool:
        a, b = self.a, self.b
        return {
            "=": port == a,
            "!=": port != a,
            "<": port < a,
            "<=": port <= a,
            ">": port > a,
            ">=": port >= a,
            ":": a <= port <= b,
            "><": a < port < b,
            "<>": port < a or port > b,
        }[self.op]


@dataclass(frozen=True)
class UserOp:
    """`user` comparison; value is a name, a uid, or "unknown" (pf.conf(5) user)."""

    op: str
    value: str


@dataclass(frozen=True)
class IfSpec:
    name: str
    neg: bool = False

    def __str__(self) -> str:
        return f"{'! ' if self.neg else ''}{self.name}"


Kind = Literal["pass", "block", "anchor", "nat", "rdr", "no-nat", "no-rdr", "nat-anchor", "rdr-anchor"]


@dataclass(frozen=True)
class Rule:
    """One expanded rule.  `text` and `where` say which statement it came from."""

    kind: Kind
    text: str
    where: str
    direction: Literal["in", "out"] | None = None
    quick: bool = False
    iface: IfSpec | None = None
    af: int | None = None
    proto: int | None = None
    src: Addr = ANY
    sport: PortOp | None = None
    dst: Addr = ANY
    dport: PortOp | None = None
    user: UserOp | None = None
    flags: tuple[int, int] | None = None  # (set, mask) a packet's TCP flags must show
    keep_state: bool = False
    # pf.conf(5) STATEFUL TRACKING OPTIONS `if-bound`/`floating`: this rule's states, over
    # `set state-policy` (pf.c BOUND_IFACE: PFRULE_IFBOUND binds the state to the interface)
    state_policy: Literal["floating", "if-bound"] | None = None
    icmp_type: int | None = None
    tag: str | None = None
    tagged: str | None = None
    tagged_neg: bool = False
    anchor: str | None = None  # for anchor calls: the name as written
    target: Addr | None = None  # nat/rdr: the replacement address
    target_port: int | None = None
    nat_pass: bool = False


@dataclass
class Table:
    entries: list[tuple[Net, bool]]  # (network, negated)

    def contains(self, addr: IPv4Address | IPv6Address) -> bool:
        """pf_table.c pfr_match_addr: the most specific entry decides; a `!` entry is a miss."""
        best: tuple[Net, bool] | None = None
        for net, neg in self.entries:
            if net.version == addr.version and addr in net and (best is None or net.prefixlen > best[0].prefixlen):
                best = (net, neg)
        return best is not None and not best[1]


@dataclass
class Ruleset:
    """The main ruleset or one anchor: its rules by kind, its tables, its options."""

    path: str = ""
    filter: list[Rule] = field(default_factory=list)
    nat: list[Rule] = field(default_factory=list)
    rdr: list[Rule] = field(default_factory=list)
    tables: dict[str, Table] = field(default_factory=dict)
    skip: list[IfSpec] = field(default_factory=list)
    state_policy: Literal["floating", "if-bound"] = "floating"
    anchors: dict[str, Ruleset] = field(default_factory=dict)  # every anchor by full path (main only)


# -- reading statements --------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s+
    |"(?P<str>[^"\n]*)"
    |(?P<table><[A-Za-z_][A-Za-z0-9_-]*>)
    |(?P<op>->|!=|<=|>=|><|<>|[{}(),!=<>])
    |(?P<word>[A-Za-z0-9_.:/$*+\-%]+)
    """,
    re.X,
)
_MACRO_DEF = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*)$", re.S)
_MACRO_USE = re.compile(r"\$([A-Za-z][A-Za-z0-9_]*)")
_RESERVED = {"pass", "block", "in", "out", "on", "from", "to", "all", "any", "quick", "nat", "rdr", "anchor", "table"}


def statements(text: str, source: str) -> Iterator[tuple[str, str]]:
    """(where, statement): comments stripped, `\\` continuations and multi-line `{ }` joined."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i
        parts: list[str] = []
        depth = 0
        while True:
            line = _strip_comment(lines[i])
            cont = line.rstrip().endswith("\\")
            if cont:
                line = line.rstrip()[:-1]
            parts.append(line)
            depth += line.count("{") - line.count("}")
            i += 1
            if (cont or depth > 0) and i < len(lines):
                continue
            break
        body = " ".join(p.strip() for p in parts).strip()
        if body:
            yield f"{source}:{start + 1}", body


def _strip_comment(line: str) -> str:
    """Drop a `#` comment outside double quotes (pf.conf(5): `#` to the end of the line)."""
    out, quoted = [], False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            break
        out.append(ch)
    return "".join(out)


def tokenize(text: str, where: str) -> list[str]:
    """Tokens; a quoted string keeps its quotes so callers can tell `"x"` from `x`."""
    out: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise PfSyntaxError(where, f"cannot read {text[pos:]!r}")
        pos = m.end()
        if m.group("str") is not None:
            out.append('"' + m.group("str") + '"')
        elif m.lastgroup is not None and m.lastgroup != "str":
            out.append(m.group(m.lastgroup))
    return out


def expand_macros(text: str, macros: Mapping[str, str], where: str) -> str:
    """Substitute `$name` outside quotes, repeatedly (a macro may use another, parse.y lgetc)."""

    def sub(part: str) -> str:
        for _ in range(32):
            new = _MACRO_USE.sub(lambda m: _macro(m.group(1)), part)
            if new == part:
                return new
            part = new
        raise PfSyntaxError(where, "macro expansion does not end")

    def _macro(name: str) -> str:
        if name not in macros:
            raise PfSyntaxError(where, f"macro '{name}' not defined")
        return macros[name]

    pieces = text.split('"')
    return '"'.join(sub(p) if i % 2 == 0 else p for i, p in enumerate(pieces))


# -- the parser ------------------------------------------------------------------------


class _Stream:
    def __init__(self, tokens: list[str], where: str) -> None:
        self.t = tokens
        self.i = 0
        self.where = where

    def peek(self, k: int = 0) -> str | None:
        return self.t[self.i + k] if self.i + k < len(self.t) else None

    def take(self) -> str:
        if self.i >= len(self.t):
            raise PfSyntaxError(self.where, "unexpected end of rule")
        tok = self.t[self.i]
        self.i += 1
        return tok

    def accept(self, *words: str) -> str | None:
        if self.peek() in words:
            return self.take()
        return None

    def expect(self, word: str) -> None:
        tok = self.take()
        if tok != word:
            raise PfSyntaxError(self.where, f"expected {word!r}, found {tok!r}")

    def done(self) -> bool:
        return self.i >= len(self.t)

    def fail(self, what: str = "") -> PfSyntaxError:
        rest = " ".join(self.t[self.i :])
        return PfSyntaxError(self.where, what or f"not understood: {rest!r}")


def _list(s: _Stream, item: Callable[[_Stream], list[object]]) -> list[object]:
    """`x` or `{ x, y z }` (commas optional, parse.y *_list rules)."""
    if s.accept("{"):
        out: list[object] = []
        while not s.accept("}"):
            if s.accept(","):
                continue
            out.extend(item(s))
        return out
    return item(s)


def _unquote(tok: str) -> str:
    return tok[1:-1] if len(tok) >= 2 and tok[0] == tok[-1] == '"' else tok


def _host(s: _Stream) -> list[object]:
    neg = bool(s.accept("!"))
    tok = s.take()
    if tok == "any":
        if neg:
            raise s.fail("'! any' is not a host")
        return [ANY]
    if tok.startswith("<") and tok.endswith(">"):
        return [Addr("table", name=tok[1:-1], neg=neg)]
    if tok == "(":
        name = s.take()
        s.expect(")")
        base, _, mod = name.partition(":")
        if mod not in ("", "0", "network", "broadcast"):
            raise s.fail(f"unknown interface modifier :{mod}")
        if base == "self":
            return [Addr("self", name="self", mod=mod, neg=neg)]
        return [Addr("dynamic", name=base, mod=mod, neg=neg)]
    if tok in ("no-route", "urpf-failed", "route"):
        raise s.fail(f"'{tok}' addresses are not supported by the evaluator")
    if tok.startswith('"'):
        tok = _unquote(tok)
    if tok == "self":
        return [Addr("self", name="self", neg=neg)]
    try:
        return [Addr("net", net=ip_network(tok, strict=False), neg=neg)]
    except ValueError:
        pass
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_.]*(:(0|network|broadcast))?", tok):
        base, _, mod = tok.partition(":")
        return [Addr("iface", name=base, mod=mod, neg=neg)]
    raise s.fail(f"cannot read host {tok!r} (host names are not resolved)")


def _port_number(s: _Stream, tok: str) -> int:
    tok = _unquote(tok)
    if tok.isdigit() and 0 <= int(tok) <= 65535:
        return int(tok)
    if tok in SERVICES:
        return SERVICES[tok]
    raise s.fail(f"unknown port {tok!r}")


def _port(s: _Stream) -> list[object]:
    tok = s.take()
    if tok in ("=", "!=", "<", "<=", ">", ">="):
        return [PortOp(tok, _port_number(s, s.take()))]
    if ":" in tok and tok.count(":") == 1 and all(p.isdigit() for p in tok.split(":")):
        low, high = tok.split(":")
        return [PortOp(":", int(low), int(high))]
    first = _port_number(s, tok)
    if s.peek() in ("><", "<>"):
        op = s.take()
        return [PortOp(op, first, _port_number(s, s.take()))]
    return [PortOp("=", first)]


# Words pfctl's lexer returns as keywords, not as a STRING, when they are not quoted
# (sbin/pfctl/parse.y `lookup`): the plain-word ones a login name could spell. A bare one
# where a user name is expected is a syntax error there, so it is one here.
PF_KEYWORDS = frozenset(
    [
        "all",
        "altq",
        "anchor",
        "antispoof",
        "any",
        "bandwidth",
        "binat",
        "bitmask",
        "block",
        "buckets",
        "cbq",
        "code",
        "codel",
        "debug",
        "drop",
        "ether",
        "fairq",
        "fingerprints",
        "flags",
        "floating",
        "flush",
        "for",
        "fragment",
        "from",
        "global",
        "group",
        "hfsc",
        "hogs",
        "hostid",
        "in",
        "include",
        "inet",
        "inet6",
        "interval",
        "keep",
        "l3",
        "label",
        "limit",
        "linkshare",
        "load",
        "log",
        "loginterface",
        "match",
        "max",
        "modulate",
        "nat",
        "no",
        "on",
        "optimization",
        "os",
        "out",
        "overload",
        "pass",
        "port",
        "prio",
        "priority",
        "priq",
        "proto",
        "qlimit",
        "queue",
        "quick",
        "random",
        "rdr",
        "realtime",
        "reassemble",
        "return",
        "ridentifier",
        "route",
        "rtable",
        "rule",
        "scrub",
        "set",
        "skip",
        "sloppy",
        "state",
        "synproxy",
        "table",
        "tag",
        "tagged",
        "target",
        "tbrsize",
        "timeout",
        "to",
        "tos",
        "ttl",
        "upperlimit",
        "user",
    ]
)


def _user_name(s: _Stream, tok: str) -> str:
    if tok in PF_KEYWORDS:
        raise s.fail(f"{tok!r} is a pf keyword where a user name is expected (quote it)")
    return _unquote(tok)


def _user(s: _Stream) -> list[object]:
    tok = s.take()
    if tok in ("=", "!=", "<", "<=", ">", ">="):
        return [UserOp(tok, _user_name(s, s.take()))]
    return [UserOp("=", _user_name(s, tok))]


def _iface(s: _Stream) -> list[object]:
    neg = bool(s.accept("!"))
    tok = _unquote(s.take())
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.]*", tok):
        raise s.fail(f"cannot read interface {tok!r}")
    return [IfSpec(tok, neg)]


def _proto(s: _Stream) -> list[object]:
    tok = s.take()
    if tok in PROTOCOLS:
        return [PROTOCOLS[tok]]
    if tok.isdigit():
        return [int(tok)]
    raise s.fail(f"unknown protocol {tok!r}")


def _flags(tok: str, s: _Stream) -> tuple[int, int] | None:
    if tok == "any":
        return None
    have, _, mask = tok.partition("/")
    try:
        set_bits = sum(TCP_FLAGS[c] for c in have)
        mask_bits = sum(TCP_FLAGS[c] for c in mask) if mask else 0xFF
    except KeyError as exc:
        raise s.fail(f"unknown TCP flag in {tok!r}") from exc
    return set_bits, mask_bits


@dataclass
class _Common:
    """What pass/block/anchor/nat/rdr share before list expansion."""

    direction: Literal["in", "out"] | None = None
    quick: bool = False
    ifaces: list[object] = field(default_factory=lambda: [None])
    af: int | None = None
    protos: list[object] = field(default_factory=lambda: [None])
    srcs: list[object] = field(default_factory=lambda: [ANY])
    sports: list[object] = field(default_factory=lambda: [None])
    dsts: list[object] = field(default_factory=lambda: [ANY])
    dports: list[object] = field(default_factory=lambda: [None])
    users: list[object] = field(default_factory=lambda: [None])


def _head(s: _Stream, c: _Common, allow_dir: bool = True) -> None:
    """dir, log, quick, on, af, proto, from/to: pfrule's fixed order (parse.y pfrule)."""
    if allow_dir and (d := s.accept("in", "out")):
        c.direction = "in" if d == "in" else "out"
    while s.peek() in ("log", "quick"):
        if s.take() == "quick":
            c.quick = True
        elif s.peek() == "(":
            while s.take() != ")":
                pass
    if s.accept("on"):
        c.ifaces = _list(s, _iface)
    if s.accept("inet"):
        c.af = 4
    elif s.accept("inet6"):
        c.af = 6
    if s.accept("proto"):
        c.protos = _list(s, _proto)
    if s.accept("all"):
        return
    # parse.y ipportspec: a host, a host and `port`, or `port` alone (any host).
    if s.accept("from"):
        if s.peek() != "port":
            c.srcs = _list(s, _host)
        if s.accept("port"):
            c.sports = _list(s, _port)
    if s.accept("to"):
        if s.peek() != "port":
            c.dsts = _list(s, _host)
        if s.accept("port"):
            c.dports = _list(s, _port)


def _expand(base: Rule, c: _Common, where: str) -> list[Rule]:
    """One rule per combination (parse.y expand_rule); af mismatches are dropped as pfctl does."""
    out: list[Rule] = []
    for iface, proto, src, sport, dst, dport, user in itertools.product(
        c.ifaces, c.protos, c.srcs, c.sports, c.dsts, c.dports, c.users
    ):
        assert isinstance(src, Addr) and isinstance(dst, Addr)
        af = c.af
        for a in (src.af, dst.af):
            if a is not None:
                if af is not None and af != a:
                    af = -1
                    break
                af = a
        if af == -1:
            continue  # expand_rule: "skip if af does not match"
        if (sport is not None or dport is not None) and proto not in (6, 17):
            raise PfSyntaxError(where, "port only applies to tcp/udp (pfctl: port only applies to tcp/udp)")
        out.append(
            replace(
                base,
                direction=c.direction,
                quick=c.quick,
                iface=iface if isinstance(iface, IfSpec) else None,
                af=af,
                proto=proto if isinstance(proto, int) else None,
                src=src,
                sport=sport if isinstance(sport, PortOp) else None,
                dst=dst,
                dport=dport if isinstance(dport, PortOp) else None,
                user=user if isinstance(user, UserOp) else None,
            )
        )
    if not out:
        raise PfSyntaxError(where, "rule expands to no rules (address families do not match)")
    return out


def _filter_rule(s: _Stream, text: str, where: str) -> list[Rule]:
    action = s.take()
    c = _Common()
    if action == "block":
        s.accept("drop", "return", "return-rst", "return-icmp", "return-icmp6")
    _head(s, c)
    keep: bool | None = None
    state_policy: Literal["floating", "if-bound"] | None = None
    flags: tuple[int, int] | Literal["unset"] | None = "unset"
    icmp_types: list[int | None] = [None]
    tag = tagged = None
    tagged_neg = False
    while not s.done():
        tok = s.take()
        if tok == "user":
            c.users = _list(s, _user)
        elif tok == "flags":
            flags = _flags(s.take(), s)
        elif tok in ("icmp-type", "icmp6-type"):
            names = ICMP_TYPES if tok == "icmp-type" else ICMP6_TYPES

            def one(s: _Stream, names: dict[str, int] = names, kw: str = tok) -> list[object]:
                t = s.take()
                if t in names:
                    return [names[t]]
                if t.isdigit():
                    return [int(t)]
                raise s.fail(f"unknown {kw} {t!r}")

            icmp_types = [t for t in _list(s, one) if isinstance(t, int)]
            if s.accept("code"):
                raise s.fail("icmp code matching is not supported by the evaluator")
        elif tok in ("keep", "modulate", "synproxy"):
            s.expect("state")
            keep = True
            if s.peek() == "(":
                depth = 0
                while True:
                    t = s.take()
                    depth += (t == "(") - (t == ")")
                    if t == "if-bound":
                        state_policy = "if-bound"
                    elif t == "floating":
                        state_policy = "floating"
                    if depth == 0:
                        break
        elif tok == "no":
            s.expect("state")
            keep = False
        elif tok in ("label", "ridentifier", "queue"):
            s.take()
        elif tok == "tag":
            tag = _unquote(s.take())
        elif tok == "!" and s.peek() == "tagged":
            s.take()
            tagged, tagged_neg = _unquote(s.take()), True
        elif tok == "tagged":
            tagged = _unquote(s.take())
        elif tok == "allow-opts":
            pass
        else:
            s.i -= 1
            raise s.fail()
    # pf.conf(5) PACKET FILTERING: pass rules keep state unless `no state`; block rules
    # never create state.  pf.conf(5) flags: "For stateful connections, the default is
    # flags S/SA" (parse.y pfrule: 'flags S/SA' by default on stateful rules).
    kind: Kind = "pass" if action == "pass" else "block"
    stateful = kind == "pass" and keep is not False
    if flags == "unset":
        flags = (TCP_FLAGS["S"], TCP_FLAGS["S"] | TCP_FLAGS["A"]) if stateful else None
    base = Rule(
        kind,
        text,
        where,
        keep_state=stateful,
        state_policy=state_policy,
        flags=flags,
        tag=tag,
        tagged=tagged,
        tagged_neg=tagged_neg,
    )
    return [replace(r, icmp_type=t) for r in _expand(base, c, where) for t in icmp_types]


def _anchor_call(s: _Stream, text: str, where: str, kind: Kind) -> list[Rule]:
    s.take()
    name = _unquote(s.take())
    if s.peek() == "{":
        raise s.fail("inline anchor blocks are not supported by the evaluator")
    c = _Common()
    _head(s, c)
    if not s.done():
        raise s.fail()
    return _expand(Rule(kind, text, where, anchor=name), c, where)


def _translation(s: _Stream, text: str, where: str) -> list[Rule]:
    negated = bool(s.accept("no"))
    word = s.take()
    if word not in ("nat", "rdr"):
        raise s.fail(f"'{word}' rules are not supported by the evaluator")
    nat_pass = bool(s.accept("pass"))
    if nat_pass:
        while s.peek() == "log":
            s.take()
    c = _Common()
    _head(s, c, allow_dir=False)
    tagged = None
    if s.accept("tagged"):
        tagged = _unquote(s.take())
    target: Addr | None = None
    port: int | None = None
    if s.accept("->"):
        if negated:
            raise s.fail(f"'no {word}' rule does not take '->'")
        targets = _list(s, _host)
        if len(targets) != 1:
            raise s.fail("address pools are not supported by the evaluator")
        target = targets[0]  # type: ignore[assignment]
        if s.accept("port"):
            port = _port_number(s, s.take())
            if s.peek() == ":" or s.accept("*"):
                raise s.fail("port ranges in translation are not supported by the evaluator")
        while s.accept("static-port", "source-hash", "round-robin", "random", "bitmask"):
            pass
    elif not negated:
        raise s.fail(f"'{word}' rule requires '-> address'")
    if not s.done():
        raise s.fail()
    kind: Kind = ("no-nat" if word == "nat" else "no-rdr") if negated else ("nat" if word == "nat" else "rdr")
    base = Rule(kind, text, where, target=target, target_port=port, nat_pass=nat_pass, tagged=tagged)
    c.direction = "out" if word == "nat" else "in"
    return _expand(base, c, where)


def _antispoof(s: _Stream, text: str, where: str, ifaces: Mapping[str, list[Iface]]) -> list[Rule]:
    """parse.y antispoof: per interface, `block drop in on ! IF from IF:network` and (not
    for loopback) `block drop in from IF's own addresses`."""
    s.take()
    quick = False
    while s.peek() in ("log", "quick"):
        if s.take() == "quick":
            quick = True
    s.expect("for")
    names = _list(s, _iface)
    af = 4 if s.accept("inet") else 6 if s.accept("inet6") else None
    if s.accept("label"):
        s.take()
    if not s.done():
        raise s.fail()
    out: list[Rule] = []
    for spec in names:
        assert isinstance(spec, IfSpec)
        if spec.name not in ifaces:
            raise PfSyntaxError(where, f"antispoof: no IP address found for {spec.name}")
        addrs = [a for a in ifaces[spec.name] if af is None or a.version == af]
        base = Rule("block", text, where, direction="in", quick=quick)
        for a in addrs:
            out.append(replace(base, iface=IfSpec(spec.name, True), af=a.version, src=Addr("net", net=a.network)))
        if spec.name != "lo0":
            for a in addrs:
                out.append(replace(base, af=a.version, src=Addr("net", net=ip_network(a.ip))))
    return out


def _table(s: _Stream, where: str) -> tuple[str, Table]:
    s.take()
    tok = s.take()
    if not (tok.startswith("<") and tok.endswith(">")):
        raise s.fail("table name must be <name>")
    name = tok[1:-1]
    while s.accept("persist", "const", "counters"):
        pass
    entries: list[tuple[Net, bool]] = []
    if s.accept("{"):
        while not s.accept("}"):
            if s.accept(","):
                continue
            neg = bool(s.accept("!"))
            t = s.take()
            try:
                entries.append((ip_network(t, strict=False), neg))
            except ValueError as exc:
                raise s.fail(f"table <{name}>: cannot read {t!r} (only addresses and networks)") from exc
    if s.peek() == "file":
        raise s.fail("table files are not supported by the evaluator")
    if not s.done():
        raise s.fail()
    return name, Table(entries)


Loader = Callable[[str], str | None]


def parse_ruleset(
    text: str,
    source: str = "/etc/pf.conf",
    files: Mapping[str, str] | None = None,
    interfaces: Mapping[str, list[Iface]] | None = None,
) -> Ruleset:
    """The main ruleset with every `load anchor` and `include` resolved from FILES.

    INTERFACES (name -> its networks with the interface address as host bits) are only
    needed for `antispoof`, which pfctl expands from the interfaces at load time.
    """
    files = dict(files or {})
    main = Ruleset()
    main.anchors[""] = main
    _parse_into(main, main, text, source, files, dict(interfaces or {}), {}, depth=0)
    return main


def anchor_file_ruleset(main: Ruleset, path: str) -> Ruleset:
    if path not in main.anchors:
        main.anchors[path] = Ruleset(path=path)
    return main.anchors[path]


def _parse_into(
    main: Ruleset,
    rs: Ruleset,
    text: str,
    source: str,
    files: dict[str, str],
    ifaces: dict[str, list[Iface]],
    macros: dict[str, str],
    depth: int,
) -> None:
    if depth > 8:
        raise PfSyntaxError(source, "includes nest too deep")
    for where, raw in statements(text, source):
        m = _MACRO_DEF.match(raw)
        if m and m.group(1) not in _RESERVED and not raw.startswith(("pass", "block")):
            name, value = m.group(1), m.group(2).strip()
            toks = tokenize(expand_macros(value, macros, where), where)
            if not toks or not all(t.startswith('"') for t in toks):
                raise PfSyntaxError(where, f"macro {name}: value must be a quoted string")
            macros[name] = " ".join(_unquote(t) for t in toks)
            continue
        stmt = expand_macros(raw, macros, where)
        s = _Stream(tokenize(stmt, where), where)
        first = s.peek()
        if first == "include":
            s.take()
            path = _unquote(s.take())
            if path not in files:
                raise PfSyntaxError(where, f"cannot open {path}")
            _parse_into(main, rs, files[path], path, files, ifaces, macros, depth + 1)
        elif first == "table":
            name, table = _table(s, where)
            rs.tables[name] = table
        elif first == "set":
            s.take()
            opt = s.take()
            if opt == "skip":
                s.expect("on")
                rs.skip.extend(x for x in _list(s, _iface) if isinstance(x, IfSpec))
            elif opt == "state-policy":
                pol = s.take()
                if pol not in ("floating", "if-bound"):
                    raise s.fail(f"unknown state-policy {pol!r}")
                rs.state_policy = "floating" if pol == "floating" else "if-bound"
            elif opt in NEUTRAL_OPTIONS:
                continue
            else:
                raise s.fail(f"unknown option 'set {opt}'")
        elif first == "scrub":
            continue  # normalization: reassembles and cleans packets, decides no verdict
        elif first in ("nat", "rdr", "no"):
            for r in _translation(s, stmt, where):
                (rs.nat if r.kind in ("nat", "no-nat") else rs.rdr).append(r)
        elif first in ("nat-anchor", "rdr-anchor"):
            kind: Kind = "nat-anchor" if first == "nat-anchor" else "rdr-anchor"
            rules = _anchor_call(s, stmt, where, kind)
            for r in rules:
                (rs.nat if kind == "nat-anchor" else rs.rdr).append(
                    replace(r, direction="out" if kind == "nat-anchor" else "in")
                )
        elif first == "anchor":
            rs.filter.extend(_anchor_call(s, stmt, where, "anchor"))
        elif first == "load":
            s.take()
            s.expect("anchor")
            name = _unquote(s.take())
            s.expect("from")
            path = _unquote(s.take())
            if path not in files:
                raise PfSyntaxError(where, f"cannot open {path} (load anchors)")
            full = f"{rs.path}/{name}".strip("/")
            child = anchor_file_ruleset(main, full)
            # pfctl parses each `load anchor` file on its own: no macros from pf.conf
            # (parse.y parse_config frees every symbol after a file).
            _parse_into(main, child, files[path], path, files, ifaces, {}, depth + 1)
        elif first in ("pass", "block"):
            rs.filter.extend(_filter_rule(s, stmt, where))
        elif first == "antispoof":
            rs.filter.extend(_antispoof(s, stmt, where, ifaces))
        else:
            raise PfSyntaxError(where, f"not understood by the evaluator: {raw!r}")
