"""`invoke doctor`: a read-only preflight of a host, one line per check, with the fix.

All probes run as one sh script over one SSH connection; the verdicts are decided here
from its output, so each rule can be tested with plain text.  Every fix line is a
command an operator can paste (the docs/freebsd.md section in the comment where it decides).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

from .isolation import arp_entries, bridge_entries, bridge_pin_changes, sysctl_lines
from .models import Agent, Host, bridge_mac, jail_mac
from .probe import section_lines
from .rcconf import read_vars

MIN_MAJOR = 14
APPLIED_BY_SITE = frozenset(
    {
        "gateway_enable",
        "PF enabled",
        "vm-bhyve initialised",
        "packages the agents need",
        "bridge filtering sysctls",
        "jails pinned at layer 2",
        "bridge MAC pinned",
    }
)
MIN_FREE_KB = 2 * 1024 * 1024  # 2 GiB for a release and a few thin jails

PROBE = r"""
section() { printf '=== %s ===\n' "$1"; }
section uid; id -u
section user; id -un
section version; freebsd-version 2>/dev/null
section kernel; freebsd-version -k 2>/dev/null
section python; command -v python3 || ls /usr/local/bin/python3.* 2>/dev/null | head -n 1
section bastille; command -v bastille
section release; [ -d "/usr/local/bastille/releases/$release" ] && echo yes
section vimage; sysctl -n kern.features.vimage 2>/dev/null
section devfs; grep -s '^\[bastille_vnet=13\]' /etc/devfs.rules
section bridge; { kldstat -q -m if_bridge && echo loaded; } || { [ -f /boot/kernel/if_bridge.ko ] && echo loadable; }
section gateway; sysrc -n gateway_enable 2>/dev/null
section pf; pfctl -s info 2>/dev/null | grep -s '^Status'
section pfconf; if [ -e /etc/pf.conf ]; then pfctl -n -f /etc/pf.conf >/dev/null 2>&1 && echo ok; else echo absent; fi
section packages; pkg query -a %n </dev/null 2>/dev/null
section resolv; grep -s '^nameserver' /etc/resolv.conf
section rcconflocal; cat /etc/rc.conf.local 2>/dev/null
section racct; sysctl -n kern.racct.enable 2>/dev/null
section bridgesysctl
for o in pfil_onlyip pfil_member pfil_bridge pfil_local_phys; do
  v=$(sysctl -n "net.link.bridge.$o" 2>/dev/null) && echo "net.link.bridge.$o: $v"
done
section arp; arp -an -i "$bridge" 2>/dev/null
section bridgeaddr; ifconfig "$bridge" addr 2>/dev/null
section interfaces; ifconfig -l 2>/dev/null
section vm; d=$(sysrc -n vm_dir 2>/dev/null); [ -n "$d" ] && [ -d "$d/.templates" ] && echo yes
section disk; df -k / | tail -n 1
section inet; ifconfig 2>/dev/null
exit 0
"""


def probe_script(host: Host) -> str:
    import shlex

    return f"release={shlex.quote(host.release)}\nbridge={shlex.quote(host.bridge)}\n" + PROBE


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str
    applied_by_site: bool = False  # site.yml sets this itself, so its preflight does not stop on it

    def as_json(self) -> dict[str, object]:
        """As `doctor --json` prints it (provision/schemas/warden.doctor.v1.json)."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def sections(text: str) -> dict[str, str]:
    """The `=== name ===` blocks of a probe's output, each as one stripped text (probe.py splits them)."""
    return {k: "\n".join(v).strip() for k, v in section_lines(text).items()}


def _interface_lines(ifconfig_text: str) -> Iterator[tuple[str, str]]:
    """(interface, line) for each indented line of `ifconfig` output, under its `IF: flags` header."""
    current = ""
    for line in ifconfig_text.splitlines():
        m = re.match(r"^(\S+): flags", line)
        if m:
            current = m.group(1)
        else:
            yield current, line


def host_addresses(ifconfig_text: str, skip: str) -> list[IPv4Interface]:
    """inet addresses of every interface except SKIP (the warden bridge carries agents' gateways)."""
    out = []
    for iface, line in _interface_lines(ifconfig_text):
        m = re.match(r"^\s+inet (\S+) netmask (0x[0-9a-f]+)", line)
        if m and iface not in (skip, "lo0"):
            prefix = bin(int(m.group(2), 16)).count("1")
            out.append(IPv4Interface(f"{m.group(1)}/{prefix}"))
    return out


def interface_ether(ifconfig_text: str, name: str) -> str:
    """The `ether` line of interface NAME in `ifconfig` output ("" when it is not there)."""
    for iface, line in _interface_lines(ifconfig_text):
        m = re.match(r"^\s+ether (\S+)", line)
        if m and iface == name:
            return m.group(1)
    return ""


def evaluate(host: Host, agents: list[Agent], text: str) -> list[Check]:
    s = sections(text)
    checks: list[Check] = []

    def add(name: str, ok: bool, detail: str, fix: str) -> None:
        checks.append(Check(name, ok, detail, fix, name in APPLIED_BY_SITE))

    # site.yml writes root's files (rc.conf, /usr/local/etc/rc.d, /var/db/warden) and drops to
    # each agent's user from root: as another user it would fail halfway on a permission error.
    user = s.get("user") or "the SSH user"
    add(
        "root rights (as root, or a non-root SSH user with become)",
        s.get("uid") == "0",
        f"the commands run as {user} (uid {s.get('uid') or '?'}), not root",
        f"set ansible_become: true for {host.name} in {host.source} (with passwordless sudo or doas for {user}, "
        "README.md#become), or connect as root",
    )
    version = s.get("version", "")
    m = re.match(r"^(\d+)\.", version)
    add(
        "FreeBSD version supported",
        bool(m and int(m.group(1)) >= MIN_MAJOR),
        version or "freebsd-version gave nothing",
        "freebsd-update -r 14.3-RELEASE upgrade",
    )
    # docs/freebsd.md#jail-release: a jail runs on the host's kernel, so its userland
    # (warden_release) must not be newer than `freebsd-version -k`.
    kernel = s.get("kernel", "")
    km, rm = re.match(r"^(\d+)\.(\d+)", kernel), re.match(r"^(\d+)\.(\d+)", host.release)
    if km and rm:
        kernel_release = f"{km.group(1)}.{km.group(2)}-RELEASE"
        add(
            f"jail release {host.release} runs on the kernel",
            (int(rm.group(1)), int(rm.group(2))) <= (int(km.group(1)), int(km.group(2))),
            f"warden_release {host.release}, kernel {kernel}",
            f"set warden_release: {kernel_release} for {host.name} in {host.source}"
            f" (or upgrade the kernel: freebsd-update -r {host.release} upgrade)",
        )
    if agents:
        # tmux, node and git are packages, not base (docs/freebsd.md#base-system-and-packages):
        # without tmux the wrapper exits at once and daemon(8) restarts it for ever.
        missing = [p for p in host.packages if p not in s.get("packages", "").split()]
        add(
            "packages the agents need",
            not missing,
            "missing: " + " ".join(missing) if missing else " ".join(host.packages),
            "pkg install -y " + " ".join(missing or host.packages),
        )
    if any(a.jails for a in agents) and not host.jail_nameservers:
        # Bastille copies the host's resolv.conf into each jail; 127.0.0.1/::1 there is the
        # jail's own loopback, where nothing answers (docs/freebsd.md#dns-in-vnet-jails).
        servers = re.findall(r"^nameserver\s+(\S+)", s.get("resolv", ""), re.M)
        usable = [n for n in servers if not n.startswith("127.") and n != "::1"]
        add(
            "jails can resolve names (resolv.conf copied into them)",
            bool(usable),
            "/etc/resolv.conf: " + (", ".join(servers) or "no nameserver"),
            f"set warden_jail_nameservers: [<a resolver the jails reach>] for {host.name} in {host.source}",
        )
    # rc_conf_files is "/etc/rc.conf /etc/rc.conf.local": the later file wins at boot, so a
    # value there silently overrides the one site.yml writes (docs/freebsd.md#where-rcconf-values-come-from).
    overrides = rc_conf_local_overrides(host, agents, s.get("rcconflocal", ""))
    add(
        "/etc/rc.conf.local does not override warden's rc.conf values",
        not overrides,
        "; ".join(overrides),
        "edit /etc/rc.conf.local: remove those lines (or set them as warden does); it is read after /etc/rc.conf",
    )
    add("python for Ansible", bool(s.get("python")), s.get("python") or "no python3", "pkg install -y python311")
    add("Bastille installed", bool(s.get("bastille")), s.get("bastille") or "no bastille", "pkg install -y bastille")
    add(
        f"Bastille release {host.release} bootstrapped",
        s.get("release") == "yes",
        "",
        f"bastille bootstrap {host.release}",
    )
    add(
        "VIMAGE in the kernel (VNET jails)",
        s.get("vimage") == "1",
        f"kern.features.vimage={s.get('vimage') or '?'}",
        "boot a kernel with options VIMAGE (GENERIC has it)",
    )
    # docs/freebsd.md#bastille-vnet-jails: VNET jails use devfs ruleset 13, which must exist on the host.
    add(
        "devfs ruleset 13 for VNET jails",
        bool(s.get("devfs")),
        "/etc/devfs.rules",
        "printf '[bastille_vnet=13]\\nadd include $devfsrules_jail_vnet\\nadd path bpf* unhide\\n' >> /etc/devfs.rules"
        " && service devfs restart",
    )
    add(
        "if_bridge available",
        s.get("bridge") in ("loaded", "loadable"),
        s.get("bridge") or "missing",
        "kldload if_bridge",
    )
    # docs/freebsd.md#nat-and-forwarding: NAT for jails and VMs needs forwarding.
    add(
        "gateway_enable",
        s.get("gateway", "").upper() == "YES",
        f"gateway_enable={s.get('gateway') or 'NO'}",
        "sysrc gateway_enable=YES && sysctl net.inet.ip.forwarding=1",
    )
    add(
        "PF enabled",
        "Enabled" in s.get("pf", ""),
        s.get("pf") or "pf not running",
        "sysrc pf_enable=YES && service pf start",
    )
    # A fresh FreeBSD has no /etc/pf.conf (rc.conf(5) pf_rules names it, nothing installs it):
    # site.yml writes one with our hook, so only an existing file has to load.
    add(
        "current /etc/pf.conf loads",
        s.get("pfconf") in ("ok", "absent"),
        "no /etc/pf.conf yet: site.yml writes one" if s.get("pfconf") == "absent" else "pfctl -nf /etc/pf.conf",
        "pfctl -nf /etc/pf.conf  # and fix what it reports",
    )
    if agents:
        # docs/isolation.md: the anchor's per-epair rules only see jail traffic with these values.
        live = dict(ln.split(": ", 1) for ln in s.get("bridgesysctl", "").splitlines() if ": " in ln)
        wrong = [line for line in sysctl_lines() if live.get(line.split("=")[0]) != line.split("=")[1]]
        add(
            "bridge filtering sysctls",
            not wrong,
            ", ".join(f"{w.split('=')[0]}={live.get(w.split('=')[0], '?')}" for w in wrong),
            f"sysctl {' '.join(wrong or sysctl_lines())}  # and keep them in /etc/sysctl.conf (site.yml writes it)",
        )
    # docs/isolation.md "Layer 2 on the shared bridge": each running jail's address permanent
    # in the host's ARP table and its MAC static on its epair (a jail's epair exists while it
    # runs; site.yml pins the others when it creates or starts them).
    running = s.get("interfaces", "").split()
    pins = [p for p in layer2_pins(host, agents) if p[2] in running]
    if pins:
        arp = arp_entries(s.get("arp", ""))
        fdb = bridge_entries(s.get("bridgeaddr", ""))
        unpinned = {ip for ip, mac, _ in pins if arp.get(ip, ("", "", False))[::2] != (mac, True)}
        loose = {m for m, _ in bridge_pin_changes([(m, mac) for _, mac, m in pins], running, fdb)}
        fixes = [f"arp -S {ip} {mac}" for ip, mac, _ in pins if ip in unpinned]
        fixes += [f"ifconfig {host.bridge} static {m} {mac}" for _, mac, m in pins if m in loose]
        add(
            "jails pinned at layer 2",
            not fixes,
            ", ".join([*(f"arp {ip}" for ip in sorted(unpinned)), *(f"bridge {m}" for m in sorted(loose))]),
            " && ".join(fixes) or "-",
        )
    # The jails' and guests' permanent entries for their gateway name the bridge's pinned MAC
    # (docs/isolation.md "Layer 2"); checked once the bridge exists.
    ether = interface_ether(s.get("inet", ""), host.bridge)
    if ether and any(a.jails or a.placement == "bhyve" for a in agents):
        want = bridge_mac(host.name, host.bridge)
        add("bridge MAC pinned", ether == want, f"{host.bridge} ether {ether}", f"ifconfig {host.bridge} ether {want}")
    if any(a.memory_limit or a.maxproc or a.pcpu or a.openfiles or a.jail_memory_limit for a in agents):
        # docs/freebsd.md#rctl: rctl needs kern.racct.enable=1, a boot-time tunable.
        add(
            "kern.racct.enable (resource limits)",
            s.get("racct") == "1",
            f"kern.racct.enable={s.get('racct') or '?'}",
            "echo 'kern.racct.enable=1' >> /boot/loader.conf && shutdown -r now",
        )
    if any(a.placement == "bhyve" for a in agents):
        add("vm-bhyve initialised", s.get("vm") == "yes", "", f"sysrc vm_enable=YES vm_dir={host.vm_dir} && vm init")
    disk = s.get("disk", "").split()
    free = int(disk[3]) if len(disk) > 3 and disk[3].isdigit() else 0
    add("free disk on /", free >= MIN_FREE_KB, f"{free // 1024} MiB free", "free space on / (zfs list -o space)")
    own = host_addresses(s.get("inet", ""), host.bridge)
    clashes = [f"{a.name} {a.subnet} vs {i}" for a in agents for i in own if a.subnet.overlaps(i.network)]
    declared = [
        f"{a.name} {a.subnet} vs {n}" for a in agents for n in host.host_networks if a.subnet.overlaps(IPv4Network(n))
    ]
    add(
        "host networks do not overlap agent /24s",
        not clashes and not declared,
        "; ".join(clashes + declared),
        "invoke remove-agent NAME --yes && invoke add-agent NAME  (then add the network to warden_host_networks)",
    )
    return checks


def layer2_pins(host: Host, agents: list[Agent]) -> list[tuple[str, str, str]]:
    """(address, MAC, epair) of each jail on this host, as isolation.build_policy pins them."""
    seen: dict[str, tuple[str, str, str]] = {}
    for a in agents:
        if a.placement != "host":
            continue
        for jail in a.jails:
            epair = f"e0a_{jail.name}"
            if len(epair) <= 15 and (jail.name not in seen or jail.ip in a.subnet):
                seen[jail.name] = (str(jail.ip), jail_mac(host.name, jail.name), epair)
    return sorted(seen.values())


def rc_conf_local_overrides(host: Host, agents: list[Agent], text: str) -> list[str]:
    """Values in /etc/rc.conf.local (TEXT) that differ from what site.yml sets in /etc/rc.conf."""
    local = read_vars(text)
    wanted = {
        "gateway_enable": "YES",
        "pf_enable": "YES",
        f"ifconfig_{host.bridge_clone}_name": host.bridge,
        **{f"{a.name}_enable": "YES" for a in agents if a.placement == "host"},
    }
    if any(a.jails for a in agents if a.placement == "host"):
        wanted["bastille_enable"] = "YES"
    out = [
        f'{name}="{local[name]}" (warden sets "{value}")'
        for name, value in wanted.items()
        if name in local and local[name].upper() != value.upper()
    ]
    if "cloned_interfaces" in local and host.bridge_clone not in local["cloned_interfaces"].split():
        out.append(f'cloned_interfaces="{local["cloned_interfaces"]}" (lacks {host.bridge_clone})')
    return out


def preflight_failures(host: Host, agents: list[Agent], text: str) -> list[str]:
    """The doctor FAILs that site.yml cannot fix itself, as `[FAIL] name: fix` lines.

    Without root rights that one is the cause: the other probes (pfctl, rc.conf.local) read
    nothing as another user, and their FAILs would bury it.
    """
    failed = [c for c in evaluate(host, agents, text) if not c.ok and not c.applied_by_site]
    if failed and failed[0].name.startswith("root rights"):
        failed = failed[:1]
    return [
        f"[FAIL] {c.name} ({c.detail}): fix: {c.fix}" if c.detail else f"[FAIL] {c.name}: fix: {c.fix}" for c in failed
    ]
