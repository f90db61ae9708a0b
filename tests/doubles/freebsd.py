#!/usr/bin/python3
"""Test doubles for the FreeBSD commands warden-provision runs on a host.

Installed inside the test host's root tree at the FreeBSD paths (sysrc, pfctl,
arp, ifconfig, service, bastille, vm, pkg, jls, sysctl, kldload, kldstat, rctl, daemon, install,
freebsd-version, ps, chroot), one file dispatching on the name it is called by.  Every call is
appended to /var/log/warden-doubles.jsonl; state lives in /var/db/warden-doubles/.
Each behaviour cites the upstream file and function it follows (freebsd-src
libexec/rc/rc.subr, libexec/rc/rc.d/pf, usr.bin/rctl/rctl.c; BastilleBSD/bastille
usr/local/share/bastille/*.sh; churchers/vm-bhyve lib/*) and refuses what the real
command refuses; what a double cannot emulate it refuses loudly ("double: … not
emulated") rather than pretend success. docs/freebsd.md collects these facts.
The doubles run inside the chroot, so "/" is the test host's tree.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

STATE_DIR = Path("/var/db/warden-doubles")
LOG = Path("/var/log/warden-doubles.jsonl")
SSH_CUT = STATE_DIR / "ssh-cut"
FORCE_CUT = STATE_DIR / "force-ssh-cut"
# A test's instruction to fail a call (tests/hostkit/testhost.py fail_call): {"match": "bastille
# template", "n": 2} fails the 2nd call whose command line starts with "bastille template".
FAIL = STATE_DIR / "fail.json"
RC_CONF = Path("/etc/rc.conf")


# -- state -------------------------------------------------------------------------------


class State:
    """state.json under an exclusive lock for the whole command (calls may run in parallel)."""

    def __enter__(self) -> dict[str, Any]:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(STATE_DIR / "state.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        path = STATE_DIR / "state.json"
        self.text = path.read_text() if path.exists() else ""
        self.data: dict[str, Any] = json.loads(self.text) if self.text else {}
        self.data.setdefault(
            "interfaces",
            {
                "vtnet0": {"inet": ["192.0.2.10/24"], "up": True, "members": [], "bridge": False},
                "lo0": {"inet": ["127.0.0.1/8"], "up": True, "members": [], "bridge": False},
            },
        )
        self.data.setdefault("pf", {"enabled": False, "main": None, "anchors": {}, "loads": 0})
        self.data.setdefault("services", {})
        self.data.setdefault("jails", {})
        self.data.setdefault("vms", {})
        self.data.setdefault("switches", {})
        self.data.setdefault("packages", ["bastille", "vm-bhyve", "python311", "git", "tmux", "node"])
        self.data.setdefault(
            "sysctl",
            {
                "net.inet.ip.forwarding": "0",
                "kern.racct.enable": "1",
                "kern.features.vimage": "1",
                "kern.osrelease": "14.3-RELEASE",
                # sys/net/if_bridge.c: the VNET sysctls' initial values
                "net.link.bridge.pfil_onlyip": "1",
                "net.link.bridge.pfil_bridge": "1",
                "net.link.bridge.pfil_member": "1",
                "net.link.bridge.pfil_local_phys": "0",
            },
        )
        self.data.setdefault("modules", ["pf", "if_bridge", "vmm"])
        self.data.setdefault("rctl", [])
        return self.data

    def __exit__(self, *exc: object) -> None:
        text = json.dumps(self.data, indent=1, sort_keys=True)
        if text != self.text:  # a read-only call (ifconfig, jls, ps, rctl…) leaves the file alone
            tmp = STATE_DIR / "state.json.tmp"
            tmp.write_text(text)
            tmp.replace(STATE_DIR / "state.json")
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def log_call(cmd: str, argv: list[str]) -> None:
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("a") as fh:
        fh.write(json.dumps({"time": time.time(), "cmd": cmd, "argv": argv, "cwd": os.getcwd()}) + "\n")


def die(msg: str, code: int = 1) -> NoReturn:
    print(msg, file=sys.stderr)
    sys.exit(code)


# -- rc.conf reading with sh semantics (docs/freebsd.md#sysrc: last assignment wins) ------

_ASSIGN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def sh_value(raw: str) -> str:
    try:
        words = shlex.split(raw, comments=True)
    except ValueError:
        return raw
    return words[0] if words else ""


def rc_vars(path: Path = RC_CONF) -> dict[str, str]:
    out: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            m = _ASSIGN.match(line)
            if m:
                out[m.group(1)] = sh_value(m.group(2))
    return out


# -- sysrc (docs/freebsd.md#sysrc) --------------------------------------------------------


def sysrc(argv: list[str]) -> int:
    files: list[Path] = []
    check = delete = value_only = ignore = False
    args = list(argv)
    while args and args[0].startswith("-") and args[0] != "-":
        opt = args.pop(0)
        if opt == "-f":
            files.append(Path(args.pop(0)))
        elif opt == "-c":
            check = True
        elif opt == "-x":
            delete = True
        elif opt == "-n":
            value_only = True
        elif opt == "-i":
            ignore = True
        elif opt in ("-e", "-q", "-v", "-E"):
            pass
        else:
            die(f"sysrc: unsupported option {opt}", 2)
    target_files = files or [RC_CONF, Path("/etc/rc.conf.local")]
    status = 0
    for arg in args:
        name, sep, value = arg.partition("=")
        mode = "set"
        if sep and name.endswith("+"):
            name, mode = name[:-1], "append"
        elif sep and name.endswith("-"):
            name, mode = name[:-1], "remove"
        current: dict[str, str] = {}
        holder = None
        for f in target_files:
            vs = rc_vars(f)
            if name in vs:
                current[name] = vs[name]
                holder = f
        if delete:
            if check:
                status |= 0 if name not in current else 1
                continue
            for f in target_files:
                if f.exists():
                    lines = [
                        ln
                        for ln in f.read_text().splitlines(True)
                        if not ((m := _ASSIGN.match(ln)) and m.group(1) == name)
                    ]
                    f.write_text("".join(lines))
            continue
        if not sep:
            if name not in current:
                if not ignore:
                    print(f"sysrc: unknown variable '{name}'", file=sys.stderr)
                    status = 1
                continue
            print(current[name] if value_only else f"{name}: {current[name]}")
            continue
        old = current.get(name, "")
        if mode == "append":
            items = old.split()
            new = old if value.strip() in items else " ".join([*items, value.strip()])
        elif mode == "remove":
            new = " ".join(i for i in old.split() if i != value.strip())
        else:
            new = value
        if check:
            status |= 0 if (name in current and old == new) else 1
            continue
        f = holder or target_files[0]
        lines = f.read_text().splitlines(True) if f.exists() else []
        hits = [i for i, ln in enumerate(lines) if (m := _ASSIGN.match(ln)) and m.group(1) == name]
        if hits:
            lines[hits[-1]] = f'{name}="{new}"\n'
        else:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines.append(f'{name}="{new}"\n')
        f.write_text("".join(lines))
        print(f"{name}: {old} -> {new}")
    return status


# -- pfctl (docs/freebsd.md#pf-statement-order) -------------------------------------------

ORDER = ["options", "ethernet", "normalization", "queueing", "translation", "filtering"]
ORDER_ERROR = "Rules must be in order: options, ethernet, normalization, queueing, translation, filtering"


def _pf_statements(path: Path, seen: set[Path]) -> list[tuple[Path, int, str]]:
    """Statements of PATH with `include` followed lexically (docs/freebsd.md#pf-statement-order); lines joined."""
    if path in seen:
        return []
    seen.add(path)
    out: list[tuple[Path, int, str]] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        start, text = i, lines[i]
        while text.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text.rstrip()[:-1] + " " + lines[i]
        body = text.split("#", 1)[0].strip()
        i += 1
        if not body:
            continue
        m = re.match(r'^include\s+"([^"]+)"$', body)
        if m:
            inc = Path(m.group(1))
            if not inc.exists():
                out.append((path, start + 1, f"!cannot open {inc}"))
            else:
                out.extend(_pf_statements(inc, seen))
            continue
        out.append((path, start + 1, body))
    return out


def _section(body: str) -> str | None:
    first = body.split()[0]
    if re.match(r"^[A-Za-z][A-Za-z0-9_]*\s*=", body) or first == "table":
        return None
    return {
        "set": "options",
        "ether": "ethernet",
        "scrub": "normalization",
        "altq": "queueing",
        "queue": "queueing",
        "nat": "translation",
        "rdr": "translation",
        "binat": "translation",
        "nat-anchor": "translation",
        "rdr-anchor": "translation",
        "binat-anchor": "translation",
        "no": "translation",
        "pass": "filtering",
        "block": "filtering",
        "anchor": "filtering",
        "antispoof": "filtering",
        "match": "filtering",
        "load": None,
    }.get(first, "unknown")


def pf_check(path: Path, macros: dict[str, str] | None = None) -> list[str]:
    """pfctl -nf: section order, nat needs `->`, defined macros, loaded anchor files.

    docs/freebsd.md#pf-statement-order, docs/freebsd.md#nat-and-forwarding, docs/freebsd.md#pf-anchors.
    """
    errors: list[str] = []
    if not path.exists():
        return [f"pfctl: {path}: No such file or directory"]
    macros = dict(macros or {})
    reached = 0
    for file, line, body in _pf_statements(path, set()):
        if body.startswith("!"):
            errors.append(f"{file}:{line}: {body[1:]}")
            continue
        m = re.match(r"^([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*)$", body)
        if m:
            macros[m.group(1)] = m.group(2)
            continue
        for used in re.findall(r"\$([A-Za-z][A-Za-z0-9_]*)", body):
            if used not in macros:
                errors.append(f"{file}:{line}: macro '{used}' not defined")
        section = _section(body)
        if section == "unknown":
            errors.append(f"{file}:{line}: syntax error")
            continue
        if section is None:
            lm = re.match(r'^load anchor "?([^" ]+)"? from "([^"]+)"$', body)
            if body.startswith("load") and not lm:
                errors.append(f"{file}:{line}: syntax error")
            elif lm:
                # The anchor file is parsed separately: main-ruleset macros are not visible
                # (docs/freebsd.md#pf-anchors).
                errors.extend(pf_check(Path(lm.group(2)), {}))
            continue
        if section == "translation" and body.split()[0] in ("nat", "rdr", "binat") and "->" not in body:
            errors.append(f"{file}:{line}: '{body.split()[0]}' rule requires '-> address'")
        rank = ORDER.index(section)
        if rank < reached:
            errors.append(f"{file}:{line}: {ORDER_ERROR}")
        reached = max(reached, rank)
    return errors


def _expanded(text: str) -> list[str]:
    """Rules as `pfctl -s rules` shows them: macros substituted, one rule per list item."""
    macros: dict[str, str] = {}
    out: list[str] = []
    for line in text.splitlines():
        body = line.split("#", 1)[0].strip()
        m = re.match(r"^([A-Za-z][A-Za-z0-9_]*)\s*=\s*\"(.*)\"$", body)
        if m:
            macros[m.group(1)] = m.group(2)
            continue
        if not body or body.startswith(("table", "load ")) or _section(body) in (None, "options"):
            continue
        body = re.sub(r"\$([A-Za-z][A-Za-z0-9_]*)", lambda mm: macros.get(mm.group(1), mm.group(0)), body)
        lm = re.search(r"\{([^}]*)\}", body)
        items = lm.group(1).replace(",", " ").split() if lm else []
        if lm and items:
            out += [body[: lm.start()] + item + body[lm.end() :] for item in items]
        else:
            out.append(body)
    return out


def _blocks_ssh(text: str) -> bool:
    """Emulated effect on NEW ssh connections: a default block and no pass for port 22/ssh."""
    bodies = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    default_block = any(
        re.match(r"^block\b.*\ball\b", b) or re.match(r"^block( drop| return)?( log)? in\s*$", b) for b in bodies
    )
    ssh_pass = any(b.startswith("pass") and re.search(r"\bport\s*(=\s*)?(22|ssh)\b", b) for b in bodies)
    return default_block and not ssh_pass


def pfctl(argv: list[str]) -> int:
    args = list(argv)
    anchor = None
    dry = False
    load = None
    show = None
    flush = False
    enable = disable = False
    table = None
    table_cmd: list[str] = []
    quiet = False
    while args:
        a = args.pop(0)
        if a == "-a":
            anchor = args.pop(0)
        elif a in ("-f",):
            load = args.pop(0)
        elif re.match(r"^-[vnq]*f$", a):
            dry = dry or "n" in a
            load = args.pop(0)
        elif a in ("-n", "-v", "-vn", "-nv"):
            dry = dry or "n" in a
        elif a == "-q":
            quiet = True
        elif a in ("-s",):
            show = args.pop(0)
        elif a.startswith("-s") and len(a) > 2:
            show = {"r": "rules", "n": "nat", "i": "info", "a": "all"}.get(a[2:], a[2:])
        elif a == "-F":
            args.pop(0)
            flush = True
        elif a in ("-e", "-eq"):
            enable = True
        elif a in ("-d", "-dq"):
            disable = True
        elif a == "-t":
            table = args.pop(0)
        elif a == "-T":
            table_cmd = args[:]
            args.clear()
        else:
            die(f"pfctl: unknown option {a}", 1)
    with State() as st:
        pf = st["pf"]
        if enable:
            if pf["enabled"]:
                print("pfctl: pf already enabled", file=sys.stderr)
                return 1
            pf["enabled"] = True
            if not quiet:
                print("pf enabled", file=sys.stderr)
            return 0
        if disable:
            pf["enabled"] = False
            SSH_CUT.unlink(missing_ok=True)
            if not quiet:
                print("pf disabled", file=sys.stderr)
            return 0
        if flush:
            if anchor:
                pf["anchors"].pop(anchor, None)
            else:
                pf["main"], pf["anchors"] = None, {}
                SSH_CUT.unlink(missing_ok=True)
            return 0
        if table:
            pf.setdefault("tables", {}).setdefault(table, [])
            if table_cmd[:1] == ["add"]:
                pf["tables"][table] += [x for x in table_cmd[1:] if x not in pf["tables"][table]]
            elif table_cmd[:1] == ["show"]:
                print("\n".join(f"   {x}" for x in pf["tables"][table]))
            return 0
        if load is not None:
            text = sys.stdin.read() if load == "-" else (Path(load).read_text() if Path(load).exists() else None)
            if text is None:
                print(f"pfctl: {load}: No such file or directory", file=sys.stderr)
                return 1
            src = Path(load) if load != "-" else STATE_DIR / "stdin.conf"
            if load == "-":
                src.write_text(text)
            errors = pf_check(src, {})
            if errors:
                print("\n".join(errors), file=sys.stderr)
                return 1
            if dry:
                return 0
            if anchor:
                pf["anchors"][anchor] = text
            else:
                pf["main"] = text
                for lm in re.finditer(r'^load anchor "?([^" ]+)"? from "([^"]+)"', text, re.M):
                    pf["anchors"][lm.group(1)] = Path(lm.group(2)).read_text()
                pf["loads"] += 1
                if FORCE_CUT.exists() or _blocks_ssh(text):
                    FORCE_CUT.unlink(missing_ok=True)
                    SSH_CUT.write_text("cut\n")
                else:
                    SSH_CUT.unlink(missing_ok=True)
            return 0
        if show is not None:
            if show == "info":
                print(f"Status: {'Enabled' if pf['enabled'] else 'Disabled'}")
            elif show in ("rules", "nat", "all"):
                text = pf["anchors"].get(anchor, "") if anchor else (pf["main"] or "")
                for body in _expanded(text):
                    if show == "all" or (show == "nat") == (_section(body) == "translation"):
                        print(body)
            elif show == "Anchors":
                print("\n".join(f"  {a}" for a in sorted(pf["anchors"])))
            return 0
    die("pfctl: nothing to do", 1)
    return 1


def _keeps_established_ssh(text: str, port: str) -> bool:
    """Does a mid-stream packet (ACK, no SYN) of an open SSH session pass TEXT with no state?

    `pfctl -F all` leaves no state, so only a rule can pass it; a stateful pass rule has
    `flags S/SA` unless it says otherwise (sbin/pfctl/parse.y pfrule: "'flags S/SA' by
    default on stateful rules"), so it takes `flags any` or `no state` — or no default block.
    """
    bodies = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    default_block = any(
        re.match(r"^block\b.*\ball\b", b) or re.match(r"^block( drop| return)?( log)? in\s*$", b) for b in bodies
    )
    ports = rf"(22|ssh|{re.escape(port)})" if port else r"(22|ssh)"
    midstream = any(
        b.startswith("pass")
        and re.search(rf"\bport\s*(=\s*)?(\{{[^}}]*\b{ports}\b[^}}]*\}}|{ports}\b)", b)
        and re.search(r"\bflags any\b|\bno state\b", b)
        for b in bodies
    )
    return not default_block or midstream


def _cut_this_session() -> None:
    """End the SSH session this command runs in, as a flushed state table does to an
    established connection no rule passes: kill the nearest sshd ancestor."""
    pid = os.getppid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if comm.startswith("sshd"):
            os.kill(pid, 9)
            return
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])


# -- ifconfig (docs/freebsd.md#the-warden0-bridge) ----------------------------------------


def _mask(prefix: int) -> str:
    return f"0x{(0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:08x}"


def ifconfig(argv: list[str]) -> int:
    with State() as st:
        return _ifconfig(st, argv)


def _ifconfig(st: dict[str, Any], argv: list[str]) -> int:
    ifs: dict[str, Any] = st["interfaces"]
    if not argv:
        for name in sorted(ifs):
            _show(name, ifs[name])
        return 0
    if argv == ["-l"]:
        print(" ".join(sorted(ifs)))
        return 0
    if argv[:2] == ["-g", "bridge"]:
        print("\n".join(n for n in sorted(ifs) if ifs[n]["bridge"]))
        return 0
    name, rest = argv[0], argv[1:]
    if rest[:1] == ["create"] and name in ("bridge", "epair"):
        n = 0
        while f"{name}{n}" in ifs or f"{name}{n}a" in ifs:
            n += 1
        new = f"{name}{n}" if name == "bridge" else f"epair{n}a"
        ifs[new] = {"inet": [], "up": False, "members": [], "bridge": name == "bridge"}
        if name == "epair":
            ifs[f"epair{n}b"] = {"inet": [], "up": False, "members": [], "bridge": False}
        rest = rest[1:]
        if rest[:1] == ["name"]:
            return _rename(ifs, new, rest[1])
        print(new)
        return 0
    if name not in ifs:
        die(f"ifconfig: interface {name} does not exist", 1)
    if not rest:
        _show(name, ifs[name])
        return 0
    while rest:
        word = rest.pop(0)
        if word == "name":
            return _rename(ifs, name, rest.pop(0))
        if word == "destroy":
            del ifs[name]
            # bridge_ifdetach → bridge_delete_member → bridge_rtdelete(…, IFBF_FLUSHALL):
            # the member leaves the bridge with every forwarding entry on it, static ones too
            # (docs/freebsd.md#arp-and-the-bridges-forwarding-table).
            for other in ifs.values():
                if name in other["members"]:
                    other["members"].remove(name)
                fdb = other.get("fdb", {})
                for mac in [m for m, e in fdb.items() if e["member"] == name]:
                    del fdb[mac]
            return 0
        if word == "up":
            ifs[name]["up"] = True
        elif word == "down":
            ifs[name]["up"] = False
        elif word == "addm":
            ifs[name]["members"].append(rest.pop(0))
        elif word == "deletem":
            member = rest.pop(0)
            ifs[name]["members"] = [m for m in ifs[name]["members"] if m != member]
        elif word == "inet":
            addr = rest.pop(0)
            flag = rest.pop(0) if rest and rest[0] in ("alias", "-alias", "delete") else "set"
            if flag in ("-alias", "delete"):
                ifs[name]["inet"] = [a for a in ifs[name]["inet"] if a.split("/")[0] != addr.split("/")[0]]
            elif flag == "alias":
                if addr.split("/")[0] in [a.split("/")[0] for a in ifs[name]["inet"]]:
                    die("ifconfig: ioctl (SIOCAIFADDR): File exists", 1)
                ifs[name]["inet"].append(addr)
            else:
                ifs[name]["inet"] = [addr, *ifs[name]["inet"][1:]]
        elif word == "ether":
            # af_link.c: `ether` is an address family and its address the link-level one
            # (SIOCSIFLLADDR; if_setlladdr takes IFT_BRIDGE too); network.subr adds `alias`.
            text = rest.pop(0)
            lladdr = _ether_aton(text)
            if lladdr is None:
                die(f"ifconfig: malformed link-level address {text}", 1)
            ifs[name]["ether"] = lladdr
            if rest[:1] == ["alias"]:
                rest.pop(0)
        elif word in ("static", "deladdr", "addr") and ifs[name]["bridge"]:
            _bridge_addr(ifs[name], word, rest)
        else:
            die(f"ifconfig: {word}: bad value", 1)
    return 0


def _ether_aton(text: str) -> str | None:
    """libc ether_aton: six hex fields split by ':' (sscanf %x), None otherwise; the
    address as ether_ntoa prints it (%02x each)."""
    parts = text.split(":")
    if len(parts) != 6 or not all(re.fullmatch(r"[0-9A-Fa-f]{1,2}", p) for p in parts):
        return None
    return ":".join(f"{int(p, 16):02x}" for p in parts)


def _bridge_addr(bridge: dict[str, Any], word: str, rest: list[str]) -> None:
    """ifconfig BRIDGE static MEMBER MAC / deladdr MAC / addr (sbin/ifconfig/ifbridge.c
    setbridge_static, setbridge_deladdr, bridge_addresses; sys/net/if_bridge.c
    bridge_ioctl_saddr, bridge_rtupdate, bridge_rtdaddr; docs/freebsd.md#arp-and-the-bridges-forwarding-table)."""
    fdb: dict[str, Any] = bridge.setdefault("fdb", {})
    if word == "addr":
        # "%s Vlan%d %s %lu " then printb("flags", …, IFBAFBITS); a static entry never expires.
        for mac, e in sorted(fdb.items()):
            flags = "flags=1<STATIC>" if e["static"] else "flags=0<>"
            print(f"{mac} Vlan1 {e['member']} {0 if e['static'] else 1200} {flags}")
        return
    if word == "deladdr":
        text = rest.pop(0)
        gone = _ether_aton(text)
        if gone is None:
            die(f"ifconfig: invalid address: {text}", 1)
        if gone not in fdb:
            die(f"ifconfig: BRDGDADDR {text}: No such file or directory", 1)  # bridge_rtdaddr: ENOENT
        del fdb[gone]
        return
    member, text = rest.pop(0), rest.pop(0)
    lladdr = _ether_aton(text)
    if lladdr is None:
        die(f"ifconfig: {member}: invalid address: {text}", 1)
    if member not in bridge["members"]:
        die(f"ifconfig: BRDGSADDR {member}: No such file or directory", 1)  # bridge_lookup_member: ENOENT
    old = fdb.get(lladdr)
    # bridge_rtupdate: an existing entry moves to MEMBER only while it is dynamic; then
    # the flags are set (IFBAF_STATIC). A static entry on another member stays there.
    where = member if old is None or not old["static"] else old["member"]
    fdb[lladdr] = {"member": where, "static": True}


def _rename(ifs: dict[str, Any], old: str, new: str) -> int:
    if len(new) > 15:
        die("ifconfig: ioctl SIOCSIFNAME (set name): Invalid argument", 1)  # docs/freebsd.md#interface-name-length
    if new in ifs:
        die("ifconfig: ioctl SIOCSIFNAME (set name): File exists", 1)
    ifs[new] = ifs.pop(old)
    print(new)
    return 0


def _show(name: str, i: dict[str, Any]) -> None:
    flags = "UP,BROADCAST,RUNNING" if i["up"] else "BROADCAST"
    print(f"{name}: flags=8843<{flags}> metric 0 mtu 1500")
    if name != "lo0":  # af_link.c link_status: "ether" for Ethernet and bridge interfaces
        print(f"\tether {_arp_mac_of(name, i)}")
    for a in i["inet"]:
        ip, _, prefix = a.partition("/")
        print(f"\tinet {ip} netmask {_mask(int(prefix or 32))}")
    for m in i["members"]:
        print(f"\tmember: {m} flags=143<LEARNING,DISCOVER,AUTOEDGE,AUTOPTP>")


# -- arp (usr.sbin/arp/arp.c; docs/freebsd.md#arp-and-the-bridges-forwarding-table) ------------


def _arp_usage() -> NoReturn:
    print(
        "usage: arp [-n] [-i interface] hostname\n       arp [-n] [-i interface] -a\n"
        "       arp -d hostname [pub]\n       arp -d [-i interface] -a\n"
        "       arp -s hostname ether_addr [temp] [reject | blackhole] [pub [only]]\n"
        "       arp -S hostname ether_addr [temp] [reject | blackhole] [pub [only]]\n"
        "       arp -f filename",
        file=sys.stderr,
    )
    sys.exit(1)


def _arp_iface(ifs: dict[str, Any], ip: str) -> str | None:
    """The interface whose connected network holds IP (arp_netlink.c fix_ifindex; 0 when none)."""
    addr = ipaddress.IPv4Address(ip)
    for name in sorted(ifs):
        for a in ifs[name]["inet"]:
            if name != "lo0" and addr in ipaddress.IPv4Interface(a).network:
                return name
    return None


def _arp_mac_of(name: str, i: dict[str, Any]) -> str:
    d = hashlib.sha256(name.encode()).hexdigest()
    return str(i.get("ether") or f"58:9c:fc:{d[0:2]}:{d[2:4]}:{d[4:6]}")


def arp(argv: list[str]) -> int:
    with State() as st:
        return _arp(argv, st["interfaces"], st.setdefault("arp", {}))


def _arp(argv: list[str], ifs: dict[str, Any], table: dict[str, Any]) -> int:
    """-a/-n/-i list, -s/-S set (F_SET; F_REPLACE deletes first), -d delete, on the ARP
    table TABLE of a network stack whose interfaces are IFS (the host's, or a VNET jail's:
    each VNET has its own, if_ether.c V_ variables)."""
    flags: set[str] = set()
    iface = None
    args = list(argv)
    while args and args[0].startswith("-") and len(args[0]) > 1:
        word = args.pop(0)
        for i, letter in enumerate(word[1:]):
            if letter == "i":
                iface = word[i + 2 :] or (args.pop(0) if args else _arp_usage())
                break
            if letter not in "adnsS":
                _arp_usage()
            flags.add(letter)
    if iface is not None and iface not in ifs:
        die(f"arp: interface {iface} does not exist", 1)
    if "a" in flags and not flags & {"s", "S", "d"}:
        if args:
            _arp_usage()
        # Interface addresses are permanent entries too (if_ether.c arp_add_ifa_lle:
        # LLE_IFADDR | LLE_STATIC); print_entry: "? (IP) at MAC on IF permanent [type]".
        rows = [(a.split("/")[0], _arp_mac_of(n, i), n, True) for n, i in ifs.items() for a in i["inet"] if n != "lo0"]
        rows += [(ip, e["mac"], e["iface"], e["permanent"]) for ip, e in table.items()]
        for ip, mac, name, permanent in sorted(rows, key=lambda r: ipaddress.IPv4Address(r[0])):
            if iface is not None and name != iface:
                continue
            kind = "bridge" if ifs.get(name, {}).get("bridge") else "ethernet"
            life = "permanent" if permanent else "expires in 1200 seconds"
            print(f"? ({ip}) at {mac} on {name} {life} [{kind}]")
        return 0
    # FreeBSD 14 and later build arp with netlink (arp_netlink.c): an address on no
    # connected network is "delete: cannot locate HOST" with exit status 0, for -s/-S
    # as for -d; a set creates or replaces (NLM_F_CREATE | NLM_F_REPLACE).
    if "d" in flags:
        if len(args) != 1:
            _arp_usage()
        if _arp_iface(ifs, args[0]) is None:
            print(f"arp: delete: cannot locate {args[0]}", file=sys.stderr)
            return 0
        if args[0] not in table:
            die(f"arp: delete {args[0]}: No such file or directory", 1)
        del table[args[0]]
        print(f"{args[0]} ({args[0]}) deleted")
        return 0
    if flags & {"s", "S"}:
        if not 2 <= len(args) <= 6:
            _arp_usage()
        host, text = args[0], args[1]
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            die(f"arp: {host}: Unknown host", 1)  # getaddr: inet_addr, then gethostbyname
        dev = _arp_iface(ifs, host)
        if "S" in flags and dev is not None:
            table.pop(host, None)  # F_REPLACE: delete(argv[0]) first, its failure ignored
        lladdr = _ether_aton(text)
        if lladdr is None:
            die(f"arp: invalid Ethernet address '{text}'", 1)
        if dev is None:
            print(f"arp: delete: cannot locate {host}", file=sys.stderr)
            return 0
        table[host] = {"mac": lladdr, "iface": dev, "permanent": True}
        return 0
    _arp_usage()


# -- service (rc.subr run_rc_command; rc.d/pf) --------------------------------------------

YES = ("YES", "TRUE", "ON", "1")


def _enabled(vs: dict[str, str], rcvar: str) -> bool:
    return vs.get(rcvar, "NO").upper() in YES  # rc.subr checkyesno


def _not_enabled(name: str, verb: str) -> int:
    """rc.subr run_rc_command: a start/restart of a service whose rcvar is not YES prints
    this on stdout and returns 0, having done nothing."""
    print(f"Cannot '{verb}' {name}. Set {name}_enable to YES in /etc/rc.conf or use 'one{verb}' instead of '{verb}'.")
    return 0


def _pf_service(verb: str) -> int:
    """libexec/rc/rc.d/pf: check = pfctl -n -f; reload/resync = -n -f then -f (states kept);
    start = -F all, -f (or the fallback), -e if not enabled. required_files=$pf_rules."""
    vs = rc_vars()
    rules = vs.get("pf_rules", "/etc/pf.conf")
    forced = verb.startswith(("one", "force"))
    base = re.sub(r"^(one|force|fast|quiet)", "", verb)
    if base == "status":
        return pfctl(["-s", "info"])
    if base in ("start", "restart", "reload", "resync", "check") and not forced and not _enabled(vs, "pf_enable"):
        return _not_enabled("pf", base)
    if base in ("start", "restart", "reload", "resync", "check") and not os.access(rules, os.R_OK):
        # rc.subr check_required_before: required_files must be readable
        print(f"/etc/rc.d/pf: WARNING: {rules} is not readable.", file=sys.stderr)
        return 1
    if base == "check":
        return pfctl(["-n", "-f", rules])
    if base in ("reload", "resync"):
        return pfctl(["-n", "-f", rules]) or pfctl(["-f", rules])
    if base in ("start", "restart"):
        pfctl(["-F", "all"])  # pf_start: rules, nat, tables and every state
        rc = pfctl(["-f", rules])
        if rc != 0 and vs.get("pf_fallback_rules_enable", "NO").upper() == "YES":
            # pf_fallback: the file if it exists, else the pf_fallback_rules text
            fallback = vs.get("pf_fallback_rules_file", "/etc/pf-fallback.conf")
            if Path(fallback).is_file():
                rc = pfctl(["-f", fallback])
            else:
                (STATE_DIR / "fallback.conf").write_text(vs.get("pf_fallback_rules", "block drop log all") + "\n")
                rc = pfctl(["-f", str(STATE_DIR / "fallback.conf")])
        with State() as st:
            st["pf"]["enabled"] = True
            loaded = st["pf"]["main"] or ""
        parts = os.environ.get("SSH_CONNECTION", "").split()
        if parts and not _keeps_established_ssh(loaded, parts[3] if len(parts) == 4 else ""):
            _cut_this_session()
        return rc
    if base == "stop":
        with State() as st:
            st["pf"]["enabled"] = False
        return 0
    return 0


def _script_vars(script: Path) -> dict[str, str]:
    """The rc.d script's top-level assignments (name, command, pidfile, procname, command_args)."""
    return rc_vars(script)


def _pidfile_pid(path: str) -> str:
    """rc.subr check_pidfile: `read _pid _junk < $pidfile` (the first word; libutil's
    pidfile_write leaves no newline, and read still sets it)."""
    try:
        words = Path(path).read_text(errors="replace").split()
    except OSError:
        return ""
    return words[0] if words else ""


def _arg0_matches(command: str, procname: str) -> bool:
    """rc.subr _find_processes, a daemon without an interpreter: the first word of the
    command is PROCNAME, its basename, `basename:`, `(basename)` or `[basename]`."""
    words = command.split()
    base = procname.rsplit("/", 1)[-1]
    return bool(words) and words[0] in (procname, base, f"{base}:", f"({base})", f"[{base}]")


def _rc_pid(st: dict[str, Any], vs: dict[str, str]) -> str:
    """rc.subr run_rc_command's pid check: check_pidfile with a pidfile, else check_process,
    over the doubles' process table (processes: `ps -o pid= -o jid= -o command=`, jid 0)."""
    procname = vs.get("procname") or vs.get("command", "")
    if not procname:
        return ""
    procs: dict[str, dict[str, Any]] = st.setdefault("processes", {})

    def ok(pid: str) -> bool:
        proc = procs.get(pid)
        return proc is not None and proc.get("jid", 0) == 0 and _arg0_matches(proc["command"], procname)

    if vs.get("pidfile"):
        pid = _pidfile_pid(vs["pidfile"])
        return pid if pid and ok(pid) else ""
    return " ".join(pid for pid in sorted(procs, key=int) if ok(pid))


def _spawn(st: dict[str, Any], command: str, **extra: Any) -> int:
    pid = int(st.get("next_pid", 4000))
    st["next_pid"] = pid + 1
    st.setdefault("processes", {})[str(pid)] = {"jid": 0, "command": command, **extra}
    return pid


def _pidfile_put(path: str, pid: int) -> None:
    """libutil pidfile_write: the pid, "%u", no newline (lib/libutil/pidfile.c)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(str(pid))


def _start_command(st: dict[str, Any], name: str, vs: dict[str, str]) -> int:
    """What `$command $command_args` leaves running: for daemon(8) a supervisor and its child.

    daemon.c: -P gets the supervisor's pid, -p the child's (pidfile_write); the supervisor's
    title is setproctitle("%s[%d]", title, childpid), title -t or the child's argv[0], which
    setproctitle(3) prefixes with "daemon: " and ps(1) shows with " (daemon)" (its comm)
    appended; the child execs the command (a `#!/bin/sh` wrapper runs as `/bin/sh WRAPPER`).
    Any other command is one process, which writes its own pidfile (if the script names one).
    """
    command = vs.get("command", "")
    try:
        args = shlex.split(vs.get("command_args", ""))  # rc.subr evals command_args once more
    except ValueError:
        args = vs.get("command_args", "").split()
    if command.rsplit("/", 1)[-1] != "daemon":
        pid = _spawn(st, " ".join([command, *args]), service=name)
        if vs.get("pidfile"):
            _pidfile_put(vs["pidfile"], pid)
        return pid
    opts: dict[str, str] = {}
    while args and args[0].startswith("-") and args[0] != "--":
        word = args.pop(0)
        if len(word) != 2:
            die(f"double: service {name}: daemon option {word} in command_args is not emulated", 1)
        if word[1:] in ("P", "p", "t", "u", "o", "R", "m", "s", "l", "T") and args:
            opts[word[1:]] = args.pop(0)
    title = opts.get("t") or (args[0] if args else "")
    supervisor = int(st.get("next_pid", 4000))
    child = supervisor + 1
    st["next_pid"] = child + 1
    procs = st.setdefault("processes", {})
    procs[str(supervisor)] = {"jid": 0, "command": f"daemon: {title}[{child}] (daemon)", "service": name}
    wrapper = Path(args[0]) if args else None
    shebang = wrapper.read_text(errors="replace").split("\n", 1)[0] if wrapper and wrapper.is_file() else ""
    child_cmd = " ".join([shebang[2:].strip(), *args] if shebang.startswith("#!") else args)
    procs[str(child)] = {"jid": 0, "command": child_cmd, "service": name}
    if "P" in opts:
        _pidfile_put(opts["P"], supervisor)
    if "p" in opts:
        _pidfile_put(opts["p"], child)
    return supervisor


def _stop_command(st: dict[str, Any], name: str, vs: dict[str, str], pid: str) -> None:
    """SIGTERM to the pid; daemon(8) passes it to the child, removes its pidfiles (-p, -P)
    and exits (daemon.c; docs/freebsd.md#supervision-with-daemon)."""
    procs: dict[str, dict[str, Any]] = st.setdefault("processes", {})
    for p in [p for p, proc in procs.items() if p == pid or proc.get("service") == name]:
        del procs[p]
    try:
        args = shlex.split(vs.get("command_args", ""))
    except ValueError:
        args = []
    files = [vs.get("pidfile", "")]
    if vs.get("command", "").rsplit("/", 1)[-1] == "daemon":
        files += [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-p", "-P")]
    for f in files:
        if f:
            Path(f).unlink(missing_ok=True)


def service(argv: list[str]) -> int:
    if argv[:1] == ["-e"]:
        vs = rc_vars()
        for d in ("/etc/rc.d", "/usr/local/etc/rc.d"):
            for p in sorted(Path(d).glob("*")) if Path(d).is_dir() else []:
                if _enabled(vs, f"{p.name}_enable"):
                    print(p)
        return 0
    if len(argv) < 2:
        die("usage: service <rc_script> <command>", 1)
    name, verb = argv[0], argv[1]
    if name == "pf":
        return _pf_service(verb)
    if name in ("netif", "routing", "sshd", "devd", "rctl"):
        return 0
    script = next((Path(d) / name for d in ("/etc/rc.d", "/usr/local/etc/rc.d") if (Path(d) / name).is_file()), None)
    if script is None or not os.access(script, os.X_OK):
        die(f"{name} does not exist in /etc/rc.d or the local startup", 1)
    forced = verb.startswith(("one", "force"))
    base = re.sub(r"^(one|force|fast|quiet)", "", verb)
    enabled = _enabled(rc_vars(), f"{name}_enable")
    vs = _script_vars(script)
    pidfile = vs.get("pidfile", "")
    with State() as st:
        svc = st["services"].setdefault(name, {"running": False, "pid": 0})
        rc_pid = _rc_pid(st, vs)
        if base in ("enable", "disable"):
            pass
        elif base == "status":
            if not (vs.get("procname") or vs.get("command")):
                # no procname: rc.subr offers no status verb (run_rc_command's _keywords)
                print(f"{script}: unknown directive '{verb}'.", file=sys.stderr)
                return 1
            if rc_pid:
                print(f"{name} is running as pid {rc_pid}.")
                return 0
            print(f"{name} is not running.")
            return 1
        elif base in ("start", "restart", "stop"):
            # rc.subr run_rc_command: the enable check is skipped for stop when a pid is found
            if not enabled and not forced and (base != "stop" or not rc_pid):
                return _not_enabled(name, base)
            if base == "start" and rc_pid:
                print(f"{name} already running? (pid={rc_pid}).", file=sys.stderr)
                return 1
            if base == "stop" and not rc_pid:
                print(f"{name} not running?{f' (check {pidfile}).' if pidfile else ''}", file=sys.stderr)
                return 1
            if rc_pid:  # stop, or restart's stop (rc.subr runs stop, then start)
                print(f"Stopping {name}.")
                _stop_command(st, name, vs, rc_pid)
                svc.update(running=False, pid=0)
                _supervised_session(st, script, False)
            if base != "stop":
                command = vs.get("command", "")
                if not command or not os.access(command, os.X_OK):
                    # run_rc_command start: `[ ! -x "${command}" ]`
                    print(f"{script}: WARNING: run_rc_command: cannot run {command}", file=sys.stderr)
                    return 1
                print(f"Starting {name}.")
                svc.update(running=True, pid=_start_command(st, name, vs))
                _supervised_session(st, script, True)
            return 0
    if base in ("enable", "disable"):
        return sysrc([f"{name}_enable={'YES' if base == 'enable' else 'NO'}"])
    return 0


def ps(argv: list[str]) -> int:
    """ps(1) as rc.subr's _find_processes and the probe call it, following bin/ps/ps.c main:
    `-ww -o pid= -o jid= -o command= -p LIST` over the doubles' process table.  -p takes a
    list split on commas and blanks (add_list); pids that do not exist are no error (ESRCH
    ignored), but nothing kept means exit 1; rows sorted by pid (pscomp: no terminal);
    `=` empties a column's header, and with every header empty no header line is printed.
    Other options and keywords are refused, not emulated.
    """
    import getopt

    try:
        opts, rest = getopt.getopt(argv, "wo:p:")
    except getopt.GetoptError as exc:
        die(f"double: ps {' '.join(argv)} is not emulated ({exc})", 1)
    if rest:
        die(f"double: ps {' '.join(argv)} is not emulated", 1)
    columns: list[str] = []
    pids: list[str] = []
    for opt, value in opts:
        if opt == "-o":
            for kw in value.split(","):
                key, eq, header = kw.partition("=")
                if key not in ("pid", "jid", "command") or (eq and header):
                    die(f"double: ps -o {kw} is not emulated", 1)
                columns.append(key)
        elif opt == "-p":
            for elem in re.split(r"[,\s]+", value.strip()):
                if not elem.isdigit():
                    print(f"ps: Invalid process id: {elem}", file=sys.stderr)
                    return 1
                pids.append(str(int(elem)))
    if not columns or not pids:
        die(f"double: ps {' '.join(argv)} is not emulated (only -o pid=,jid=,command= -p LIST)", 1)
    with State() as st:
        procs: dict[str, dict[str, Any]] = st.setdefault("processes", {})
        kept = sorted({p for p in pids if p in procs}, key=int)
        for p in kept:
            row = {"pid": f"{p:>5}", "jid": f"{procs[p].get('jid', 0):>3}", "command": procs[p]["command"]}
            print(" ".join(row[c] for c in columns))
    return 0 if kept else 1


def _supervised_session(st: dict[str, Any], script: Path, running: bool) -> None:
    """An rc.d script running daemon(8) over a wrapper that starts `tmux new-session -s
    "$session"` (the agent's run-<agent>.sh): the session lives while the service runs,
    and only when tmux is installed (a package, not base: pkg(8))."""
    m = re.search(r"^command_args=(.*)$", script.read_text(errors="replace"), re.M)
    words = sh_value(m.group(1)).split() if m else []
    wrapper = Path(words[-1]) if words else None
    if wrapper is None or not wrapper.is_file():
        return
    s = re.search(r"^session=(.*)$", wrapper.read_text(errors="replace"), re.M)
    name = sh_value(s.group(1)) if s else ""
    if not name:
        return
    sessions: list[str] = st.setdefault("tmux_sessions", [])
    if running and "tmux" in st["packages"] and name not in sessions:
        sessions.append(name)
    elif not running and name in sessions:
        sessions.remove(name)


def tmux(argv: list[str]) -> int:
    """tmux [-S socket] has-session|kill-session -t =NAME; absent unless the package is installed."""
    args = list(argv)
    if args[:1] == ["-S"]:
        args = args[2:]
    with State() as st:
        if "tmux" not in st["packages"]:
            die("/bin/sh: tmux: not found", 127)
        sessions: list[str] = st.setdefault("tmux_sessions", [])
        if args[:1] in (["has-session"], ["kill-session"]) and args[1:2] == ["-t"] and len(args) == 3:
            name = args[2].removeprefix("=")
            if name not in sessions:
                die(f"can't find session: {name}", 1)
            if args[0] == "kill-session":
                sessions.remove(name)
            return 0
    die(f"double: tmux {' '.join(argv)} is not emulated", 1)
    return 1


# -- bastille (BastilleBSD/bastille usr/local/share/bastille/*.sh) ------------------------

BASTILLE = Path("/usr/local/bastille")
BASTILLE_TEMPLATES = BASTILLE / "templates"  # bastille.conf.sample bastille_templatesdir
BASTILLE_BIN = "/usr/local/bin/bastille"

# rc.d scripts a package installs into a jail's /usr/local/etc/rc.d (the ports' USE_RC_SUBR
# names); services of the jail's base system need no package.
PACKAGE_RC_SCRIPTS = {
    "nginx": ["nginx"],
    "postgresql17-server": ["postgresql"],
    "postgresql16-server": ["postgresql"],
    "ollama": ["ollama"],
    "git": ["git_daemon"],
}
JAIL_BASE_RC_SCRIPTS = {"sshd", "cron", "syslogd", "sendmail", "netif", "routing"}
# What the doubles know of the package repository (pkg-install(8) refuses other names).
REPOSITORY = {
    "bastille",
    "vm-bhyve",
    "python311",
    "git",
    "tmux",
    "node",
    "nginx",
    "postgresql17-server",
    "postgresql16-server",
    "ollama",
    "llama-cpp",
    "qemu-tools",
    "bhyve-firmware",
    "python3",
}


def _bastille_options(cmd: str, args: list[str], letters: str) -> tuple[set[str], list[str]]:
    """Leading options as each subcommand's `while [ "$#" -gt 0 ]` loop takes them: long
    forms, and bundled short letters split with `fold -w1` (destroy.sh, pkg.sh)."""
    longs = {"--auto": "a", "--yes": "y", "--force": "f", "--host": "H", "--no-cache": "c"}
    got: set[str] = set()
    while args and args[0].startswith("-"):
        a = args.pop(0)
        if a in longs and longs[a] in letters:
            got.add(longs[a])
        elif re.match(rf"^-[{letters}]+$", a) and (len(a) == 2 or cmd in ("destroy", "pkg")):
            got.update(a[1:])
        else:
            die(f'[ERROR]: Unknown Option: "{a}"', 1)
    return got, args


def _jail_running_or_skip(st: dict[str, Any], name: str, auto: bool, verb: str) -> bool:
    """common check_target_is_running/stopped || error_continue: without -a the subcommand
    prints the refusal and CONTINUES its loop over targets, so its exit status stays 0."""
    if name not in st["jails"]:
        die(f"[ERROR]: Jail not found: {name}", 1)
    jail = st["jails"][name]
    wants_running = verb != "destroy"
    if bool(jail["running"]) == wants_running:
        return True
    if auto:
        _jail_set_running(st, name, wants_running)
        return True
    print(f"\n[{name}]:", file=sys.stderr)
    if wants_running:
        print("Jail is not running.\nUse [-a|--auto] to auto-start the jail.", file=sys.stderr)
    else:
        print("Jail is running.\nUse [-a|--auto] to auto-stop the jail.", file=sys.stderr)
    return False


def _jail_conf_params(name: str) -> dict[str, str]:
    """`key = value;` lines of the jail's jail.conf (what jail(8) applies when it starts)."""
    conf = BASTILLE / "jails" / name / "jail.conf"
    out: dict[str, str] = {}
    for line in conf.read_text().splitlines() if conf.exists() else []:
        m = re.match(r"^\s*([a-z0-9_.]+)\s*=\s*(.*?);\s*$", line)
        if m:
            out[m.group(1)] = m.group(2).strip("'\"")
    return out


def _jail_exec_lines(name: str, hook: str) -> list[list[str]]:
    """The `exec.HOOK += "ifconfig …";` commands of the jail's jail.conf, in order."""
    conf = BASTILLE / "jails" / name / "jail.conf"
    out = []
    for line in conf.read_text().splitlines() if conf.exists() else []:
        m = re.match(rf'^\s*exec\.{hook}\s*\+=\s*"(ifconfig [^"$]*)";\s*$', line)
        if m:
            out.append(m.group(1).split()[1:])
    return out


def _jail_epair(st: dict[str, Any], name: str, up: bool) -> None:
    """jail(8) runs exec.prestart before a start and exec.poststop after a stop: Bastille's
    lines create the epair, add e0a_NAME to the bridge (and with our line pin the jail's
    MAC there), and destroy it (docs/freebsd.md#bastille-vnet-jails)."""
    epair = f"e0a_{name}"
    if not st["jails"][name].get("interface") or len(epair) > 15:
        return
    ifs = st["interfaces"]
    if not up:
        for argv in _jail_exec_lines(name, "poststop"):
            if argv[0] in ifs:
                _ifconfig(st, argv)
        return
    for end in (epair, epair.replace("e0a", "e0b")):
        ifs.setdefault(end, {"inet": [], "up": True, "members": [], "bridge": False})
    for argv in _jail_exec_lines(name, "prestart"):
        _ifconfig(st, argv)


def _jail_start_arp(name: str) -> list[list[str]]:
    """The `exec.start += "/usr/sbin/arp …";` commands of the jail's jail.conf, in order."""
    conf = BASTILLE / "jails" / name / "jail.conf"
    out = []
    for line in conf.read_text().splitlines() if conf.exists() else []:
        m = re.match(r'^\s*exec\.start\s*\+=\s*"/usr/sbin/arp ([^"$]*)";\s*$', line)
        if m:
            out.append(m.group(1).split())
    return out


def _jail_stack(st: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A running VNET jail's own network stack: vnet0 (its end of the epair, renamed and
    addressed by the jail's rc.conf) and its own ARP table (docs/freebsd.md#arp-in-vnet-jails)."""
    jail = st["jails"][name]
    cidr = _jail_rc_vars(name).get("ifconfig_vnet0", "").removeprefix("inet ").strip()
    end = st["interfaces"].get(f"e0b_{name}", {})
    vnet0 = {"inet": [cidr] if cidr else [], "up": True, "members": [], "bridge": False}
    if end.get("ether"):
        vnet0["ether"] = end["ether"]
    return {"vnet0": vnet0}, jail.setdefault("arp", {})


def _jail_set_running(st: dict[str, Any], name: str, running: bool) -> None:
    jail = st["jails"][name]
    if jail.get("running"):
        _jail_epair(st, name, False)
    if running:
        _jail_epair(st, name, True)
    jail["running"] = running
    # jail(8) reads jail.conf at start: parameters set later apply at the next (re)start.
    jail["params"] = _jail_conf_params(name) if running else {}
    # A VNET jail's stack, ARP table included, is new at each start and gone at its stop;
    # jail(8) runs the exec.start commands in sequence inside it after /etc/rc, and a
    # failing one fails the start (jail(8) "exec.*"; docs/freebsd.md#arp-in-vnet-jails).
    jail["arp"] = {}
    if running and jail.get("interface"):
        ifs, table = _jail_stack(st, name)
        for argv in _jail_start_arp(name):
            _arp(argv, ifs, table)
    if not running:
        for svc in jail.setdefault("services", {}).values():
            svc["running"] = False


def bastille(argv: list[str]) -> int:
    if argv[:1] in (["-v"], ["--version"]):
        print("1.4.4")
        return 0
    if not argv:
        die("Usage: bastille command [option(s)] TARGET [args]", 1)
    cmd, args = argv[0], argv[1:]
    if cmd == "template":
        return _bastille_template(args)
    with State() as st:
        jails = st["jails"]
        if cmd == "bootstrap":
            (BASTILLE / "releases" / args[0]).mkdir(parents=True, exist_ok=True)
            return 0
        if cmd == "list":
            for name in sorted(jails):
                print(name)
            return 0
        if cmd == "create":
            return _bastille_create(st, args)
        if cmd in ("start", "stop", "restart"):
            if args[0] not in jails:
                die(f"[{args[0]}]: Jail not found.", 1)
            _jail_set_running(st, args[0], cmd != "stop")
            return 0
        if cmd == "destroy":
            return _bastille_destroy(st, args)
        if cmd == "config":
            return _bastille_config(st, args)
        if cmd == "service":
            return _bastille_service(st, args)
        if cmd == "sysrc":
            opts, args = _bastille_options(cmd, args, "a")
            if len(args) < 2:  # sysrc.sh: [ $# -lt 2 ] → usage
                die("Usage: bastille sysrc [option(s)] TARGET ARGS", 1)
            if not _jail_running_or_skip(st, args[0], "a" in opts, cmd):
                return 0
            rc_conf = BASTILLE / "jails" / args[0] / "root/etc/rc.conf"
            return sysrc(["-f", str(rc_conf), *args[1:]])
        if cmd == "pkg":
            return _bastille_pkg(st, args)
        if cmd == "cmd":
            opts, args = _bastille_options(cmd, args, "a")
            if not args:
                die("Usage: bastille cmd [option(s)] TARGET COMMAND", 1)
            if not _jail_running_or_skip(st, args[0], "a" in opts, cmd):
                return 0
            return _jail_command(st, args[0], args[1:])
    die(f"bastille: unknown command {cmd}", 1)
    return 1


def _bastille_destroy(st: dict[str, Any], args: list[str]) -> int:
    """destroy.sh destroy_jail: a running jail is skipped unless -a (error_continue, exit 0);
    without -y it asks "Are you sure" with `read`, and at EOF (no terminal) the empty answer
    is "Invalid input" (error_exit, 1). -f only forces a ZFS unmount."""
    opts, args = _bastille_options("destroy", args, "acfy")
    if len(args) != 1:
        die("Usage: bastille destroy [option(s)] JAIL", 1)
    name = args[0]
    if not _jail_running_or_skip(st, name, "a" in opts, "destroy"):
        return 0
    if "y" not in opts:
        print(f"\nAttempting to destroy jail: {name}\n", file=sys.stderr)
        sys.stdout.write("Are you sure you want to continue? [y|n]:")
        sys.stdout.flush()
        answer = sys.stdin.readline().strip()
        if answer.lower() in ("n", "no"):
            die("[ERROR]: Cancelled by user.", 1)
        if answer.lower() not in ("y", "yes"):
            die("[ERROR]: Invalid input. Please answer 'y' or 'n'.", 1)
    del st["jails"][name]
    jdir = BASTILLE / "jails" / name
    if jdir.exists():
        import shutil

        shutil.rmtree(jdir)
    return 0


def _bastille_config(st: dict[str, Any], args: list[str]) -> int:
    """config.sh: get|set|add|remove PROPERTY [VALUE] on jail.conf; set replaces the
    property's line or appends `  PROPERTY = VALUE;` (validate_property whitelist)."""
    if len(args) < 3:
        die("Usage: bastille config [option(s)] TARGET [get|(set|add)|remove] PROPERTY VALUE", 1)
    name, action, prop, value = args[0], args[1], args[2], " ".join(args[3:])
    if name not in st["jails"]:
        die(f"[ERROR]: Jail not found: {name}", 1)
    if action not in ("get", "set", "add", "remove"):
        die("[ERROR]: Only (add|set), get and remove are supported.", 1)
    known = re.match(
        r"^(host\.hostname|sysvshm|sysvsem|sysvmsg|allow\.sysvipc|vnet|vnet\.interface|devfs_ruleset"
        r"|securelevel|enforce_statfs|ip4\.addr|exec\.prestart|exec\.poststop)$",
        prop,
    )
    if not known:
        die(f"[ERROR]: Unsupported property: {prop}", 1)
    if prop in ("sysvshm", "sysvsem", "sysvmsg") and action == "set" and value not in ("disable", "inherit", "new"):
        # jail(8): sysvshm/sysvsem/sysvmsg take disable, inherit or new; jail(8) refuses others at start
        die(f"jail: {prop}: unknown value '{value}'", 1)
    conf = BASTILLE / "jails" / name / "jail.conf"
    lines = conf.read_text().splitlines() if conf.exists() else [f"{name} {{", "}"]
    hit = [i for i, ln in enumerate(lines) if re.match(rf"^\s*{re.escape(prop)}\s*(=|;)", ln)]
    if action == "get":
        params = _jail_conf_params(name)
        print(params.get(prop, "not set"))
        return 0
    if action == "remove":
        if not hit:
            die(f"[ERROR]: Value not present in jail.conf: {prop}", 1)
        del lines[hit[0]]
    else:
        line = f"  {prop} = {value};" if value else f"  {prop};"
        if hit:
            lines[hit[0]] = line
        else:
            lines.insert(len(lines) - 1, line)  # before the closing brace
    conf.write_text("\n".join(lines) + "\n")
    return 0


def _bastille_service(st: dict[str, Any], args: list[str]) -> int:
    """service.sh: exactly TARGET SERVICE ARGS (`[ $# -ne 3 ]` → usage, exit 1), then
    `jexec -l JAIL /usr/sbin/service SERVICE ARGS`."""
    opts, args = _bastille_options("service", args, "a")
    if len(args) != 3:
        print("Usage: bastille service [option(s)] TARGET SERVICE ARGS", file=sys.stderr)
        return 1
    if not _jail_running_or_skip(st, args[0], "a" in opts, "service"):
        return 0
    rc = _jail_service(st, args[0], args[1], args[2])
    if rc:
        die("[ERROR]: Command failed on 1 jails.", 1)
    return 0


def _bastille_pkg(st: dict[str, Any], args: list[str]) -> int:
    """pkg.sh: options -a -H -y (bundled letters allowed), then TARGET ARGS; runs the jail's
    pkg(8). pkg needs the package site's name resolved through the jail's resolv.conf."""
    opts, args = _bastille_options("pkg", args, "aHy")
    if len(args) < 2:
        die("Usage: bastille pkg [option(s)] TARGET ARGS", 1)
    name, pkg_args = args[0], args[1:]
    if not _jail_running_or_skip(st, name, "a" in opts, "pkg"):
        return 0
    jail = st["jails"][name]
    if pkg_args[:1] != ["install"]:
        die(f"double: bastille pkg {' '.join(pkg_args)} is not emulated", 1)
    names = [p for p in pkg_args[1:] if not p.startswith("-")]
    resolv = BASTILLE / "jails" / name / "root/etc/resolv.conf"
    servers = re.findall(r"^nameserver\s+(\S+)", resolv.read_text(), re.M) if resolv.exists() else []
    # Inside a VNET jail 127.0.0.1 is the jail's own loopback, where no resolver runs.
    if not [s for s in servers if not s.startswith("127.") and s != "::1"]:
        print("Updating FreeBSD repository catalogue...", file=sys.stdout)
        print("pkg: Unable to update repository FreeBSD: No address record", file=sys.stderr)
        print("Error updating repositories!", file=sys.stderr)
        die("[ERROR]: Command failed on 1 jails.", 1)
    unknown = [p for p in names if p not in REPOSITORY]
    if unknown:
        print(f"pkg: No packages available to install matching '{unknown[0]}' have been found in the repositories")
        die("[ERROR]: Command failed on 1 jails.", 1)
    have = jail.setdefault("packages", [])
    have += [p for p in names if p not in have]
    return 0


def _jail_rc_vars(name: str) -> dict[str, str]:
    return rc_vars(BASTILLE / "jails" / name / "root/etc/rc.conf")


def _jail_service(st: dict[str, Any], jail_name: str, name: str, verb: str) -> int:
    """service(8) inside the jail, with rc.subr's enable check (see service() above)."""
    jail = st["jails"][jail_name]
    scripts = set(JAIL_BASE_RC_SCRIPTS)
    for p in jail.get("packages", []):
        scripts.update(PACKAGE_RC_SCRIPTS.get(p, []))
    if name not in scripts:
        print(f"{name} does not exist in /etc/rc.d or the local startup", file=sys.stderr)
        return 1
    forced = verb.startswith(("one", "force"))
    base = re.sub(r"^(one|force|fast|quiet)", "", verb)
    svc = jail.setdefault("services", {}).setdefault(name, {"running": False})
    if base == "initdb" and name == "postgresql":
        # PostgreSQL always creates a small SysV shared memory segment as a data directory
        # interlock (postgres src/backend/port/sysv_shmem.c); a jail started without sysvshm
        # has no SysV IPC (sys/kern/sysv_shm.c shm_prison_set), so shmget fails with ENOSYS.
        if jail.get("params", {}).get("sysvshm") not in ("new", "inherit"):
            print(
                "FATAL:  could not create shared memory segment: Function not implemented\n"
                "initdb: error: initdb failed",
                file=sys.stderr,
            )
            return 1
        svc["initdb"] = True
        return 0
    if base in ("start", "restart") and not forced and not _enabled(_jail_rc_vars(jail_name), f"{name}_enable"):
        return _not_enabled(name, base)
    if base == "start" and name == "postgresql" and not svc.get("initdb"):
        print("postgresql: no data directory; run initdb first", file=sys.stderr)  # the port's rc.d check
        return 1
    if base == "status":
        print(f"{name} is running." if svc["running"] else f"{name} is not running.")
        return 0 if svc["running"] else 1
    if base in ("start", "restart"):
        svc["running"] = True
        print(f"Starting {name}.")
    elif base == "stop":
        svc["running"] = False
    return 0


def _jail_command(st: dict[str, Any], jail_name: str, argv: list[str]) -> int:
    """cmd.sh: `jexec -l -U root JAIL COMMAND...`. Only service(8) runs in the double's jails."""
    if argv[:2] == ["sh", "-c"] and len(argv) == 3:
        argv = shlex.split(argv[2])
    if argv[:1] in (["service"], ["/usr/sbin/service"]) and len(argv) == 3:
        rc = _jail_service(st, jail_name, argv[1], argv[2])
        if rc:
            die("[ERROR]: Command failed on 1 jails.", 1)
        return 0
    die(f"double: running {argv!r} inside a jail is not emulated", 1)
    return 1


def _bastille_template(args: list[str]) -> int:
    """template.sh: TARGET project/template; the jail must be running (or -a). Each line of
    the Bastillefile (continuations joined, blank and # lines dropped) is HOOK ARGS; the
    hook, lowercased, becomes a subcommand and the line runs as
    `eval "bastille ${cmd} ${jail} ${args}"`, so quotes group words into one argument.
    A failing line stops the template: "[ERROR]: Failed to execute command: CMD"."""
    auto = False
    while args and args[0].startswith("-"):
        a = args.pop(0)
        if a in ("-a", "--auto"):
            auto = True
        else:
            die(f'[ERROR]: Unknown Option: "{a}"', 1)
    if len(args) < 2:
        die("Usage: bastille template [option(s)] TARGET TEMPLATE [--arg ARG=VALUE]", 1)
    jail, template = args[0], args[1]
    if "/" not in template:
        die("[ERROR]: Template name/URL not recognized.", 1)
    tdir = BASTILLE_TEMPLATES / template
    if not tdir.is_dir():
        die(f"[ERROR]: {template} not found.", 1)
    with State() as st:
        if not _jail_running_or_skip(st, jail, auto, "template"):
            return 0
        ip = st["jails"][jail]["ip"].split("/")[0]
        st["jails"][jail].setdefault("templates", []).append(template)
    bfile = tdir / "Bastillefile"
    if not bfile.exists() or bfile.stat().st_size == 0:
        return 0
    joined: list[str] = []
    carry = ""
    for raw in bfile.read_text().splitlines():
        if raw.endswith("\\"):
            carry += raw[:-1]
            continue
        joined.append(carry + raw)
        carry = ""
    replacements = {"${JAIL_NAME}": jail, "${JAIL_IP}": ip, "${JAIL_IP6}": ""}
    for line in joined:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        hook, _, rest = line.partition(" ")
        cmd = hook.lower()
        rest = rest.lstrip(" ")
        for k, v in replacements.items():
            rest = rest.replace(k, v)
        if cmd in ("arg", "arg+"):
            key, _, default = rest.partition("=")
            if not default and cmd == "arg+":
                die(f"[ERROR]: No value provided for mandatory arg: {key}", 1)
            replacements["${" + key + "}"] = default
            continue
        if cmd == "cmd":
            rest = "sh -c '" + rest.replace("'", "'\\''") + "'"
        elif cmd == "pkg":
            cmd, rest = "pkg -y", f"install {rest}"
        elif cmd == "include":
            cmd = "template"
        elif cmd not in ("sysrc", "service", "config", "restart", "start", "stop"):
            die(f"double: Bastillefile hook {hook} is not emulated", 1)
        if re.search(r"[$`]", rest):
            die(f"double: shell expansion in a Bastillefile line is not emulated: {line}", 1)
        try:
            words = shlex.split(f"bastille {cmd} {jail} {rest}")  # eval's quote removal and splitting
        except ValueError:
            print(f"{BASTILLE_BIN}: Syntax error: Unterminated quoted string", file=sys.stderr)
            words = []
        import subprocess

        if not words or subprocess.run([BASTILLE_BIN, *words[1:]]).returncode != 0:
            die(f"[ERROR]: Failed to execute command: {cmd}", 1)
    print(f"\nTemplate applied: {template}")
    return 0


def jexec(argv: list[str]) -> int:
    """jexec(8): run a command inside a running jail.  Only the jail's arp(8) is emulated,
    on the jail's own network stack (usr.sbin/jexec/jexec.c; jail_getid: "jail … not found")."""
    args = list(argv)
    while args and args[0] in ("-l", "-u", "-U", "-d"):
        if args.pop(0) != "-l":
            args.pop(0) if args else None
    if not args:
        die("usage: jexec [-l] [-d working-directory] [-u username | -U username] jail [command ...]", 1)
    name = args.pop(0)
    with State() as st:
        jail = st["jails"].get(name)
        if jail is None or not jail.get("running"):
            die(f'jexec: jail "{name}" not found', 1)
        if args[:1] in (["/usr/sbin/arp"], ["arp"]):
            ifs, table = _jail_stack(st, name)
            return _arp(args[1:], ifs, table)
    die(f"double: running {args!r} inside a jail is not emulated", 1)
    return 1


def _bastille_create(st: dict[str, Any], args: list[str]) -> int:
    opts: dict[str, Any] = {
        "bridge": False,
        "vnet": False,
        "thick": False,
        "mac": False,
        "gateway": None,
        "nameserver": None,
    }
    while args and args[0].startswith("-"):
        a = args.pop(0)
        if a in ("-B", "--bridge"):
            opts["bridge"] = True
        elif a in ("-V", "--vnet"):
            opts["vnet"] = True
        elif a in ("-T", "--thick"):
            opts["thick"] = True
        elif a in ("-M", "--static-mac"):
            opts["mac"] = True
        elif a in ("-g", "--gateway", "--defaultrouter"):
            opts["gateway"] = args.pop(0)
        elif a in ("-n", "--nameserver"):
            opts["nameserver"] = args.pop(0)
            for ns in opts["nameserver"].split(","):
                if not re.match(r"^\d{1,3}(\.\d{1,3}){3}$|^[0-9a-fA-F:]+:[0-9a-fA-F:]*$", ns):
                    die(f"[ERROR]: Invalid nameserver(s): {opts['nameserver']}", 1)
        else:
            die(f'Unknown option: "{a}"', 1)
    if len(args) < 3:
        die("Usage: bastille create [option(s)] NAME RELEASE IP [INTERFACE]", 1)
    name, release, ip = args[0], args[1], args[2]
    iface = args[3] if len(args) > 3 else None
    if not re.match(r"^[A-Za-z0-9_-]+$", name) or name[0] in "-_" or name.isdigit():
        die(f"Invalid jail name: {name}", 1)
    vnet = opts["bridge"] or opts["vnet"]
    if vnet and re.search(r"[-_]", name):  # docs/freebsd.md#bastille-create: VNET names take no '-' or '_'
        die("VNET jail names may not contain (-|_) characters.", 1)
    if name in st["jails"]:
        die(f"Jail already exists: {name}", 1)
    if not (BASTILLE / "releases" / release).is_dir():
        die("Release must be bootstrapped first. See 'bastille bootstrap'.", 1)
    if opts["bridge"] and (iface is None or not st["interfaces"].get(iface, {}).get("bridge")):
        die(f"Interface is not a bridge: {iface}", 1)
    jdir = BASTILLE / "jails" / name
    (jdir / "root/etc").mkdir(parents=True, exist_ok=True)
    epair = f"e0a_{name}" if len(f"e0a_{name}") < 16 else "e0a_bastille0"  # docs/freebsd.md#bastille-vnet-jails
    lines = [
        f"{name} {{",
        "  vnet;",
        f"  vnet.interface = {epair.replace('e0a', 'e0b')};",
        "  devfs_ruleset = 13;",
        "  securelevel = 2;",
        "  enforce_statfs = 2;",
        "  exec.start = '/bin/sh /etc/rc';",
        "  mount.devfs;",
    ]
    if opts["mac"]:
        # docs/freebsd.md#bastille-vnet-jails: with -M Bastille pins both epair ends to static MACs it derives
        # itself; the double derives them from the name (the exact derivation is Bastille's).
        d = hashlib.sha256(name.encode()).hexdigest()
        mac = f"58:9c:fc:{d[0:2]}:{d[2:4]}:{d[4]}"
        lines.append(f'  exec.prestart += "ifconfig {epair} ether {mac}a";')
        lines.append(f'  exec.prestart += "ifconfig {epair.replace("e0a", "e0b")} ether {mac}b";')
    if opts["bridge"]:
        lines.append(f'  exec.prestart += "ifconfig {iface} addm {epair}";')
        lines.append(f'  exec.poststop += "ifconfig {epair} destroy";')
    lines.append("}")
    (jdir / "jail.conf").write_text("\n".join(lines) + "\n")
    rc = [f'ifconfig_{epair.replace("e0a", "e0b")}_name="vnet0"', f'ifconfig_vnet0="inet {ip}"']
    if opts["gateway"]:
        rc.append(f'defaultrouter="{opts["gateway"]}"')
    (jdir / "root/etc/rc.conf").write_text("\n".join(rc) + "\n")
    # templates/default/base/Bastillefile: CP "${HOST_RESOLV_CONF}" etc/resolv.conf
    # (bastille_resolv_conf, default /etc/resolv.conf); then create.sh replaces every
    # nameserver line with one per -n address.
    host_resolv = Path("/etc/resolv.conf")
    resolv = host_resolv.read_text() if host_resolv.exists() else ""
    if opts["nameserver"]:
        kept = [ln for ln in resolv.splitlines() if not ln.startswith("nameserver")]
        resolv = "\n".join([*kept, *(f"nameserver {ns}" for ns in opts["nameserver"].split(","))]) + "\n"
    (jdir / "root/etc/resolv.conf").write_text(resolv)
    st["jails"][name] = {
        "release": release,
        "ip": ip,
        "interface": iface,
        "running": True,
        "options": {k: v for k, v in opts.items() if v},
    }
    _jail_set_running(st, name, True)  # create.sh leaves the jail running
    print("Creating a thinjail..." if not opts["thick"] else "Creating a thickjail...")
    return 0


def jls(argv: list[str]) -> int:
    with State() as st:
        running = [n for n, j in sorted(st["jails"].items()) if j.get("running")]
        if "-j" in argv:
            name = argv[argv.index("-j") + 1]
            if name not in running:
                die(f'jls: jail "{name}" not found', 1)
            running = [name]
        if "name" in argv:
            print("\n".join(running))
        else:
            print("   JID  IP Address      Hostname                      Path")
            for i, n in enumerate(running, start=1):
                print(f"{i:>6}  {st['jails'][n]['ip']:<15} {n:<29} {BASTILLE}/jails/{n}/root")
    return 0


# -- vm-bhyve (docs/freebsd.md#vm-bhyve) --------------------------------------------------
#
# Follows churchers/vm-bhyve (Apr 2025): lib/vm-core core::create, core::create_cloud_init,
# core::write_img, core::img, core::list, core::start/__start, core::stop, core::destroy;
# lib/vm-util util::check_name; lib/vm-datastore datastore::img_find; lib/vm-run
# vm::generate_static_mac.  A disk written from an image holds the image's bytes, so a
# guest "boots" only from a disk that got one; `vm start` leaves a boot record that the
# test's hypervisor (tests/hostkit/bhyve.py) acts on, as bhyve runs in the background of
# vm-run: the command returns before the guest is up.

VM_BOOTS = STATE_DIR / "bhyve"
# util::check_name on FreeBSD >= 13: 2 to 231 characters, case-insensitive.
VM_NAME_RE = re.compile(r"[a-z0-9][.a-z0-9_-]{0,229}[a-z0-9]", re.I)
VM_USAGE = "usage: vm [-fhVx] command [args] (see vm(8))"


def _getopts(args: list[str], spec: str) -> tuple[dict[str, str], list[str]]:
    """sh getopts(1) as vm-bhyve's `while getopts SPEC`: clustered flags, `--`, stop at the first operand."""
    opts: dict[str, str] = {}
    rest = list(args)
    while rest and rest[0].startswith("-") and rest[0] != "-":
        arg = rest.pop(0)
        if arg == "--":
            break
        i = 1
        while i < len(arg):
            o = arg[i]
            pos = spec.find(o)
            if pos < 0 or o == ":":
                die(VM_USAGE, 1)  # `*) util::usage ;;`
            if pos + 1 < len(spec) and spec[pos + 1] == ":":
                value = arg[i + 1 :] or (rest.pop(0) if rest else None)
                if value is None:
                    die(VM_USAGE, 1)
                opts[o] = value
                break
            opts[o] = ""
            i += 1
    return opts, rest


def _size_bytes(size: str) -> int:
    """truncate(1) -s: a number with an optional K/M/G/T suffix (powers of 1024)."""
    m = re.fullmatch(r"([0-9]+)([KkMmGgTt]?)", size)
    if not m:
        die(f"truncate: invalid size '{size}'", 1)
    power: int = " KMGT".index(m.group(2).upper() or " ")
    return int(m.group(1)) * (1 << (10 * power))


def _vm_conf(path: Path) -> dict[str, str]:
    return rc_vars(path)  # config::load sources a sh-style file, as rc_vars reads rc.conf


def _conf_set(path: Path, key: str, value: str) -> None:
    """config::set: `sysrc -inqf FILE KEY=VALUE`, replacing the last assignment or appending."""
    lines = path.read_text().splitlines(True)
    hits = [i for i, ln in enumerate(lines) if (m := _ASSIGN.match(ln)) and m.group(1) == key]
    if hits:
        lines[hits[-1]] = f'{key}="{value}"\n'
    else:
        lines.append(f'{key}="{value}"\n')
    path.write_text("".join(lines))


def makefs_image(image: Path, directory: Path, label: str) -> None:
    """makefs(8) -t cd9660 -o R,L=LABEL: the image holds the tree's files; here, as JSON."""
    files = {
        str(p.relative_to(directory)): p.read_text(errors="replace")
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
    image.write_text(json.dumps({"makefs": "cd9660", "label": label, "files": files}, sort_keys=True))


def _create_cloud_init(guest: Path, name: str, uuid: str, mac: str, keys: str | None, net: str | None) -> str:
    """core::create_cloud_init: meta-data, user-data, network-config, then seed.iso."""
    ci = guest / ".cloud-init"
    ci.mkdir(parents=True, exist_ok=True)
    hostname = name
    if net:
        # grep -oE 'ip=[^;]*' | sed 's/^ip=//' and so on: the first match of each key, up to `;`.
        def part(key: str) -> str:
            m = re.search(rf"{key}=([^;]*)", net)
            return m.group(1) if m else ""

        if part("hostname"):
            hostname = part("hostname")
        (ci / "network-config").write_text(
            "version: 2\nethernets:\n  id0:\n    set-name: eth0\n    match:\n"
            f'      macaddress: "{mac}"\n    addresses:\n      - {part("ip")}\n'
            f"    gateway4: {part('gateway')}\n    nameservers:\n      search: []\n"
            f"      addresses: [{part('nameservers')}]\n"
        )
    (ci / "meta-data").write_text(f"instance-id: {uuid}\nlocal-hostname: {hostname}\n")
    user = "#cloud-config\nresize_rootfs: True\nmanage_etc_hosts: localhost\n"
    if keys:
        user += "ssh_authorized_keys:\n" + "".join(f"  - {k}\n" for k in keys.splitlines())
    (ci / "user-data").write_text(user)
    makefs_image(guest / "seed.iso", ci, "cidata")
    return "seed.iso"


def _vm_create(st: dict[str, Any], vm_dir: Path, args: list[str]) -> int:
    opts, rest = _getopts(args, "d:t:s:i:c:m:Ck:n:")
    if not rest:
        die(VM_USAGE, 1)
    name, template = rest[0], opts.get("t", "default")
    if not VM_NAME_RE.fullmatch(name):
        die(f"/usr/local/sbin/vm: invalid virtual machine name - '{name}'", 1)
    guest = vm_dir / name
    if (guest / f"{name}.conf").exists():
        die(f"/usr/local/sbin/vm: virtual machine already exists in {vm_dir}/{name}", 1)
    src = vm_dir / ".templates" / f"{template}.conf"
    if not src.exists():
        die(f"/usr/local/sbin/vm: unable to find template {src}", 1)
    tconf = _vm_conf(src)
    if not tconf.get("disk0_name"):
        die("/usr/local/sbin/vm: template is missing disk0_name specification", 1)
    keys = None
    if "k" in opts:
        if "C" not in opts:
            die("/usr/local/sbin/vm: cloud-init is required for injecting public key. Use -C to enable it.", 1)
        try:
            keys = "\n".join(ln for ln in Path(opts["k"]).read_text().splitlines() if ln and not ln.startswith("#"))
        except OSError:
            die(f"/usr/local/sbin/vm: can't read file with public key ({opts['k']})", 1)
    guest.mkdir(parents=True, exist_ok=True)
    conf = guest / f"{name}.conf"
    conf.write_text(src.read_text())
    uuid = hashlib.md5(f"{name}:{time.time()}".encode()).hexdigest()
    uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:32]}"
    _conf_set(conf, "uuid", uuid)
    digest = hashlib.md5(f"{name}:0:{time.time()}:0".encode()).hexdigest()
    mac = f"58:9c:fc:0{digest[0]}:{digest[1:3]}:{digest[3:5]}"  # vm::generate_static_mac
    _conf_set(conf, "network0_mac", mac)
    if opts.get("c"):
        _conf_set(conf, "cpu", opts["c"])
    if opts.get("m"):
        _conf_set(conf, "memory", opts["m"])
    num = 0
    while tconf.get(f"disk{num}_name"):
        disk = guest / tconf[f"disk{num}_name"]
        size = opts["s"] if num == 0 and opts.get("s") else tconf.get(f"disk{num}_size", "20G")
        if tconf.get(f"disk{num}_dev", "file") in ("file", ""):
            with disk.open("wb") as fh:
                fh.truncate(_size_bytes(size))
            disk.chmod(0o600)
            if num == 0 and opts.get("i"):
                # core::write_img: datastore::img_find (a full path, the cwd, $vm_dir/.img), then
                # `qemu-img dd -O raw` of it onto the disk and `qemu-img resize` to SIZE.
                if "qemu-tools" not in st["packages"]:
                    die("/usr/local/sbin/vm: Error: qemu-img is required to work with cloud images!", 1)
                img = opts["i"]
                found = next(
                    (
                        c
                        for c in (
                            Path(img) if img.startswith("/") else None,
                            Path.cwd() / img,
                            vm_dir / ".img" / img,
                        )
                        if c is not None and c.is_file()
                    ),
                    None,
                )
                if found is None:
                    die(f"/usr/local/sbin/vm: unable to locate img file - '{img}'", 1)
                with disk.open("r+b") as fh:
                    fh.write(found.read_bytes())
        # `sysrc -inxqf CONF diskN_size`: the size option is scrapped from the guest's copy
        conf.write_text(
            "".join(
                ln
                for ln in conf.read_text().splitlines(True)
                if not ((m := _ASSIGN.match(ln)) and m.group(1) == f"disk{num}_size")
            )
        )
        num += 1
    if "C" in opts:
        seed = _create_cloud_init(guest, name, uuid, mac, keys, opts.get("n"))
        _conf_set(conf, f"disk{num}_type", "ahci-cd")
        _conf_set(conf, f"disk{num}_name", seed)
        _conf_set(conf, f"disk{num}_dev", "file")
    st["vms"][name] = {"running": False, "template": template}
    return 0


def _vm_list(st: dict[str, Any], vm_dir: Path, vs: dict[str, str]) -> None:
    """core::list: NAME DATASTORE LOADER CPU MEMORY VNC AUTO STATE through column -t."""
    order = vs.get("vm_list", "").split()
    rows = [["NAME", "DATASTORE", "LOADER", "CPU", "MEMORY", "VNC", "AUTO", "STATE"]]
    for name in sorted(p.name for p in vm_dir.iterdir() if (p / f"{p.name}.conf").exists()):
        c = _vm_conf(vm_dir / name / f"{name}.conf")
        auto = f"Yes [{order.index(name) + 1}]" if name in order else "No"
        vm = st["vms"].get(name, {})
        state = f"Running ({vm.get('pid', 0)})" if vm.get("running") else "Stopped"
        rows.append([name, "default", c.get("loader", "none"), c.get("cpu", ""), c.get("memory", ""), "-", auto, state])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def vm(argv: list[str]) -> int:
    vs = rc_vars()
    vm_dir = Path(vs.get("vm_dir", "")) if vs.get("vm_dir") else None
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    with State() as st:
        if cmd == "init":
            if vs.get("vm_enable", "NO").upper() != "YES" or vm_dir is None:
                die("/usr/local/sbin/vm: $vm_enable is not enabled in /etc/rc.conf!", 1)
            (vm_dir / ".templates").mkdir(parents=True, exist_ok=True)
            st["vm_init"] = True
            return 0
        if cmd == "switch":
            sub = args[0]
            if sub == "list":
                print("NAME    TYPE    IFACE")
                for n, s in sorted(st["switches"].items()):
                    print(f"{n}  {s['type']}  {s['bridge']}")
                return 0
            if sub == "create":
                rest = args[1:]
                stype, bridge = "standard", None
                while rest and rest[0].startswith("-"):
                    o = rest.pop(0)
                    if o == "-t":
                        stype = rest.pop(0)
                    elif o == "-b":
                        bridge = rest.pop(0)
                    else:
                        rest.pop(0)
                name = rest[0]
                if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?$", name):
                    die(f"/usr/local/sbin/vm: invalid switch name '{name}'", 1)
                if name in st["switches"]:
                    die(f"/usr/local/sbin/vm: switch {name} already exists", 1)
                if stype == "manual" and not st["interfaces"].get(bridge or "", {}).get("bridge"):
                    die(f"/usr/local/sbin/vm: bridge {bridge} does not exist", 1)
                st["switches"][name] = {"type": stype, "bridge": bridge}
                return 0
        if not st.get("vm_init") or vm_dir is None:
            die("/usr/local/sbin/vm: vm-bhyve is not initialised (run vm init)", 1)
        if cmd == "create":
            return _vm_create(st, vm_dir, args)
        if cmd == "img":
            if "qemu-tools" not in st["packages"]:
                die(
                    "/usr/local/sbin/vm: Error: qemu-img is required to work with cloud images! "
                    "Run 'pkg install qemu-tools'.",
                    1,
                )
            _, rest = _getopts(args, "d:u")
            store = vm_dir / ".img"
            if not rest:
                print(f"{'DATASTORE':<20}FILENAME")
                for p in sorted(store.iterdir()) if store.is_dir() else []:
                    print(f"{'default':<20}{p.name}")
                return 0
            # fetch -o $vm_dir/.img URL, then core::decompress drops .xz.  Offline: the file
            # holds a marker naming the URL, which the test hypervisor boots as a cloud image.
            store.mkdir(parents=True, exist_ok=True)
            name = rest[0].rsplit("/", 1)[-1]
            name = name[:-3] if name.endswith(".xz") else name
            (store / name).write_bytes(b"WARDEN-DOUBLE-IMAGE nuageinit " + rest[0].encode() + b"\n")
            return 0
        if cmd == "start":
            if not args:
                die(VM_USAGE, 1)
            for name in args:
                print(f"Starting {name}")
                if not (vm_dir / name / f"{name}.conf").exists():
                    print(f"  ! {name} does not seem to be a valid virtual machine")
                    return 1
                if st["vms"].get(name, {}).get("running"):
                    print("  ! guest appears to be running already")
                    return 1
                st["vms"].setdefault(name, {})["running"] = True
                st["vms"][name]["pid"] = 4000 + len(st["vms"])
                VM_BOOTS.mkdir(parents=True, exist_ok=True)
                (VM_BOOTS / f"{name}.start").write_text(str(vm_dir / name) + "\n")
            return 0
        if cmd == "stop":
            for name in args:
                if not st["vms"].get(name, {}).get("running"):
                    print(f"/usr/local/sbin/vm: WARNING: {name} doesn't appear to be a running virtual machine")
                    continue
                print(f"Sending ACPI shutdown to {name}")
                st["vms"][name]["running"] = False
                (VM_BOOTS / f"{name}.start").unlink(missing_ok=True)
            return 0
        if cmd == "destroy":
            opts, rest = _getopts(args, "f")
            if not rest:
                die(VM_USAGE, 1)
            name = rest[0]
            if not (vm_dir / name).exists():
                die(f"/usr/local/sbin/vm: {name} doesn't appear to be a valid virtual machine", 1)
            if st["vms"].get(name, {}).get("running"):
                die(f"/usr/local/sbin/vm: {name} appears to be running", 1)
            if "f" not in opts:
                die("/usr/local/sbin/vm: Are you sure you want to completely remove this virtual machine (y/n)?", 1)
            import shutil

            shutil.rmtree(vm_dir / name)
            st["vms"].pop(name, None)
            return 0
        if cmd == "list":
            _vm_list(st, vm_dir, vs)
            return 0
    die(VM_USAGE, 1)
    return 1


# -- daemon(8) and install(1): what root runs for an agent's service ---------------------


def _daemon_usage() -> NoReturn:
    die(
        "usage: daemon [-cfHrS] [-p child_pidfile] [-P supervisor_pidfile]\n"
        "              [-u user] [-o output_file] [-t title]\n"
        "              [-l syslog_facility] [-s syslog_priority]\n"
        "              [-T syslog_tag] [-m output_mask] [-R restart_delay_secs]\n"
        "command arguments ...",
        1,
    )


def _pidfile_open(path: str) -> int:
    """libutil pidfile_open(path, 0600): create, lock; a locked file means daemon is running (exit 3)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        die(f"daemon: pidfile ``{path}'': {exc.strerror}", 2)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = Path(path).read_text().strip()
        die(f"daemon: process already running, pid: {pid}", 3)
    return fd


def _pidfile_write(fd: int | None) -> None:
    """libutil pidfile_write: truncate, then the pid as "%u", no newline (lib/libutil/pidfile.c)."""
    if fd is not None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)


def _daemon_open_log(path: str) -> int:
    # daemon.c open_log: O_CREAT|O_WRONLY|O_APPEND|O_CLOEXEC, 0600, opened by the supervisor
    # (root under rc.d) and NOT O_NOFOLLOW: a symlink at PATH is followed.
    return os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC, 0o600)


def _restrict_process(user: str) -> None:
    """daemon.c restrict_process: setusercontext(LOGIN_SETALL) for USER, then USER, HOME, SHELL.

    The double sets the groups, gid and uid (setusercontext's LOGIN_SETGROUP|LOGIN_SETUSER);
    login-class resources, umask and environment (login.conf) are not emulated.
    """
    import pwd

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        die(f"daemon: unknown user: {user}", 1)
    try:
        os.initgroups(pw.pw_name, pw.pw_gid)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except OSError:
        die("daemon: failed to set user environment", 1)
    os.environ["USER"] = pw.pw_name
    os.environ["HOME"] = pw.pw_dir
    os.environ["SHELL"] = pw.pw_shell or "/bin/sh"


def _chroot_id(value: str, by_name: Callable[[str], int], what: str) -> int:
    """chroot.c: a value starting with a digit is a number if all of it parses, else a name."""
    if value[:1].isdigit() and value.isdigit():
        return int(value)
    try:
        return by_name(value)
    except KeyError:
        die(f"chroot: no such {what} `{value}'", 1)


def chroot(argv: list[str]) -> int:
    """chroot(8), following usr.sbin/chroot/chroot.c main.

    getopt "G:g:u:" (an empty value is a usage error); names are looked up before the
    chroot; then chdir(newroot) and chroot("."), setgroups(-G list) only when -G is given,
    setgid only with -g, setuid only with -u — so -u alone keeps root's groups, which is
    why the read script passes all three — then execvp the command, or $SHELL -i.
    """
    import getopt
    import grp
    import pwd

    usage = "usage: chroot [-g group] [-G group,group,...] [-u user] newroot [command]"
    try:
        opts, args = getopt.getopt(argv, "G:g:u:")
    except getopt.GetoptError:
        die(usage, 1)
    values = dict(opts)
    if any(v == "" for v in values.values()) or not args:
        die(usage, 1)
    gid = _chroot_id(values["-g"], lambda n: grp.getgrnam(n).gr_gid, "group") if "-g" in values else None
    groups = [_chroot_id(g, lambda n: grp.getgrnam(n).gr_gid, "group") for g in values.get("-G", "").split(",") if g]
    uid = _chroot_id(values["-u"], lambda n: pwd.getpwnam(n).pw_uid, "user") if "-u" in values else None
    try:
        os.chdir(args[0])
        os.chroot(".")
    except OSError as exc:
        die(f"chroot: {args[0]}: {exc.strerror}", 1)
    if groups:
        os.setgroups(groups)
    if gid is not None:
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)
    command = args[1:] or [os.environ.get("SHELL", "/bin/sh"), "-i"]
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        die(f"chroot: {command[0]}: {exc.strerror}", 1)
    return 1


def daemon(argv: list[str]) -> int:
    """daemon(8), following usr.sbin/daemon/daemon.c main (the getopt_long version).

    Options as getopt "+cfHSp:P:ru:o:s:l:t:m:R:T:h" (stops at the command); supervision
    is on with -p -P -r -o -S -s -l -T (not -R alone); the -o log is opened by the
    supervisor before daemon(3), pidfiles are opened and locked before it (exit 3 when
    locked: already running); the child writes the -p pidfile, drops to -u, gets the
    pipe as stdout/stderr (-m) and execs; the supervisor copies the pipe into the log,
    reopens the log on SIGHUP with -H, forwards SIGTERM to the child and then removes
    the pidfiles and exits, and restarts the child after -R seconds with -r.  Syslog
    (-S -s -l -T) is accepted and not emulated.
    """
    import signal

    longs = {
        "--change-dir": "-c", "--close-fds": "-f", "--sighup": "-H", "--syslog": "-S",
        "--output-file": "-o", "--output-mask": "-m", "--child-pidfile": "-p",
        "--supervisor-pidfile": "-P", "--restart": "-r", "--restart-delay": "-R", "--title": "-t",
        "--user": "-u", "--syslog-priority": "-s", "--syslog-facility": "-l", "--syslog-tag": "-T",
        "--help": "-h",
    }  # fmt: skip
    with_arg = set("pPuosltmRT")
    args = list(argv)
    opts: dict[str, str | bool] = {}
    supervise = restart = False
    while args and args[0].startswith("-") and args[0] != "-":
        word = args.pop(0)
        if word == "--":
            break
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if name not in longs:
                _daemon_usage()
            word = longs[name] + (value if eq else "")
        letters = word[1:]
        while letters:
            ch, letters = letters[0], letters[1:]
            if ch not in "cfHSpPruosltmRTh":
                _daemon_usage()
            if ch in with_arg:
                if not letters:
                    if not args:
                        _daemon_usage()
                    letters = args.pop(0)
                opts[ch], letters = letters, ""
            else:
                opts[ch] = True
            if ch == "h":
                _daemon_usage()
            if ch in "pPoSslTr":
                supervise = True
            if ch in "rR":
                restart = True
    if not args:
        _daemon_usage()
    if "R" in opts:
        try:
            delay = int(str(opts["R"]), 0)
        except ValueError:
            delay = 0
        if delay < 1:
            die("daemon: invalid restart delay", 6)
    else:
        delay = 1
    mask = 3
    if "m" in opts:
        try:
            mask = int(str(opts["m"]))
        except ValueError:
            mask = -1
        if not 0 <= mask <= 3:
            die("daemon: unrecognized listening mask", 6)
    out_path = str(opts["o"]) if "o" in opts else None
    out_fd = -1
    if out_path is not None:
        try:
            out_fd = _daemon_open_log(out_path)
        except OSError as exc:
            die(f"daemon: open: {exc.strerror}", 7)
    child_pid_fd = _pidfile_open(str(opts["p"])) if "p" in opts else None
    parent_pid_fd = _pidfile_open(str(opts["P"])) if "P" in opts else None
    # daemon(3): fork, the parent exits 0, the child makes a new session; -c: chdir("/");
    # -f: stdio to /dev/null.
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    if opts.get("c"):
        os.chdir("/")
    if opts.get("f"):
        null = os.open(os.devnull, os.O_RDWR)
        for n in (0, 1, 2):
            os.dup2(null, n)
    _pidfile_write(parent_pid_fd)
    user = str(opts["u"]) if "u" in opts else None
    if not supervise:
        _pidfile_write(child_pid_fd)
        if user is not None:
            _restrict_process(user)
        os.execvp(args[0], args)
    state = {"terminate": False, "reopen": False, "child": 0}

    def on_term(signo: int, _frame: object) -> None:
        if state["child"]:
            os.kill(int(state["child"]), signo)
        state["terminate"] = True

    def on_hup(_signo: int, _frame: object) -> None:
        state["reopen"] = True

    signal.signal(signal.SIGTERM, on_term)
    if opts.get("H") and out_fd >= 0:
        signal.signal(signal.SIGHUP, on_hup)
    while True:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            _pidfile_write(child_pid_fd)
            if user is not None:
                _restrict_process(user)
            os.close(rfd)
            if mask & 2:
                os.dup2(wfd, 2)
            if mask & 1:
                os.dup2(wfd, 1)
            try:
                os.execvp(args[0], args)
            except OSError as exc:
                print(f"daemon: {args[0]}: {exc.strerror}", file=sys.stderr)
                os._exit(1)
        state["child"] = pid
        os.close(wfd)
        while not state["terminate"]:  # on SIGTERM the supervisor stops copying and leaves
            if state["reopen"] and out_path is not None:
                state["reopen"] = False
                new = _daemon_open_log(out_path)  # reopen_log: the same open, links followed
                os.close(out_fd)
                out_fd = new
            try:
                chunk = os.read(rfd, 4096)
            except InterruptedError:
                continue
            if not chunk:
                break
            if out_fd >= 0:
                os.write(out_fd, chunk)
            elif not opts.get("f") and not opts.get("S"):
                os.write(1, chunk)
        os.close(rfd)
        if state["terminate"]:  # "bail immediately" (daemon.c main): no wait for the child
            break
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
        state["child"] = 0
        if not restart or state["terminate"]:
            break
        deadline = time.monotonic() + delay
        while not state["terminate"] and time.monotonic() < deadline:
            time.sleep(0.1)
        if state["terminate"]:
            break
    for which in ("p", "P"):  # pidfile_remove
        if which in opts:
            Path(str(opts[which])).unlink(missing_ok=True)
    return 1  # "If daemon(3) succeeded exit status does not matter."


def _id(name: str, db: str) -> int:
    """xinstall.c main: a user/group name, else a number (parseid), else `unknown user|group`."""
    import grp
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid if db == "user" else grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        die(f"install: unknown {db} {name}", 1)


def install(argv: list[str]) -> int:
    """install(1), following usr.bin/xinstall/xinstall.c main, install_dir and install.

    -d: for each directory, every prefix is stat(2)ed (links followed) and made 0755 if
    missing, an existing non-directory is an error; at the end chown(2) and chmod(2) the
    path, both following links (install_dir), warning, not failing, when they fail.
    Files: the target is stat(2)ed (links followed) and must be a regular file if it
    exists; it is unlinked (the link itself) and created anew, then fchown/fchmod, the
    bytes copied unless the source is /dev/null.  Only -d -o -g -m (and -c, ignored) are
    emulated; the other options are refused.
    """
    import stat as st_mod

    args = list(argv)
    dodir = False
    owner = group = None
    mode = 0o755
    while args and args[0].startswith("-") and args[0] != "-":
        word = args.pop(0)
        if word == "--":
            break
        letters = word[1:]
        while letters:
            ch, letters = letters[0], letters[1:]
            if ch == "d":
                dodir = True
            elif ch == "c":
                pass
            elif ch in "ogm":
                value = letters or (args.pop(0) if args else "")
                letters = ""
                if not value:
                    die("usage: install [-o owner] [-g group] [-m mode] file1 file2", 64)
                if ch == "o":
                    owner = value
                elif ch == "g":
                    group = value
                elif not re.fullmatch(r"[0-7]{1,4}", value):
                    die(f"install: invalid file mode: {value}", 64)
                else:
                    mode = int(value, 8)
            else:
                die(f"install: option -{ch} is not emulated by the double", 64)
    if not args or (len(args) == 1 and not dodir):
        die("usage: install [-o owner] [-g group] [-m mode] file1 file2", 64)
    uid = _id(owner, "user") if owner is not None else -1
    gid = _id(group, "group") if group is not None else -1
    if dodir:
        for path in args:
            parts = path.split("/")
            for i in range(1, len(parts) + 1):
                prefix = "/".join(parts[:i])
                if not prefix:
                    continue
                try:
                    sb = os.stat(prefix)  # stat(2): follows links
                except FileNotFoundError:
                    os.mkdir(prefix, 0o755)
                    continue
                if not st_mod.S_ISDIR(sb.st_mode):
                    die(f"install: {prefix} exists but is not a directory", 71)
            if uid != -1 or gid != -1:
                try:
                    os.chown(path, uid, gid)  # chown(2): follows links
                except OSError as exc:
                    print(f"install: chown {uid}:{gid} {path}: {exc.strerror}", file=sys.stderr)
            try:
                os.chmod(path, mode)  # chmod(2): follows links
            except OSError as exc:
                print(f"install: chmod {mode:o} {path}: {exc.strerror}", file=sys.stderr)
        return 0
    if len(args) != 2:
        die("install: only `install [options] file1 file2` is emulated by the double", 64)
    src, dst = args
    try:
        to_sb: os.stat_result | None = os.stat(dst)
    except FileNotFoundError:
        to_sb = None
    if to_sb is not None and st_mod.S_ISDIR(to_sb.st_mode):
        dst = os.path.join(dst, os.path.basename(src))
    elif to_sb is not None and not st_mod.S_ISREG(to_sb.st_mode):
        die(f"install: {dst}: Inappropriate file type or format", 71)
    data = b"" if src == "/dev/null" else Path(src).read_bytes()
    if os.path.lexists(dst):
        os.unlink(dst)  # create_newfile: unlink the old target (a link itself, not its target)
    fd = os.open(dst, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return 0


def makefs(argv: list[str]) -> int:
    """makefs -t cd9660 -o R,L=LABEL IMAGE DIRECTORY, as vm-bhyve runs it (lib/vm-core core::create_cloud_init)."""
    opts, rest = _getopts(argv, "t:o:")
    if opts.get("t") != "cd9660" or len(rest) != 2:
        die("usage: makefs [-t fs-type] [-o fs-options] image-file directory", 1)
    directory = Path(rest[1])
    if not directory.is_dir():
        die(f"makefs: {directory}: No such file or directory", 1)
    label = next((o[2:] for o in opts.get("o", "").split(",") if o.startswith("L=")), "")
    makefs_image(Path(rest[0]), directory, label)
    return 0


# -- small ones -------------------------------------------------------------------------


def pkg(argv: list[str]) -> int:
    """pkg(8): `info -e` exit status; `info`/`query` list installed packages and refuse names
    that are not installed ("No package(s) matching", EX_SOFTWARE 70); `install` refuses
    names the repository does not have; `delete` refuses names not installed."""
    args = [a for a in argv if a not in ("-y", "-q", "--yes", "--quiet")]
    with State() as st:
        have: list[str] = st["packages"]
        if args[:1] == ["-v"]:
            print("2.1.2")
            return 0
        if args[:1] == ["info"]:
            rest = args[1:]
            if rest[:1] == ["-e"]:
                return 0 if rest[1:] and all(p in have for p in rest[1:]) else 1
            missing = [p for p in rest if p not in have]
            if missing:
                print(f"pkg: No package(s) matching {missing[0]}", file=sys.stderr)
                return 70
            for p in rest or sorted(have):
                print(f"{p}-1.0")
            return 0
        if args[:1] == ["query"]:
            rest = [a for a in args[1:] if a != "-a"]  # -a: every installed package (pkg-query(8))
            fmt, names = (rest[0], rest[1:]) if rest else ("%n", [])
            missing = [p for p in names if p not in have]
            for p in names or sorted(have):
                if p in have:
                    print(fmt.replace("%n", p).replace("%v", "1.0"))
            return 1 if missing else 0
        if args[:1] == ["install"]:
            names = [p for p in args[1:] if not p.startswith("-")]
            unknown = [p for p in names if p not in REPOSITORY]
            if unknown:
                print(
                    f"pkg: No packages available to install matching '{unknown[0]}' "
                    "have been found in the repositories",
                    file=sys.stderr,
                )
                return 1
            new = [p for p in names if p not in have]
            have += new
            if "python3" in new:
                # lang/python3 installs the /usr/local/bin/python3 link (a bhyve guest's bootstrap)
                link = Path("/usr/local/bin/python3")
                link.parent.mkdir(parents=True, exist_ok=True)
                link.unlink(missing_ok=True)
                link.symlink_to(os.path.realpath(sys.executable))
            return 0
        if args[:1] in (["delete"], ["remove"]):
            names = [p for p in args[1:] if not p.startswith("-")]
            missing = [p for p in names if p not in have]
            if missing:
                print(f"pkg: No packages matched for pattern '{missing[0]}'", file=sys.stderr)
                return 1
            have[:] = [p for p in have if p not in names]
            return 0
    die(f"double: pkg {' '.join(argv)} is not emulated", 1)
    return 1


def sysctl(argv: list[str]) -> int:
    with State() as st:
        values = st["sysctl"]
        quiet = "-n" in argv
        for arg in (a for a in argv if not a.startswith("-")):
            name, sep, value = arg.partition("=")
            if name not in values:
                die(f"sysctl: unknown oid '{name}'", 1)
            if sep:
                print(f"{name}: {values[name]} -> {value}")
                values[name] = value
            else:
                print(values[name] if quiet else f"{name}: {values[name]}")
    return 0


def kldstat(argv: list[str]) -> int:
    with State() as st:
        if "-m" in argv:
            return 0 if argv[argv.index("-m") + 1] in st["modules"] else 1
        print("\n".join(st["modules"]))
    return 0


def kldload(argv: list[str]) -> int:
    with State() as st:
        for m in (a for a in argv if not a.startswith("-")):
            if m not in st["modules"]:
                st["modules"].append(m)
    return 0


_SUFFIX = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def _rctl_kernel_form(rule: str) -> str:
    """A rule as the kernel keeps and prints it (sys/kern/kern_rctl.c rctl_rule_to_sbuf):
    the amount a raw integer (usr.bin/rctl/rctl.c expand_amount → expand_number(3),
    powers of 1024, either case) and `/per` only when it differs from the subject."""
    head, _, tail = rule.partition("=")
    amount, _, per = tail.partition("/")
    m = re.match(r"^(\d+)([kmgtpeKMGTPE]?)$", amount)
    if not m:
        die(f"rctl: invalid amount '{amount}'", 1)
    value = int(m.group(1)) * 1024 ** _SUFFIX.get(m.group(2).lower(), 0)
    subject = head.split(":", 1)[0]
    return f"{head}={value}" + (f"/{per}" if per and per != subject else "")


def _rctl_matches(rule: str, flt: str) -> bool:
    """kern_rctl.c rctl_rule_matches: every field the filter gives must be equal."""
    fields = rule.partition("=")[0].split(":")
    want = flt.partition("=")[0].split(":")
    return all(not w or (i < len(fields) and fields[i] == w) for i, w in enumerate(want))


def rctl(argv: list[str]) -> int:
    """rctl -a RULE / -r FILTER / [-h] [FILTER]: usr.bin/rctl/rctl.c add_rule, remove_rule,
    show_rules; rules printed in the kernel's form (raw integers, see _rctl_kernel_form)."""
    with State() as st:
        rules: list[str] = st["rctl"]
        if st["sysctl"].get("kern.racct.enable") != "1":
            die("rctl: RACCT/RCTL present, but disabled; enable using kern.racct.enable=1 tunable", 1)
        if argv[:1] == ["-a"]:
            for r in argv[1:]:
                new = _rctl_kernel_form(r)
                head = new.partition("=")[0]
                if head.endswith(":deny"):
                    # kern_rctl.c rctl_rule_add: a deny rule replaces the one differing only by amount
                    rules[:] = [x for x in rules if x.partition("=")[0] != head]
                if new not in rules:
                    rules.append(new)
        elif argv[:1] == ["-r"]:
            for f in argv[1:]:
                rules[:] = [r for r in rules if not _rctl_matches(r, f)]
        else:
            humanize = "-h" in argv
            filters = [a for a in argv if not a.startswith("-")]
            for r in rules:
                if filters and not any(_rctl_matches(r, f) for f in filters):
                    continue
                if humanize:
                    head, _, amount = r.partition("=")
                    n = int(amount.split("/")[0])
                    unit = next(
                        (u for u, e in sorted(_SUFFIX.items(), key=lambda x: -x[1]) if n and n % 1024**e == 0), ""
                    )
                    r = f"{head}={n // 1024 ** _SUFFIX[unit] if unit else n}{unit.upper()}"
                print(r)
    return 0


def nc(argv: list[str]) -> int:
    """nc -z [-w SECS] HOST PORT: a real TCP connect, as FreeBSD's nc(1) does (it is in base)."""
    import socket

    args = [a for a in argv if a != "-z"]
    timeout = 2.0
    if "-w" in args:
        i = args.index("-w")
        timeout = float(args[i + 1])
        del args[i : i + 2]
    host, port = args[0], int(args[1])
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return 0
    except OSError:
        return 1


def freebsd_version(argv: list[str]) -> int:
    """freebsd-version(1): -k the installed kernel, -r the running kernel, -u the userland
    (the default); several flags print one line each in k, r, u order."""
    with State() as st:
        v = st.setdefault("freebsd_version", {})
        running = st["sysctl"]["kern.osrelease"]
        versions = {
            "k": v.get("kernel", running),
            "r": running,
            "u": v.get("userland", running),
        }
    flags = "".join(a[1:] for a in argv if a.startswith("-")) or "u"
    for f in flags:
        if f not in versions:
            die("usage: freebsd-version [-kru] [-j jail]", 1)
    for f in "kru":
        if f in flags:
            print(versions[f])
    return 0


COMMANDS = {
    "arp": arp,
    "sysrc": sysrc,
    "pfctl": pfctl,
    "ifconfig": ifconfig,
    "service": service,
    "bastille": bastille,
    "jls": jls,
    "jexec": jexec,
    "vm": vm,
    "pkg": pkg,
    "sysctl": sysctl,
    "kldstat": kldstat,
    "kldload": kldload,
    "rctl": rctl,
    "freebsd-version": freebsd_version,
    "nc": nc,
    "tmux": tmux,
    "daemon": daemon,
    "install": install,
    "makefs": makefs,
    "chroot": chroot,
    "ps": ps,
}

PATHS = {
    "arp": "/usr/sbin/arp",
    "sysrc": "/usr/sbin/sysrc",
    "pfctl": "/sbin/pfctl",
    "ifconfig": "/sbin/ifconfig",
    "service": "/usr/sbin/service",
    "bastille": "/usr/local/bin/bastille",
    "jls": "/usr/sbin/jls",
    "jexec": "/usr/sbin/jexec",
    "vm": "/usr/local/sbin/vm",
    "pkg": "/usr/sbin/pkg",
    "sysctl": "/sbin/sysctl",
    "kldstat": "/sbin/kldstat",
    "kldload": "/sbin/kldload",
    "rctl": "/usr/bin/rctl",
    "freebsd-version": "/bin/freebsd-version",
    "nc": "/usr/bin/nc",
    "tmux": "/usr/local/bin/tmux",
    "daemon": "/usr/sbin/daemon",
    "install": "/usr/bin/install",
    "makefs": "/usr/sbin/makefs",
    "chroot": "/usr/sbin/chroot",
    "ps": "/bin/ps",
}


def _injected_failure(cmd: str, argv: list[str]) -> None:
    """Fail this call when a test asked for it (not FreeBSD behaviour: a test control, like
    force-ssh-cut): the Nth call matching the prefix exits 1 before doing anything."""
    if not FAIL.exists():
        return
    fd = os.open(FAIL, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        order = json.loads(FAIL.read_text())
        if not " ".join([cmd, *argv]).startswith(order["match"]):
            return
        order["seen"] = order.get("seen", 0) + 1
        FAIL.write_text(json.dumps(order))
        if order["seen"] == order.get("n", 1):
            die(f"double: injected failure of {order['match']!r} (call {order['seen']})", 1)
    finally:
        os.close(fd)


def main(cmd: str | None = None) -> None:
    cmd = cmd or os.path.basename(sys.argv[0])
    log_call(cmd, sys.argv[1:])
    _injected_failure(cmd, sys.argv[1:])
    sys.exit(COMMANDS[cmd](sys.argv[1:]) or 0)


if __name__ == "__main__":
    main()
