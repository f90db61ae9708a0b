#!/usr/bin/python3
"""Test doubles for the FreeBSD commands warden-provision runs on a host.

Installed inside the test host's root tree at the FreeBSD paths (sysrc, pfctl,
ifconfig, service, bastille, vm, pkg, jls, sysctl, kldload, kldstat, rctl,
freebsd-version), one file dispatching on the name it is called by.  Every call is
appended to /var/log/warden-doubles.jsonl; state lives in /var/db/warden-doubles/.
Each behaviour follows docs/freebsd.md (section cited); where that page is
silent the double does the least that lets order and arguments be asserted.
The doubles run inside the chroot, so "/" is the test host's tree.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

STATE_DIR = Path("/var/db/warden-doubles")
LOG = Path("/var/log/warden-doubles.jsonl")
SSH_CUT = STATE_DIR / "ssh-cut"
FORCE_CUT = STATE_DIR / "force-ssh-cut"
RC_CONF = Path("/etc/rc.conf")


# -- state -------------------------------------------------------------------------------


class State:
    """state.json under an exclusive lock for the whole command (calls may run in parallel)."""

    def __enter__(self) -> dict[str, Any]:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(STATE_DIR / "state.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        path = STATE_DIR / "state.json"
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
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
        self.data.setdefault("packages", ["bastille", "vm-bhyve", "python311", "git", "tmux"])
        self.data.setdefault(
            "sysctl",
            {
                "net.inet.ip.forwarding": "0",
                "kern.racct.enable": "1",
                "kern.features.vimage": "1",
                "kern.osrelease": "14.3-RELEASE",
            },
        )
        self.data.setdefault("modules", ["pf", "if_bridge", "vmm"])
        self.data.setdefault("rctl", [])
        return self.data

    def __exit__(self, *exc: object) -> None:
        tmp = STATE_DIR / "state.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
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


# -- ifconfig (docs/freebsd.md#the-warden0-bridge) ----------------------------------------


def _mask(prefix: int) -> str:
    return f"0x{(0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:08x}"


def ifconfig(argv: list[str]) -> int:
    with State() as st:
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
                ifs[name]["ether"] = rest.pop(0)
            else:
                die(f"ifconfig: {word}: bad value", 1)
    return 0


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
    for a in i["inet"]:
        ip, _, prefix = a.partition("/")
        print(f"\tinet {ip} netmask {_mask(int(prefix or 32))}")
    for m in i["members"]:
        print(f"\tmember: {m} flags=143<LEARNING,DISCOVER,AUTOEDGE,AUTOPTP>")


# -- service (docs/freebsd.md#rcd-scripts, docs/freebsd.md#loading-pf) --------------------


def service(argv: list[str]) -> int:
    if argv[:1] == ["-e"]:
        vs = rc_vars()
        for d in ("/etc/rc.d", "/usr/local/etc/rc.d"):
            for p in sorted(Path(d).glob("*")) if Path(d).is_dir() else []:
                if vs.get(f"{p.name}_enable", "NO").upper() in ("YES", "TRUE", "ON", "1"):
                    print(p)
        return 0
    if len(argv) < 2:
        die("usage: service <rc_script> <command>", 1)
    name, verb = argv[0], argv[1]
    if name == "pf":
        rules = rc_vars().get("pf_rules", "/etc/pf.conf")
        if verb in ("check",):
            return pfctl(["-n", "-f", rules])
        if verb in ("reload", "resync"):  # -n -f then -f, keeps states (docs/freebsd.md#loading-pf)
            return pfctl(["-n", "-f", rules]) or pfctl(["-f", rules])
        if verb in ("start", "restart", "onestart"):
            pfctl(["-F", "all"])
            rc = pfctl(["-f", rules])
            with State() as st:
                st["pf"]["enabled"] = True
            return rc
        if verb == "status":
            return pfctl(["-s", "info"])
        return 0
    if name in ("netif", "routing", "sshd", "devd", "rctl"):
        return 0
    script = next((Path(d) / name for d in ("/etc/rc.d", "/usr/local/etc/rc.d") if (Path(d) / name).is_file()), None)
    if script is None or not os.access(script, os.X_OK):
        die(f"{name} does not exist in /etc/rc.d or the local startup", 1)
    forced = verb.startswith(("one", "force"))
    base = re.sub(r"^(one|force|fast|quiet)", "", verb)
    enabled = rc_vars().get(f"{name}_enable", "NO").upper() in ("YES", "TRUE", "ON", "1")
    with State() as st:
        svc = st["services"].setdefault(name, {"running": False, "pid": 0})
        if base in ("enable", "disable"):
            pass
        elif base == "status":
            if svc["running"]:
                print(f"{name} is running as pid {svc['pid']}.")
                return 0
            print(f"{name} is not running.")
            return 1
        elif base in ("start", "restart", "stop"):
            if base != "stop" and not enabled and not forced:
                print(
                    f"Cannot '{base}' {name}. Set {name}_enable to YES in /etc/rc.conf or use 'one{base}' "
                    f"instead of '{base}'.",
                    file=sys.stderr,
                )
                return 1
            if base == "start" and svc["running"]:
                print(f"{name} already running? (pid={svc['pid']}).", file=sys.stderr)
                return 1
            if base == "stop" and not svc["running"]:
                print(f"{name} not running? (check /var/run/{name}.pid).", file=sys.stderr)
                return 1
            svc["running"] = base != "stop"
            svc["pid"] = 4000 + len(st["services"]) if svc["running"] else 0
            if base != "stop":
                print(f"Starting {name}.")
            return 0
    if base in ("enable", "disable"):
        return sysrc([f"{name}_enable={'YES' if base == 'enable' else 'NO'}"])
    return 0


# -- bastille (docs/freebsd.md#bastille-create) -------------------------------------------

BASTILLE = Path("/usr/local/bastille")


def bastille(argv: list[str]) -> int:
    if argv[:1] in (["-v"], ["--version"]):
        print("1.4.4")
        return 0
    if not argv:
        die("Usage: bastille command [option(s)] TARGET [args]", 1)
    cmd, args = argv[0], argv[1:]
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
            jails[args[0]]["running"] = cmd != "stop"
            return 0
        if cmd == "destroy":
            force = args[:1] == ["-f"]
            name = args[-1]
            if name not in jails:
                die(f"[{name}]: Jail not found.", 1)
            if jails[name]["running"] and not force:
                die(f"[{name}]: Jail is running. Stop it first or use -f.", 1)
            del jails[name]
            return 0
        if cmd == "config":
            name, action, prop = args[0], args[1], args[2]
            conf = jails.setdefault(name, {}).setdefault("config", {})
            if action == "set":
                conf[prop] = " ".join(args[3:])
            elif action == "get":
                print(conf.get(prop, "not set"))
            else:
                conf.pop(prop, None)
            return 0
        if cmd == "template":
            if args[0] not in jails:
                die(f"[{args[0]}]: Jail not found.", 1)
            jails[args[0]].setdefault("templates", []).append(args[1])
            return 0
    die(f"bastille: unknown command {cmd}", 1)
    return 1


def _bastille_create(st: dict[str, Any], args: list[str]) -> int:
    opts: dict[str, Any] = {"bridge": False, "vnet": False, "thick": False, "mac": False, "gateway": None}
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
    st["jails"][name] = {
        "release": release,
        "ip": ip,
        "interface": iface,
        "running": True,
        "options": {k: v for k, v in opts.items() if v},
    }
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
            template, rest = "default", list(args)
            while rest and rest[0].startswith("-"):
                o = rest.pop(0)
                val = rest.pop(0)
                if o == "-t":
                    template = val
            name = rest[0]
            src = vm_dir / ".templates" / f"{template}.conf"
            if not src.exists():
                die(f"/usr/local/sbin/vm: unable to find template {src}", 1)
            if name in st["vms"]:
                die(f"/usr/local/sbin/vm: {name} already exists", 1)
            (vm_dir / name).mkdir(parents=True, exist_ok=True)
            (vm_dir / name / f"{name}.conf").write_text(src.read_text())
            st["vms"][name] = {"running": False, "template": template}
            return 0
        if cmd in ("start", "stop"):
            if args[0] not in st["vms"]:
                die(f"/usr/local/sbin/vm: {args[0]} does not exist", 1)
            st["vms"][args[0]]["running"] = cmd == "start"
            return 0
        if cmd == "list":
            print("NAME    DATASTORE  LOADER  CPU  MEMORY  VNC  AUTO  STATE")
            for n, v in sorted(st["vms"].items()):
                print(f"{n}  default  bhyveload  1  256M  -  No  {'Running' if v['running'] else 'Stopped'}")
            return 0
    die(f"vm: unknown command {cmd}", 1)
    return 1


# -- small ones -------------------------------------------------------------------------


def pkg(argv: list[str]) -> int:
    with State() as st:
        if argv[:1] == ["-v"]:
            print("2.1.2")
            return 0
        if argv[:2] == ["info", "-e"]:
            return 0 if argv[2] in st["packages"] else 1
        if argv[:1] == ["install"]:
            st["packages"] += [p for p in argv[1:] if not p.startswith("-") and p not in st["packages"]]
            return 0
    return 0


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


def rctl(argv: list[str]) -> int:
    """rctl -a RULE / -r FILTER / list (docs/freebsd.md#rctl)."""
    with State() as st:
        rules: list[str] = st["rctl"]
        if st["sysctl"].get("kern.racct.enable") != "1":
            die("rctl: RACCT/RCTL present, but disabled; enable using kern.racct.enable=1 tunable", 1)
        if argv[:1] == ["-a"]:
            rules += [r for r in argv[1:] if r not in rules]
        elif argv[:1] == ["-r"]:
            for f in argv[1:]:
                rules[:] = [r for r in rules if not r.startswith(f)]
        else:
            print("\n".join(rules))
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
    with State() as st:
        print(st["sysctl"]["kern.osrelease"])
    return 0


COMMANDS = {
    "sysrc": sysrc,
    "pfctl": pfctl,
    "ifconfig": ifconfig,
    "service": service,
    "bastille": bastille,
    "jls": jls,
    "vm": vm,
    "pkg": pkg,
    "sysctl": sysctl,
    "kldstat": kldstat,
    "kldload": kldload,
    "rctl": rctl,
    "freebsd-version": freebsd_version,
    "nc": nc,
}

PATHS = {
    "sysrc": "/usr/sbin/sysrc",
    "pfctl": "/sbin/pfctl",
    "ifconfig": "/sbin/ifconfig",
    "service": "/usr/sbin/service",
    "bastille": "/usr/local/bin/bastille",
    "jls": "/usr/sbin/jls",
    "vm": "/usr/local/sbin/vm",
    "pkg": "/usr/sbin/pkg",
    "sysctl": "/sbin/sysctl",
    "kldstat": "/sbin/kldstat",
    "kldload": "/sbin/kldload",
    "rctl": "/usr/bin/rctl",
    "freebsd-version": "/bin/freebsd-version",
    "nc": "/usr/bin/nc",
}


def main(cmd: str | None = None) -> None:
    cmd = cmd or os.path.basename(sys.argv[0])
    log_call(cmd, sys.argv[1:])
    sys.exit(COMMANDS[cmd](sys.argv[1:]) or 0)


if __name__ == "__main__":
    main()
