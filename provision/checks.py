"""Every rule of README.md#what-invoke-check-refuses, as pure functions from a Fleet to a list of Problems.

Fleet-wide rules index values in dicts and sweep sorted intervals, so a check of 10,000
agents is O(n log n) — no pairwise comparison (docs/design.md#quality-bars).
"""

from __future__ import annotations

import locale as pylocale
import re
from collections import defaultdict
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

from .inventory import GROUP, outside_group
from .models import (
    COMMIT_RE,
    LLM_ROLES,
    OLD_SLOT,
    ROLE_KEYS,
    SLOT,
    VNET_JAIL_NAME_RE,
    Agent,
    Fleet,
    Host,
    bridge_mac,
    jail_mac,
)
from .problems import Location, Problem, Severity

# RFC 1918: the only ranges an agent /24 may come from.
# Special-purpose ranges that are not RFC 1918 but that Python may not call private.
SPECIAL = (IPv4Network("100.64.0.0/10"), IPv4Network("198.18.0.0/15"), IPv4Network("192.0.0.0/24"))
PRIVATE = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"))

# rc.d scripts of the base system and of packages an agent host commonly runs: an agent
# called `sshd` would replace /usr/local/etc/rc.d/sshd's role and its `sshd_enable`.
RESERVED_SERVICE_NAMES = frozenset(
    [
        "accounting",
        "adjkerntz",
        "apm",
        "auditd",
        "auditdistd",
        "automount",
        "automountd",
        "autounmountd",
        "bgfsck",
        "blacklistd",
        "bluetooth",
        "bootparams",
        "bridge",
        "bsnmpd",
        "bthidd",
        "ccd",
        "cfumass",
        "cleanvar",
        "cleartmp",
        "cron",
        "ctld",
        "ddb",
        "defaultroute",
        "devd",
        "devfs",
        "devmatch",
        "dhclient",
        "dmesg",
        "dumpon",
        "fsck",
        "ftpd",
        "gbde",
        "geli",
        "gptboot",
        "growfs",
        "gssd",
        "hastd",
        "hcsecd",
        "hostapd",
        "hostid",
        "hostname",
        "inetd",
        "iovctl",
        "ip6addrctl",
        "ipfilter",
        "ipfs",
        "ipfw",
        "ipmon",
        "ipnat",
        "ippool",
        "ipsec",
        "iscsictl",
        "iscsid",
        "jail",
        "kadmind",
        "kdc",
        "kfd",
        "keyserv",
        "kld",
        "kldxref",
        "kpasswdd",
        "ldconfig",
        "linux",
        "local",
        "localpkg",
        "lockd",
        "lpd",
        "mdconfig",
        "mixer",
        "motd",
        "mountcritlocal",
        "mountcritremote",
        "mountd",
        "moused",
        "msgs",
        "natd",
        "netif",
        "netoptions",
        "netwait",
        "newsyslog",
        "nfsclient",
        "nfscbd",
        "nfsd",
        "nfsuserd",
        "nisdomain",
        "nscd",
        "ntpd",
        "ntpdate",
        "opensm",
        "pf",
        "pflog",
        "pfsync",
        "powerd",
        "power_profile",
        "ppp",
        "pppoed",
        "quota",
        "random",
        "rarpd",
        "rctl",
        "resolv",
        "rfcomm_pppd",
        "root",
        "route6d",
        "routed",
        "routing",
        "rpcbind",
        "rtadvd",
        "rtsold",
        "rwho",
        "savecore",
        "sdpd",
        "securelevel",
        "sendmail",
        "serial",
        "sppp",
        "statd",
        "static_arp",
        "static_ndp",
        "stf",
        "swap",
        "syscons",
        "sysctl",
        "syslogd",
        "tmp",
        "ubthidhci",
        "ugidfw",
        "utx",
        "var",
        "virecover",
        "watchdogd",
        "wpa_supplicant",
        "ypbind",
        "yppasswdd",
        "ypserv",
        "ypset",
        "ypupdated",
        "ypxfrd",
        "zfs",
        "zfsbe",
        "zfsd",
        "zfskeys",
        "zvol",
        "sshd",
        "bastille",
        "vm",
        "nginx",
        "apache24",
        "postgresql",
        "mysql",
        "redis",
        "ollama",
        "dnsmasq",
        "unbound",
        "named",
        "tailscaled",
        "wireguard",
        "git",
        "gitea",
        "caddy",
        "haproxy",
        "node",
    ]
)
# Users the base system and ports own (/etc/passwd, UIDs.txt): the agent runs as NAME.
RESERVED_USERS = frozenset(
    [
        "root",
        "toor",
        "daemon",
        "operator",
        "bin",
        "tty",
        "kmem",
        "games",
        "news",
        "man",
        "sshd",
        "smmsp",
        "mailnull",
        "bind",
        "unbound",
        "proxy",
        "uucp",
        "pop",
        "www",
        "ntpd",
        "nobody",
        "hast",
        "tests",
        "auditdistd",
        "_dhcp",
        "_pflogd",
        "_ypldap",
        "git",
        "postgres",
        "mysql",
        "redis",
    ]
)
RESERVED_DB_PREFIXES = frozenset({"system"})  # docs/freebsd.md#clawdie-conventions: shared platform DBs

IFNAMSIZ_MAX = 15  # docs/freebsd.md#interface-name-length: interface names are limited to 15 characters


def _loc(agent: Agent, key: str | None = None) -> Location:
    return Location(agent.source, agent.key_line(key) if key else None, key)


def _host_loc(host: Host, var: str | None = None) -> Location:
    return Location(host.source, host.line, f"{host.name}.{var}" if var else host.name)


def placement_host(agent: Agent) -> str:
    """The machine the agent's jails and service run on: the host, or its own bhyve VM."""
    return agent.vm_name if agent.placement == "bhyve" else agent.host


def known_system_locale(name: str) -> bool:
    """`ll_CC.UTF-8` with a language/territory pair that exists (docs/freebsd.md#locales-and-login-classes)."""
    if name == "C.UTF-8":
        return True
    m = re.fullmatch(r"([a-z]{2,3})_([A-Z]{2})\.UTF-8", name)
    if not m:
        return False
    return f"{m.group(1)}_{m.group(2).lower()}" in pylocale.locale_alias


# -- one agent ---------------------------------------------------------------------------


def check_agent(agent: Agent, hosts: dict[str, Host]) -> list[Problem]:
    out: list[Problem] = []
    add = out.append
    if agent.source.parent.name not in ("", agent.name) and agent.source.name == ".env":
        add(
            Problem(
                (_loc(agent, "AGENT_NAME"),),
                f"AGENT_NAME={agent.name} but the file is in agents/{agent.source.parent.name}/",
                f"rename the directory to agents/{agent.name}/ or set AGENT_NAME={agent.source.parent.name}",
                rule="name-dir",
            )
        )
    if agent.name in RESERVED_SERVICE_NAMES:
        add(
            Problem(
                (_loc(agent, "AGENT_NAME"),),
                f"AGENT_NAME={agent.name} shadows the rc.d service /etc/rc.d/{agent.name} or "
                f"/usr/local/etc/rc.d/{agent.name} and its {agent.name}_enable variable",
                f"pick another name, e.g. {agent.name}agent",
                rule="reserved-service",
            )
        )
    elif agent.name in RESERVED_USERS:
        add(
            Problem(
                (_loc(agent, "AGENT_NAME"),),
                f"AGENT_NAME={agent.name} is a system user name",
                f"pick another name, e.g. {agent.name}agent",
                rule="reserved-user",
            )
        )
    if agent.db_prefix in RESERVED_DB_PREFIXES:
        add(
            Problem(
                (_loc(agent, "AGENT_NAME"),),
                f"AGENT_NAME={agent.name} is the reserved DB prefix for shared platform databases",
                "pick another name",
                rule="reserved-db",
            )
        )

    host = hosts.get(agent.host)
    outside = outside_group(agent.host) if host is None else None
    if outside is not None:
        # site.yml applies to the group warden_hosts only (playbooks/hosts.yml): an agent on
        # another host of the inventory would be rendered and never applied.
        names = ", ".join(sorted(hosts)) or "none yet"
        add(
            Problem(
                (_loc(agent, "AGENT_HOST"),),
                f"AGENT_HOST={agent.host} is in the inventory ({outside}) but not in the group {GROUP}, "
                "the hosts site.yml applies to",
                f"list {agent.host} under {GROUP} in {outside} (all: children: {GROUP}: hosts: {agent.host}:), "
                f"or set AGENT_HOST to one of its hosts: {names}",
                rule="unknown-host",
            )
        )
    elif host is None:
        names = ", ".join(sorted(hosts)) or "none"
        add(
            Problem(
                (_loc(agent, "AGENT_HOST"),),
                f"AGENT_HOST={agent.host} is not in the inventory's group {GROUP}",
                f"set AGENT_HOST to one of: {names}",
                rule="unknown-host",
            )
        )

    out.extend(_check_network(agent))
    out.extend(_check_jail_names(agent))
    if agent.soul_repo and not (agent.soul_ref and COMMIT_RE.fullmatch(agent.soul_ref)):
        # docs/security.md: what ships is exactly the commit that was checked, so the
        # ref must not move between `invoke check` and the apply's bundle.
        ref = f"SOUL_REF={agent.soul_ref}" if agent.soul_ref else "SOUL_REF is not set: it"
        add(
            Problem(
                (_loc(agent, "SOUL_REF" if agent.soul_ref else "SOUL_REPO"),),
                f"{ref} is not a full commit hash; a branch or tag can move after the check, "
                "and the apply must ship exactly the commit that was checked",
                f"run `invoke soul-pin {agent.name}` to write the 40-character commit it resolves to now",
                rule="soul-ref",
            )
        )
    if not known_system_locale(agent.system_locale):
        hint = agent.system_locale
        m = re.fullmatch(r"([a-z]{2,3}_[A-Z]{2})\.(?:utf-?8|UTF8|UTF-8)", agent.system_locale, re.I)
        if m:
            hint = f"{m.group(1)}.UTF-8"
        elif "." not in agent.system_locale and re.fullmatch(r"[a-z]{2,3}_[A-Z]{2}", agent.system_locale):
            hint = f"{agent.system_locale}.UTF-8"
        elif not agent.system_locale.endswith("UTF-8"):
            hint = "en_US.UTF-8"
        reason = (
            "is not UTF-8" if not re.search(r"utf-?8", agent.system_locale, re.I) else "is not a FreeBSD locale name"
        )
        add(
            Problem(
                (_loc(agent, "SYSTEM_LOCALE"),),
                f"SYSTEM_LOCALE={agent.system_locale} {reason}",
                f"use SYSTEM_LOCALE={hint} (FreeBSD spells locales ll_CC.UTF-8; check with `locale -a`)"
                if hint != agent.system_locale
                else "use a locale listed by `locale -a` on the host, e.g. en_US.UTF-8",
                rule="locale",
            )
        )
    if agent.placement == "bhyve" and host is not None:
        if agent.vm_ip is None:
            add(
                Problem(
                    (_loc(agent, "WARDEN_VM_IP"),),
                    "AGENT_PLACEMENT=bhyve needs WARDEN_VM_IP, the guest's uplink address",
                    f"set WARDEN_VM_IP to a free address in {host.vm_uplink} (not .1)",
                    rule="vm-ip",
                )
            )
        elif agent.vm_ip not in host.vm_uplink or agent.vm_ip in (
            host.vm_uplink.network_address + 1,
            host.vm_uplink.network_address,
            host.vm_uplink.broadcast_address,
        ):
            add(
                Problem(
                    (_loc(agent, "WARDEN_VM_IP"),),
                    f"WARDEN_VM_IP={agent.vm_ip} is not a guest address in warden_vm_uplink {host.vm_uplink}",
                    f"pick a free address in {host.vm_uplink} from .10 up",
                    rule="vm-ip",
                )
            )
    return out


def _check_network(agent: Agent) -> list[Problem]:
    out: list[Problem] = []
    subnet = agent.subnet
    base_net = IPv4Network(f"{agent.subnet_base}.0/24")
    if subnet != base_net:
        out.append(
            Problem(
                (_loc(agent, "WARDEN_SUBNET"), _loc(agent, "AGENT_SUBNET_BASE")),
                f"WARDEN_SUBNET={subnet} does not match AGENT_SUBNET_BASE={agent.subnet_base}",
                f"set WARDEN_SUBNET={base_net}",
                rule="subnet-base",
            )
        )
    if not any(subnet.subnet_of(p) for p in PRIVATE):
        kind = (
            "reserved"
            if any(subnet.subnet_of(n) for n in SPECIAL)
            or subnet.is_private
            or subnet.is_reserved
            or subnet.is_loopback
            or subnet.is_link_local
            else "public"
        )
        out.append(
            Problem(
                (_loc(agent, "AGENT_SUBNET_BASE"),),
                f"subnet {subnet} is {kind} address space, not RFC 1918 private",
                "use a /24 inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16",
                rule="subnet-private",
            )
        )
    gw_expected = subnet.network_address + SLOT["gateway"]
    if agent.gateway != gw_expected:
        out.append(
            Problem(
                (_loc(agent, "WARDEN_GATEWAY"),),
                f"WARDEN_GATEWAY={agent.gateway} is not .1 of {subnet}",
                f"set WARDEN_GATEWAY={gw_expected}",
                rule="gateway",
            )
        )
    seen: dict[IPv4Address, str] = {}
    old_map = (
        all(int(getattr(agent, f"{r}_ip")) - int(subnet.network_address) == OLD_SLOT[r] for r in agent.jail_roles)
        and len(agent.jail_roles) > 1
    )
    for role in agent.jail_roles:
        ip_key = ROLE_KEYS[role][0]
        ip: IPv4Address = getattr(agent, f"{role}_ip")
        if ip not in subnet:
            if role in LLM_ROLES:
                continue  # may be a shared LLM jail in another agent's /24: fleet check decides
            out.append(
                Problem(
                    (_loc(agent, ip_key),),
                    f"{ip_key}={ip} is outside the agent's subnet {subnet}",
                    f"use an address in {subnet}, e.g. {subnet.network_address + SLOT[role]}",
                    rule="ip-outside",
                )
            )
            continue
        if ip == agent.gateway:
            out.append(
                Problem(
                    (_loc(agent, ip_key), _loc(agent, "WARDEN_GATEWAY")),
                    f"{ip_key}={ip} is the gateway address (the host's on {agent.subnet})",
                    f"use {subnet.network_address + SLOT[role]}",
                    rule="ip-gateway",
                )
            )
        elif ip in (subnet.network_address, subnet.broadcast_address):
            out.append(
                Problem(
                    (_loc(agent, ip_key),),
                    f"{ip_key}={ip} is the network or broadcast address",
                    f"use {subnet.network_address + SLOT[role]}",
                    rule="ip-reserved",
                )
            )
        elif ip in seen:
            out.append(
                Problem(
                    (_loc(agent, ip_key), _loc(agent, seen[ip])),
                    f"{ip_key} and {seen[ip]} are both {ip}",
                    f"give {role} its own slot, e.g. {subnet.network_address + SLOT[role]}",
                    rule="ip-duplicate",
                )
            )
        seen.setdefault(ip, ip_key)
    if old_map:
        out.append(
            Problem(
                (_loc(agent, "WARDEN_GIT_IP"),),
                "this .env uses Clawdie's older slot map (db .3, cms .4, llama .5, git .6); it still works",
                "to adopt the current map (.2 git, .3 cms, .4 AI, .5 db) delete the WARDEN_*_IP lines",
                severity=Severity.WARNING,
                rule="old-slot-map",
            )
        )
    return out


def _check_jail_names(agent: Agent) -> list[Problem]:
    out: list[Problem] = []
    for jail in agent.jails:
        key = ROLE_KEYS[jail.role][1]
        if not VNET_JAIL_NAME_RE.fullmatch(jail.name) or jail.name.isdigit():
            fixed = re.sub(r"[^A-Za-z0-9]", "", jail.name) or f"{agent.name}{jail.role}"
            out.append(
                Problem(
                    (_loc(agent, key),),
                    f"{key}={jail.name}: Bastille refuses '-', '_' and other punctuation in VNET jail "
                    "names, and all-digit names (docs/freebsd.md#bastille-create; Clawdie's guide writes "
                    "<agent>-<role>)",
                    f"set {key}={fixed}",
                    rule="jail-name",
                )
            )
        elif len(f"e0a_{jail.name}") > IFNAMSIZ_MAX:
            out.append(
                Problem(
                    (_loc(agent, key),),
                    f"{key}={jail.name}: e0a_{jail.name} exceeds 15 characters, so Bastille falls back to "
                    "numbered epairs e0a_bastilleN (docs/freebsd.md#interface-name-length): interface names stop "
                    "being predictable",
                    "shorten the jail name to at most 11 characters",
                    severity=Severity.WARNING,
                    rule="epair-name",
                )
            )
    return out


def check_host(host: Host) -> list[Problem]:
    # Interface names, vm_dir and the release are validated by the Host model (inventory.py
    # reports them with their rule and fix): a value that fails never reaches a template.
    out: list[Problem] = []
    if host.pool.prefixlen > 24:
        out.append(
            Problem(
                (_host_loc(host, "warden_pool"),),
                f"warden_pool={host.pool} is smaller than one /24",
                "use a /16 to /24, e.g. 10.0.0.0/16",
                rule="pool",
            )
        )
    return out


# -- the fleet ---------------------------------------------------------------------------


def _overlaps(items: Iterable[tuple[IPv4Network, Location, str, bool]]) -> list[Problem]:
    """Sweep networks sorted by start; report each one that overlaps an earlier one.

    The last flag says whether the network is an agent's.  Two host-level networks may
    overlap (every host keeps its VM uplink behind its own NAT); anything against an
    agent's /24 may not.  Two running maxima keep this one pass: O(n log n).
    """
    out: list[Problem] = []
    ordered = sorted(items, key=lambda t: (int(t[0].network_address), -t[0].prefixlen))
    reach_any: tuple[int, IPv4Network, Location, str] | None = None
    reach_agent: tuple[int, IPv4Network, Location, str] | None = None
    for net, loc, what, is_agent in ordered:
        start, end = int(net.network_address), int(net.broadcast_address)
        against = reach_any if is_agent else reach_agent
        if against is not None and start <= against[0]:
            _, rnet, rloc, rwhat = against
            out.append(
                Problem(
                    (loc, rloc),
                    f"{what} {net} overlaps {rwhat} {rnet}",
                    "give the agent a free /24 (omit --subnet to have one chosen)",
                    rule="subnet-overlap",
                )
            )
        if reach_any is None or end > reach_any[0]:
            reach_any = (end, net, loc, what)
        if is_agent and (reach_agent is None or end > reach_agent[0]):
            reach_agent = (end, net, loc, what)
    return out


def check_uplinks(fleet: Fleet) -> list[Problem]:
    """A host with agents (or bhyve guests) to NAT must name its uplink.

    The PF anchor file is parsed on its own (docs/freebsd.md#pf-anchors), so it needs the uplink's
    name for its own `ext_if` macro.  The inventory may omit `warden_ext_if` for a host
    with nothing to NAT; we never guess it and never render a placeholder.  Rendering
    refuses the same fleet (render.py), so `invoke check` and site.yml's validation stop
    before `invoke render` would.
    """
    out: list[Problem] = []
    for host in fleet.hosts:
        if host.ext_if is None and fleet.agents_on(host.name):
            out.append(
                Problem(
                    (_host_loc(host, "warden_ext_if"),),
                    f"host {host.name} has agents to NAT but no warden_ext_if: the PF anchor "
                    "(/etc/pf.warden.conf) cannot name the interface to NAT out of",
                    f"set warden_ext_if on host {host.name} in {host.source} to its uplink interface "
                    "(the one its default route uses, e.g. vtnet0)",
                    rule="ext-if-missing",
                )
            )
    return out


def check_guest_seeds(fleet: Fleet) -> list[Problem]:
    """A host with bhyve guests needs the image they are created from and the operator's
    key their seed carries (provision/guestseed.py, docs/freebsd.md#vm-bhyve)."""
    from .guestseed import guest_problems

    with_guests = {a.host for a in fleet.agents if a.placement == "bhyve"}
    return guest_problems(fleet.hosts, with_guests)


def check_fleet(fleet: Fleet) -> list[Problem]:
    hosts = {h.name: h for h in fleet.hosts}
    out: list[Problem] = check_uplinks(fleet) + check_guest_seeds(fleet)
    for host in fleet.hosts:
        out.extend(check_host(host))
    for agent in fleet.agents:
        out.extend(check_agent(agent, hosts))

    # Duplicate names (two files claiming one AGENT_NAME).
    by_name: dict[str, list[Agent]] = defaultdict(list)
    for a in fleet.agents:
        by_name[a.name].append(a)
    for name, group in by_name.items():
        if len(group) > 1:
            out.append(
                Problem(
                    tuple(_loc(a, "AGENT_NAME") for a in group),
                    f"AGENT_NAME={name} is used by {len(group)} agents",
                    "give each agent its own name",
                    rule="duplicate-name",
                )
            )

    # Networks: agents against each other, hosts' own networks and the VM uplinks.
    nets: list[tuple[IPv4Network, Location, str, bool]] = [
        (a.subnet, _loc(a, "AGENT_SUBNET_BASE"), f"agent {a.name}'s subnet", True) for a in fleet.agents
    ]
    for h in fleet.hosts:
        nets.extend(
            (n, _host_loc(h, "warden_host_networks"), f"host {h.name}'s own network", False) for n in h.host_networks
        )
        nets.append((h.vm_uplink, _host_loc(h, "warden_vm_uplink"), f"host {h.name}'s VM uplink", False))
    out.extend(_overlaps(nets))

    # Jails: a shared LLM jail is the same name AND the same IP on one machine.
    jail_owner: dict[tuple[str, str], tuple[Agent, str, IPv4Address]] = {}
    ip_users: dict[IPv4Address, list[tuple[Agent, str, str]]] = defaultdict(list)
    for a in fleet.agents:
        where = placement_host(a)
        ip_users[a.gateway].append((a, "WARDEN_GATEWAY", "gateway"))
        for jail in a.jails:
            ip_key, name_key = ROLE_KEYS[jail.role]
            ip_users[jail.ip].append((a, ip_key, jail.name))
            prior = jail_owner.get((where, jail.name))
            if prior is None:
                jail_owner[(where, jail.name)] = (a, name_key, jail.ip)
            elif prior[2] != jail.ip or jail.role not in LLM_ROLES:
                out.append(
                    Problem(
                        (_loc(a, name_key), _loc(prior[0], prior[1])),
                        f"jail {jail.name} on {where} is claimed by agents {prior[0].name} ({prior[2]}) and "
                        f"{a.name} ({jail.ip})" + ("" if jail.role in LLM_ROLES else "; only LLM jails can be shared"),
                        f"to share an LLM jail use one name and IP in both; else set {name_key} in "
                        f"{a.source} to another name of at most 11 letters and digits",
                        rule="duplicate-jail",
                    )
                )
    for ip, users in ip_users.items():
        if len({id(u[0]) for u in users}) < 2:
            continue  # within one agent: _check_network reports it with both keys
        jail_names = {u[2] for u in users}
        if (
            len(jail_names) == 1
            and all(k not in ("WARDEN_GATEWAY", "WARDEN_VM_IP") for _, k, _ in users)
            and len({placement_host(u[0]) for u in users}) == 1
        ):
            continue  # deliberate sharing (README.md#the-agent-env)
        out.append(
            Problem(
                tuple(_loc(a, k) for a, k, _ in users),
                f"{ip} is used {len(users)} times: " + ", ".join(f"{a.name} {k}" for a, k, _ in users),
                "every address in the fleet must be unique unless it is one shared LLM jail",
                rule="duplicate-ip",
            )
        )

    # LLM jails outside the agent's own subnet must be someone's shared jail on that machine.
    for a in fleet.agents:
        for jail in a.jails:
            if jail.role in LLM_ROLES and jail.ip not in a.subnet:
                owner = jail_owner.get((placement_host(a), jail.name))
                owned = owner is not None and owner[0] is not a and jail.ip in owner[0].subnet
                if not owned:
                    ip_key, name_key = ROLE_KEYS[jail.role]
                    out.append(
                        Problem(
                            (_loc(a, ip_key),),
                            f"{ip_key}={jail.ip} is outside {a.subnet} and no agent on {placement_host(a)} "
                            f"owns a jail {jail.name} at that address",
                            f"use {a.subnet.network_address + SLOT[jail.role]}, or name the shared jail and IP "
                            "exactly as the owning agent does",
                            rule="ip-outside",
                        )
                    )

    # Per machine: ports, data directories; per fleet: MACs.
    per_host: dict[tuple[str, str, object], list[tuple[Agent, str]]] = defaultdict(list)
    for a in fleet.agents:
        where = placement_host(a)
        per_host[(where, "CONTROLPLANE_API_PORT", a.api_port)].append((a, "CONTROLPLANE_API_PORT"))
        per_host[(where, "AGENT_DIR", a.directory)].append((a, "AGENT_DIR"))
        if a.vm_ip is not None:
            # The VM uplink is per host: each host's guests sit on that host's own vm-bhyve
            # switch behind its own NAT (docs/design.md#placement), so only one host's guests
            # must differ; the allocator (registry.next_free_vm_ip) counts the same way.
            per_host[(a.host, "WARDEN_VM_IP", a.vm_ip)].append((a, "WARDEN_VM_IP"))
    fixes = {
        "CONTROLPLANE_API_PORT": "give each agent on the host its own port (3100, 3101, …)",
        "AGENT_DIR": "give each agent its own directory, e.g. /home/<agent>/clawdie",
        "WARDEN_VM_IP": "give each bhyve agent on the host its own uplink address (from .10 up)",
    }
    for (where, key, value), holders in per_host.items():
        if len(holders) > 1:
            fix = fixes[key]
            out.append(
                Problem(
                    tuple(_loc(a, k) for a, k in holders),
                    f"{key}={value} is used by {len(holders)} agents on {where}",
                    fix,
                    rule=f"duplicate-{key.lower()}",
                )
            )
    macs: dict[str, list[tuple[Agent, str]]] = defaultdict(list)
    seen_jails: set[tuple[str, str]] = set()
    for a in fleet.agents:
        for jail in a.jails:
            where = placement_host(a)
            if (where, jail.name) in seen_jails:
                continue
            seen_jails.add((where, jail.name))
            macs[jail_mac(where, jail.name)].append((a, ROLE_KEYS[jail.role][1]))
    # The bridge's pinned MAC (models.bridge_mac) is a neighbour of every jail on the host.
    for h in fleet.hosts:
        for jail_claimant in macs.get(bridge_mac(h.name, h.bridge), []):
            out.append(
                Problem(
                    (_loc(jail_claimant[0], jail_claimant[1]), _host_loc(h, "warden_bridge")),
                    f"derived MAC {bridge_mac(h.name, h.bridge)} of {h.name}'s bridge collides with a jail's",
                    "rename the jail",
                    rule="duplicate-mac",
                )
            )
    for mac, claimants in macs.items():
        if len(claimants) > 1:
            out.append(
                Problem(
                    tuple(_loc(a, k) for a, k in claimants),
                    f"derived MAC {mac} collides",
                    "rename one of the jails",
                    rule="duplicate-mac",
                )
            )
    return out


def check_requires(agents: list[Agent]) -> list[Problem]:
    """AGENT_REQUIRES names agents on the same machine, without a cycle.

    rcorder(8) orders scripts on one machine only, and reports a loop at boot instead
    of starting the services in it (docs/freebsd.md#rcd-scripts) — refuse the loop here, naming it.
    """
    out: list[Problem] = []
    by_place: dict[tuple[str, str], Agent] = {(placement_host(a), a.name): a for a in agents}
    graph: dict[str, list[str]] = {}
    for a in agents:
        where = placement_host(a)
        deps = []
        for dep in a.requires:
            if dep == a.name:
                out.append(
                    Problem(
                        (_loc(a, "AGENT_REQUIRES"),),
                        f"AGENT_REQUIRES lists {a.name} itself",
                        f"remove {dep} from AGENT_REQUIRES",
                        rule="requires-cycle",
                    )
                )
            elif (where, dep) not in by_place:
                out.append(
                    Problem(
                        (_loc(a, "AGENT_REQUIRES"),),
                        f"AGENT_REQUIRES={dep}: no agent {dep} runs on {where}; rc.d ordering is per machine",
                        f"remove {dep} or place both agents on {where}",
                        rule="requires-unknown",
                    )
                )
            else:
                deps.append(f"{where}/{dep}")
        graph[f"{where}/{a.name}"] = deps
    # Iterative DFS with colours: each cycle is reported once, from its first node in sorted order.
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = []
        while stack:
            node, idx = stack.pop()
            if idx == 0:
                state[node] = 1
                path.append(node)
            children = graph.get(node, [])
            if idx < len(children):
                stack.append((node, idx + 1))
                child = children[idx]
                if state.get(child) == 1:
                    cycle = [*path[path.index(child) :], child]
                    names = [c.split("/", 1)[1] for c in cycle]
                    members = [by_place[tuple(c.split("/", 1))] for c in cycle[:-1]]  # type: ignore[index]
                    out.append(
                        Problem(
                            tuple(_loc(m, "AGENT_REQUIRES") for m in members),
                            "AGENT_REQUIRES forms a cycle: " + " → ".join(names),
                            "remove one of these dependencies",
                            rule="requires-cycle",
                        )
                    )
                elif not state.get(child):
                    stack.append((child, 0))
            else:
                state[node] = 2
                path.pop()
    return out


def run_checks(fleet: Fleet) -> list[Problem]:
    """All problems: loading ones first, then rule violations, in file order."""
    problems = list(fleet.problems) + check_fleet(fleet) + check_requires(fleet.agents)
    return sorted(problems, key=lambda p: (str(p.locations[0].file), p.locations[0].line or 0, p.rule))
