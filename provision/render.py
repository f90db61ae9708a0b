"""Render the fleet into `build/<host>/`, a tree that mirrors each machine's filesystem.

One Jinja2 template per artifact under `templates/`, laid out by target path; every
value is computed here and passed in plain, so templates hold no decisions.  Output is
deterministic (sorted everywhere, no timestamps): rendering twice gives the same bytes,
and a change of output is a visible diff in the golden files (`tests/golden/`).

The pipeline, all pure until the last step:

    layouts(fleet)          one HostLayout per inventory host and per bhyve guest
    render_layout(layout)   the manifest and the text of every file for one machine
    render_fleet(fleet, d)  checks what rendering needs, then writes d/<machine>/ (only what changed)

`render_problems` lists what a fleet must fix before it can be rendered (today: a host
with agents to NAT but no `warden_ext_if`); `render_fleet` refuses such a fleet before
writing anything; `invoke render` (cli.py) prints the tree it wrote.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import shutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .envfile import EnvFile
from .escape import UnsafeValue, comment, register
from .guestseed import image_name, image_source, jump_user, network_arg, ssh_key, user_data
from .isolation import SYSCTLS, Policy, build_policy, guest_tap, sysctl_lines
from .limits import host_rules
from .manifest import MANIFEST_RELPATH, FileEntry, GuestSpec, JailSpec, Manifest, RcEdit
from .models import CONTROLLER_ONLY, Agent, Fleet, Host, bridge_mac, jail_mac
from .probe import PIDFILE_DIR
from .probe import pidfile as supervisor_pidfile
from .problems import Location, Problem
from .rcconf import Set, alias_edits

if TYPE_CHECKING:
    pass

# Package data (pyproject.toml [tool.setuptools.package-data]): found the same way from a
# clone and from an installed wheel.  Jinja's FileSystemLoader needs a directory on disk,
# which a wheel installed by pip is (never a zip).
TEMPLATES = Path(str(resources.files("provision") / "templates"))
# Two comment lines at the top of every file ("# " + HEADER through escape.comment, which
# starts each line of it with "# "): who manages it, from what.
HEADER = "Managed by warden-provision: local edits are overwritten by the next apply.\nRendered from {origin}."
PF_ANCHOR = "warden"
PF_ANCHOR_FILE = "/etc/pf.warden.conf"
PF_FALLBACK_FILE = "/etc/pf.warden-fallback.conf"
VM_SWITCH = "warden"  # vm-bhyve manual switch bound to the host's bridge (docs/freebsd.md#vm-bhyve)
# The guest's NIC on that switch: vm-bhyve's network-config names it eth0 (`set-name`, matched by
# the MAC vm create wrote) and nuageinit renames it so (docs/freebsd.md#vm-bhyve).
GUEST_EXT_IF = "eth0"
GUEST_SEED_DIR = "/usr/local/etc/warden/guests"  # our user-data per guest, root's (docs/freebsd.md#vm-bhyve)
# Our guests start from this rc.d script, after pf and the bridge sysctls, never from
# vm_list (rc.d/vm runs BEFORE pf): docs/freebsd.md#boot-order.  No agent is named with `_`.
GUESTS_RC = "warden_guests"
GUESTS_RC_REQUIRE = ("pf", "sysctl_lastload", "vm")
GUEST_BRIDGE = "warden0"  # a guest is a host of its own: its own warden0 (docs/design.md#placement)
GUEST_BRIDGE_CLONE = "bridge0"
RESTART_DELAY = 5  # daemon(8) -R: seconds before a crashed agent is restarted (docs/freebsd.md#supervision-with-daemon)
# seconds the wrapper waits for the agent after SIGTERM (rc.subr waits forever, docs/freebsd.md#rcd-scripts)
STOP_TIMEOUT = 30
# What root writes or runs for an agent lives in root-owned directories, never below the
# agent's home (docs/security.md): the wrapper daemon(8) starts, and the log it opens as root.
WRAPPER_DIR = "/usr/local/libexec/warden"
LOG_DIR = "/var/log/warden"
NEWSYSLOG_FILE = "/usr/local/etc/newsyslog.conf.d/warden.conf"
LOG_KEEP = 7  # newsyslog.conf(5) count: rotated logs kept per agent
LOG_SIZE_KB = 10240  # newsyslog.conf(5) size: rotate an agent's log past 10 MB


class RenderError(Exception):
    """The fleet cannot be rendered; `problems` says why and how to fix each one."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Pass:
    """A quick pass rule that pierces inter-agent isolation, and why it exists."""

    src: str
    dst: str
    why: str


@dataclass
class HostLayout:
    """Everything one machine (an inventory host or a bhyve guest) carries, before templating."""

    name: str
    ext_if: str | None
    bridge: str
    bridge_clone: str
    release: str
    inventory: str  # the inventory file's name, for headers
    agents: list[Agent]  # agents whose service and jails run on this machine
    links: tuple[tuple[str, str], ...] = ()
    nameservers: tuple[str, ...] = ()  # the jails' resolvers, `bastille create -n`; () copies the host's
    vm_dir: str = "/vm"
    # Hosts carrying bhyve guests: the guests and the uplink network they sit on.
    guests: list[Agent] = field(default_factory=list)
    vm_uplink: IPv4Network | None = None
    # Guests: the physical host, the uplink network, the host's and this guest's address on it.
    parent: str | None = None
    uplink_gateway: IPv4Address | None = None
    uplink_ip: IPv4Address | None = None
    uplink_gateway_mac: str = ""  # the host's bridge MAC, which it pins (models.bridge_mac)
    peers: list[Agent] = field(default_factory=list)  # the other guests on the same uplink
    # The management LAN jails must not reach, and the host ports they may (isolation.py).
    host_networks: tuple[IPv4Network, ...] = ()
    jail_host_ports: tuple[str, ...] = ()
    # sshd's ports, for the fallback ruleset: 22, the port Ansible uses, warden_ssh_ports.
    ssh_ports: tuple[int, ...] = (22,)
    # Hosts carrying guests: the image, the operator's key and the guests' resolvers (guestseed.py).
    guest_image: str = ""
    guest_key: str = ""
    guest_nameservers: tuple[str, ...] = ()
    # The user that opens the SSH connections to the guests (guestseed.jump_user), besides root.
    guest_jump_user: str | None = None


@dataclass
class RenderedHost:
    name: str
    directory: Path
    manifest: Manifest
    files: list[Path]


# -- layouts ---------------------------------------------------------------------------


def layouts(fleet: Fleet) -> list[HostLayout]:
    """One layout per inventory host, plus one per bhyve guest (a host of its own, docs/design.md#placement)."""
    out: list[HostLayout] = []
    for host in sorted(fleet.hosts, key=lambda h: h.name):
        mine = sorted(fleet.agents_on(host.name), key=lambda a: a.name)
        guests = [a for a in mine if a.placement == "bhyve"]
        out.append(
            HostLayout(
                name=host.name,
                ext_if=host.ext_if,
                bridge=host.bridge,
                bridge_clone=host.bridge_clone,
                release=host.release,
                nameservers=tuple(str(n) for n in host.jail_nameservers),
                inventory=host.source.name,
                agents=[a for a in mine if a.placement == "host"],
                links=host.agent_links,
                vm_dir=host.vm_dir,
                guests=guests,
                vm_uplink=host.vm_uplink if guests else None,
                host_networks=host.host_networks,
                jail_host_ports=host.jail_host_ports,
                ssh_ports=ssh_ports(host),
                guest_jump_user=jump_user(host) if guests else None,
                **_guest_sources(host) if guests else {},
            )
        )
        for agent in guests:
            out.append(
                HostLayout(
                    name=agent.vm_name,
                    ext_if=GUEST_EXT_IF,
                    bridge=GUEST_BRIDGE,
                    bridge_clone=GUEST_BRIDGE_CLONE,
                    release=host.release,
                    nameservers=tuple(str(n) for n in host.jail_nameservers),
                    inventory=host.source.name,
                    agents=[agent],
                    links=host.agent_links,
                    vm_uplink=host.vm_uplink,
                    parent=host.name,
                    # docs/freebsd.md#vm-bhyve: the host owns .1 of the uplink on its warden0 (the switch).
                    uplink_gateway=host.vm_uplink.network_address + 1,
                    uplink_ip=agent.vm_ip,
                    uplink_gateway_mac=bridge_mac(host.name, host.bridge),
                    peers=[g for g in guests if g is not agent],
                    host_networks=host.host_networks,
                    jail_host_ports=host.jail_host_ports,
                    ssh_ports=GUEST_SSH_PORTS,
                )
            )
    return out


def ssh_ports(host: Host) -> tuple[int, ...]:
    """Where sshd listens on HOST as far as the inventory knows: 22, the port Ansible
    connects to (ansible_port), and warden_ssh_ports; the PF role checks the live sshd."""
    v = host.ansible_vars
    ports = {22, *host.ssh_ports}
    given = v.get("ansible_port", v.get("ansible_ssh_port"))
    if given is not None and str(given).isdigit():
        ports.add(int(str(given)))
    return tuple(sorted(p for p in ports if 0 < p < 65536))


# A guest's sshd listens on 22: its seed (provision/guestseed.py) leaves sshd_config as the
# image has it, and playbooks/guests.yml reaches every guest on its uplink address, port 22.
GUEST_SSH_PORTS = (22,)


def _guest_sources(host: Host) -> dict[str, Any]:
    """Image and key for a host's guests; "" where render_problems reports why there is none."""
    image, key = image_source(host), ssh_key(host)
    return {
        "guest_image": image if isinstance(image, str) else "",
        "guest_key": key if isinstance(key, str) else "",
        "guest_nameservers": tuple(str(n) for n in host.guest_nameservers),
    }


def render_problems(fleet: Fleet) -> list[Problem]:
    """What must be fixed before rendering (the fleet checks `check_uplinks` and
    `check_guest_seeds`, with the fix).

    A subset of `invoke check`: the rules without which no correct file can be written.
    """
    from .checks import check_guest_seeds, check_uplinks

    return check_uplinks(fleet) + check_guest_seeds(fleet)


# -- values for the templates ----------------------------------------------------------


def _header(origin: str) -> str:
    return HEADER.format(origin=origin)


def _env_origin(agent: Agent) -> str:
    """`agents/atlas/.env`: the registry-relative path (no absolute path: output is portable)."""
    return "/".join(agent.source.parts[-3:])


def _agent_origin(agent: Agent, layout: HostLayout) -> str:
    return f"{_env_origin(agent)} (agent {agent.name}) and {layout.inventory} (host {layout.name})"


def _host_origin(layout: HostLayout) -> str:
    if layout.parent is not None:
        return f"{layout.inventory} (host {layout.parent}, bhyve guest {layout.name})"
    return f"{layout.inventory} (host {layout.name})"


def _shipped_env(source: Path) -> str:
    """The agent's .env as its host gets it: every line as written, except the keys the tool
    uses on the controller only (models.CONTROLLER_ONLY: SOUL_REPO and the credentials in
    it), each replaced by a comment line (docs/security.md#what-reaches-the-host)."""
    env = EnvFile.load(source)
    out = []
    for line in env.lines:
        if line.key in CONTROLLER_ONLY:
            lead = line.text[: len(line.text) - len(line.text.lstrip("\r\n"))]
            out.append(f"{lead}# {line.key}: kept on the controller (warden-provision docs/security.md){env.newline}")
        else:
            out.append(line.text)
    return "".join(out)


def _net_of(agent: Agent) -> str:
    """How an agent's traffic looks on this machine's bridge: its /24, or a guest's uplink /32."""
    if agent.placement == "bhyve" and agent.vm_ip is not None:
        # the guest NATs its /24 behind its uplink address (docs/freebsd.md#nat-and-forwarding)
        return f"{agent.vm_ip}/32"
    return str(agent.subnet)


def _gateways(layout: HostLayout) -> list[str]:
    """warden0's addresses, sorted by network: the first is ifconfig_warden0, the rest aliases."""
    nets: list[tuple[IPv4Network, IPv4Address]] = [(a.subnet, a.gateway) for a in layout.agents]
    if layout.guests and layout.vm_uplink is not None:
        nets.append((layout.vm_uplink, layout.vm_uplink.network_address + 1))
    return [f"{gw}/{net.prefixlen}" for net, gw in sorted(nets)]


def _rc_conf(layout: HostLayout) -> tuple[list[RcEdit], list[str]]:
    """Desired rc.conf edits and the numbered-variable prefixes we own on this machine."""
    bridge, clone = layout.bridge, layout.bridge_clone
    cidrs = _gateways(layout)
    edits: list[RcEdit] = [
        # docs/freebsd.md#the-warden0-bridge, docs/freebsd.md#sysrc:
        # the clone joins the operator's list (sysrc `+=`, never a
        # clobbering set), is renamed, and is configured under its new name.  The clone is
        # bridge0 unless the inventory says `warden_bridge_clone` (a host that already
        # clones a bridge0 for something else names a free bridgeN there).
        RcEdit("append", "cloned_interfaces", clone),
        RcEdit("set", f"ifconfig_{clone}_name", bridge),
        RcEdit("set", f"ifconfig_{bridge}", f"inet {cidrs[0]} up" if cidrs else "up"),
        # The bridge's MAC, pinned so that the jails' and guests' static ARP entries for
        # their gateway can name it: network.subr's ifconfig_up runs `ifconfig BRIDGE ether
        # MAC alias` for an `ether` item of ifconfig_<if>_aliases (ifalias_af_common), after
        # ifconfig_<if> and before the inet aliases (docs/freebsd.md#the-warden0-bridge).
        RcEdit("set", f"ifconfig_{bridge}_aliases", f"ether {bridge_mac(layout.name, bridge)}"),
    ]
    # docs/freebsd.md#interface-aliases: aliases numbered from 0 without a gap, never an empty aliasN.
    for edit in alias_edits(bridge, cidrs[1:], {}):
        assert isinstance(edit, Set)
        edits.append(RcEdit("set", edit.name, edit.value))
    if layout.parent is not None and layout.vm_uplink is not None:
        # The guest's NIC on the host's switch, and the host as its default router (docs/freebsd.md#vm-bhyve).
        edits.append(
            RcEdit("set", f"ifconfig_{layout.ext_if}", f"inet {layout.uplink_ip}/{layout.vm_uplink.prefixlen}")
        )
        edits.append(RcEdit("set", "defaultrouter", str(layout.uplink_gateway)))
        # A guest runs rc.d/static_arp (it is no jail): its default router is a permanent
        # entry, which another guest's ARP cannot move (docs/isolation.md "Layer 2").
        value = f"{layout.uplink_gateway} {layout.uplink_gateway_mac}"
        if not STATIC_ARP_RE.fullmatch(value):
            raise ValueError(f"refusing static ARP pair {value!r} for the uplink gateway")
        edits += [
            RcEdit("append", "static_arp_pairs", UPLINK_ARP_PAIR),
            RcEdit("set", f"static_arp_{UPLINK_ARP_PAIR}", value),
        ]
    edits += [
        RcEdit("set", "gateway_enable", "YES"),  # docs/freebsd.md#nat-and-forwarding: forwarding for NAT
        RcEdit("set", "pf_enable", "YES"),  # docs/freebsd.md#loading-pf
        # When /etc/pf.conf fails to load at start, rc.d/pf loads fallback rules only
        # if pf_fallback_rules_enable is set.  Which rules: pf_fallback_rules_file if it
        # exists, else pf_fallback_rules, default "block drop log all", which locks SSH out
        # (rc.d/pf pf_fallback() and rc.conf(5); docs/freebsd.md#loading-pf).  So we name our
        # own file, which keeps SSH open.
        RcEdit("set", "pf_fallback_rules_enable", "YES"),
        RcEdit("set", "pf_fallback_rules_file", PF_FALLBACK_FILE),
    ]
    if any(a.jails for a in layout.agents):
        # Bastille's rc.d script starts the jails at boot only with bastille_enable=YES
        # (docs/freebsd.md#bastille-jail-lifecycle).
        edits.append(RcEdit("set", "bastille_enable", "YES"))
    if layout.guests:
        # vm-bhyve setup: docs/freebsd.md#vm-bhyve
        edits += [RcEdit("set", "vm_enable", "YES"), RcEdit("set", "vm_dir", layout.vm_dir)]
        # Not vm_list: rc.d/vm would start them before pf filters warden0; rc.d/warden_guests
        # starts the guests listed here after it (docs/freebsd.md#boot-order).
        edits.append(RcEdit("set", f"{GUESTS_RC}_enable", "YES"))
        edits += [RcEdit("append", f"{GUESTS_RC}_list", a.vm_name) for a in layout.guests]
    edits += [RcEdit("set", f"{a.name}_enable", "YES") for a in layout.agents]  # rcvar: docs/freebsd.md#rcd-scripts
    # rc.d/static_arp (REQUIRE: netif, so after warden0 has its addresses) runs
    # `arp -S $static_arp_<pair>` for each pair: each jail's address is pinned to its MAC
    # in the host's ARP table at boot (docs/isolation.md "Layer 2 on the shared bridge").
    for m in policy_of(layout).members:
        if m.mac:
            value = f"{m.address} {m.mac}"
            if not STATIC_ARP_RE.fullmatch(value):
                raise ValueError(f"refusing static ARP pair {value!r} for {m.jail}")
            edits += [RcEdit("append", "static_arp_pairs", m.pair), RcEdit("set", f"static_arp_{m.pair}", value)]
    return edits, [f"ifconfig_{bridge}_alias"]


# A guest's static_arp pair for its default router (no jail is named so: jail names end in a role).
UPLINK_ARP_PAIR = "warden_uplink"
# `arp -S ADDRESS MAC`: a dotted quad and six two-digit hex octets (arp.c set: ether_aton).
STATIC_ARP_RE = re.compile(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3} [0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def _isolated(layout: HostLayout) -> list[str]:
    """The networks kept apart on the bridge: every agent /24 here, and the guests' uplink."""
    nets = sorted(a.subnet for a in layout.agents)
    if layout.guests and layout.vm_uplink is not None:
        nets = sorted([*nets, layout.vm_uplink])
    return [str(n) for n in nets]


def policy_of(layout: HostLayout) -> Policy:
    """The isolation policy of one machine (isolation.py): who may reach what there."""
    return build_policy(
        host=layout.name,
        bridge=layout.bridge,
        ext_if=layout.ext_if or "",
        agents=layout.agents,
        links=layout.links if layout.parent is None else (),
        guests=layout.guests,
        uplink=layout.vm_uplink if layout.guests else None,
        host_networks=layout.host_networks,
        jail_host_ports=layout.jail_host_ports,
        guest_jump_user=layout.guest_jump_user,
    )


def _peer_links(layout: HostLayout) -> list[Pass]:
    """On a guest: other guests on the uplink that the inventory links to this guest's agent."""
    if layout.parent is None:
        return []
    me = layout.agents[0].name
    linked = {b if a == me else a for a, b in layout.links if me in (a, b)}
    return [
        Pass(f"{p.vm_ip}", "any", f"warden_agent_links: {p.name} -> {me}")
        for p in layout.peers
        if p.name in linked and p.vm_ip is not None
    ]


def jail_specs(layout: HostLayout) -> list[JailSpec]:
    """The jails LAYOUT renders (reach.py models their own ARP tables from them)."""
    return _jails(layout)


def _jails(layout: HostLayout) -> list[JailSpec]:
    """Jail specs for this machine; a shared LLM jail once, owned by the agent whose /24 holds it."""
    users: dict[str, list[str]] = {}
    owner: dict[str, tuple[Agent, Any]] = {}
    for agent in layout.agents:
        for jail in agent.jails:
            users.setdefault(jail.name, []).append(agent.name)
            if jail.name not in owner or jail.ip in agent.subnet:
                owner[jail.name] = (agent, jail)
    specs = []
    gateway_mac = bridge_mac(layout.name, layout.bridge)
    for name in sorted(owner):
        agent, jail = owner[name]
        cidr = f"{jail.ip}/{agent.subnet.prefixlen}"
        # The jail's own permanent ARP entries (docs/isolation.md "Layer 2"): its gateway
        # and every other jail on its /24, the only neighbours it talks to directly.
        arp = [f"{agent.gateway} {gateway_mac}"]
        arp += [
            f"{owner[n][1].ip} {jail_mac(layout.name, n)}"
            for n in sorted(owner, key=lambda n: owner[n][1].ip)
            if n != name and owner[n][1].ip in agent.subnet
        ]
        thick = jail.role == "db"  # docs/freebsd.md#clawdie-conventions: db is a thick jail (-T)
        # docs/freebsd.md#bastille-create: options before NAME RELEASE IP INTERFACE; -B bridged VNET on an
        # existing bridge, -M static MAC, -g the agent's gateway (a VNET jail without a
        # default route is a provisioning defect, docs/freebsd.md#clawdie-conventions).
        args = ["create", "-B", *(["-T"] if thick else []), "-M", "-g", str(agent.gateway)]
        if layout.nameservers:
            # The base template copies the host's resolv.conf, whose 127.0.0.1 (local_unbound)
            # is the jail's own loopback in a VNET jail: -n replaces it (docs/freebsd.md#dns-in-vnet-jails).
            args += ["-n", ",".join(layout.nameservers)]
        args += [name, layout.release, cidr, layout.bridge]
        specs.append(
            JailSpec(
                name=name,
                role=jail.role,
                ip=str(jail.ip),
                gateway=str(agent.gateway),
                bridge=layout.bridge,
                mac=jail_mac(layout.name, name),
                release=layout.release,
                # docs/freebsd.md#clawdie-conventions: home.arpa, never .local
                hostname=f"{name}.{agent.name}.home.arpa",
                create_args=args,
                template=f"warden/{jail.role}",
                agents=sorted(users[name]),
                thick=thick,
                arp=arp,
            )
        )
    return specs


# -- one machine -----------------------------------------------------------------------

Files = dict[str, tuple[str, FileEntry]]


def render_layout(layout: HostLayout, jenv: Any) -> tuple[Manifest, Files]:
    """The manifest and every file (host path -> text, entry) for one machine."""
    files: Files = {}

    def add(entry: FileEntry, template: str, **values: Any) -> None:
        files[entry.path] = (jenv.get_template(template).render(**values), entry)

    for agent in layout.agents:
        header = _header(_agent_origin(agent, layout))
        rc_d = f"/usr/local/etc/rc.d/{agent.name}"
        wrapper = f"{WRAPPER_DIR}/run-{agent.name}.sh"
        logdir = f"{LOG_DIR}/{agent.name}"
        logfile = f"{logdir}/{agent.name}.log"
        # the probe reads this pidfile (provision/probe.py), as rc.subr's status does
        pidfile, child_pidfile = supervisor_pidfile(agent.name), f"{PIDFILE_DIR}/{agent.name}.child.pid"
        add(
            FileEntry(rc_d, "0755", agent=agent.name, purpose="rc.d service: daemon(8) supervising the wrapper"),
            "usr/local/etc/rc.d/agent.j2",
            header=header,
            name=agent.name,
            rcvar=agent.rcvar,
            # An agent with jails starts after rc.d/bastille has started them.
            requires=[*agent.requires, *(["bastille"] if agent.jails else [])],
            desc=f"{agent.assistant_name}, AI agent {agent.name}",
            directory=agent.directory,
            # docs/freebsd.md#rcsubr-knobs: _env is split on whitespace; locale names have no spaces.
            env=f"LANG={agent.system_locale} LC_ALL={agent.system_locale}",
            user=agent.user,
            restart_delay=RESTART_DELAY,
            pidfile=pidfile,
            child_pidfile=child_pidfile,
            logdir=logdir,
            logfile=logfile,
            # daemon(8) argv after the program name (docs/freebsd.md#supervision-with-daemon), one word per item.
            daemon_args=[
                *("-r", "-R", str(RESTART_DELAY), "-P", pidfile, "-p", child_pidfile),
                *("-o", logfile, "-H", "-t", agent.name, "-u", agent.user, wrapper),
            ],
        )
        add(
            FileEntry(
                wrapper,
                "0755",
                agent=agent.name,
                purpose="daemon(8) child: the agent's tmux session, in the foreground (root's file, run as the agent)",
            ),
            "usr/local/libexec/warden/run-agent.sh.j2",
            header=header,
            name=agent.name,
            user=agent.user,
            session=agent.tmux_session,
            directory=agent.directory,
            command=agent.command,
            locale=agent.system_locale,
            stop_timeout=STOP_TIMEOUT,
        )
        env_path = f"{agent.directory}/.env"
        text = _shipped_env(agent.source) if agent.source.is_file() else ""
        origin = f"{_env_origin(agent)}, copied for agent {agent.name} without controller-only keys: edit it there"
        files[env_path] = (
            f"# {comment(_header(origin))}\n{text}",
            FileEntry(
                env_path,
                "0600",
                owner=agent.user,
                group=agent.user,
                agent=agent.name,
                purpose="the agent's .env (read by the agent, never by a shell)",
                secret=True,
            ),
        )

    host_header = _header(_host_origin(layout))
    if layout.agents:
        add(
            FileEntry(NEWSYSLOG_FILE, "0644", purpose="newsyslog: rotation of the agents' daemon(8) logs"),
            "usr/local/etc/newsyslog.conf.d/warden.conf.j2",
            header=host_header,
            logs=[
                {
                    "path": f"{LOG_DIR}/{a.name}/{a.name}.log",
                    "owner": f"root:{a.user}",
                    "mode": "640",
                    "count": LOG_KEEP,
                    "size": LOG_SIZE_KB,
                    "pidfile": supervisor_pidfile(a.name),
                }
                for a in layout.agents
            ],
        )
    nat_nets = _isolated(layout)
    policy = policy_of(layout)
    add(
        FileEntry(PF_ANCHOR_FILE, "0644", purpose="PF anchor: NAT and inter-agent isolation"),
        "etc/pf.warden.conf.j2",
        header=host_header,
        anchor=PF_ANCHOR,
        anchor_file=PF_ANCHOR_FILE,
        ext_if=layout.ext_if or "",
        bridge=layout.bridge,
        nat_nets=nat_nets,
        uplink=str(layout.vm_uplink) if layout.guests and layout.vm_uplink is not None else "",
        isolated=nat_nets,
        policy=policy,
        guest_of=layout.parent or "",
        guest_uplink=str(layout.vm_uplink) if layout.parent is not None else "",
        guest_gateway=str(layout.uplink_gateway or ""),
        peer_links=_peer_links(layout),
    )
    add(
        FileEntry(PF_FALLBACK_FILE, "0644", purpose="PF fallback ruleset keeping SSH open"),
        "etc/pf.warden-fallback.conf.j2",
        header=host_header,
        ssh_ports=list(layout.ssh_ports),
        agent_nets=nat_nets,
    )

    jails = _jails(layout)
    for jail in jails:
        path = f"/usr/local/etc/warden/jails/{jail.name}.conf"
        add(
            FileEntry(
                path,
                "0644",
                agent=jail.agents[0] if len(jail.agents) == 1 else None,
                purpose=f"Bastille VNET jail spec ({jail.role})",
            ),
            "usr/local/etc/warden/jails/jail.conf.j2",
            header=host_header,
            jail=jail,
            cidr=jail.create_args[-2],  # NAME RELEASE IP INTERFACE close the argv (docs/freebsd.md#bastille-create)
            thick="YES" if jail.thick else "NO",
            create_command=shlex.join(["bastille", *jail.create_args]),
        )
    for role in sorted({j.role for j in jails}):
        path = f"/usr/local/bastille/templates/warden/{role}/Bastillefile"
        add(
            FileEntry(path, "0644", purpose=f"Bastille template for {role} jails"),
            f"usr/local/bastille/templates/warden/{role}/Bastillefile.j2",
            header=host_header,
        )

    guests = []
    for agent in layout.guests:
        assert agent.vm_ip is not None  # checks.py: AGENT_PLACEMENT=bhyve needs WARDEN_VM_IP
        assert layout.vm_uplink is not None  # set with the guests (layouts)
        seed = f"{GUEST_SEED_DIR}/{agent.vm_name}/user-data"
        guest = GuestSpec(
            name=agent.vm_name,
            agent=agent.name,
            uplink_ip=str(agent.vm_ip),
            switch=VM_SWITCH,
            template=f"warden-{agent.name}",
            memory=agent.vm_memory,
            cpus=agent.vm_cpus,
            disk=agent.vm_disk,
            image=layout.guest_image,
            image_file=image_name(layout.guest_image) if layout.guest_image else "",
            network=network_arg(
                str(agent.vm_ip),
                layout.vm_uplink.prefixlen,
                str(layout.vm_uplink.network_address + 1),
                layout.guest_nameservers,
                f"{agent.vm_name}.home.arpa",  # docs/freebsd.md#clawdie-conventions: home.arpa
            ),
            user_data=seed,
            tap=guest_tap(agent.vm_name),
        )
        guests.append(guest)
        files[seed] = (
            user_data(layout.guest_key, _header(_agent_origin(agent, layout))),
            FileEntry(seed, "0600", agent=agent.name, purpose="cloud-init user-data for the guest's first boot"),
        )
        path = f"{layout.vm_dir}/.templates/{guest.template}.conf"
        add(
            FileEntry(path, "0644", agent=agent.name, purpose="vm-bhyve guest template"),
            "vm/guest.conf.j2",
            header=_header(_agent_origin(agent, layout)),
            guest=guest,
            bridge=layout.bridge,
        )

    if guests:
        add(
            FileEntry(
                f"/usr/local/etc/rc.d/{GUESTS_RC}", "0755", purpose="rc.d service: starts the bhyve guests after pf"
            ),
            f"usr/local/etc/rc.d/{GUESTS_RC}.j2",
            header=host_header,
            name=GUESTS_RC,
            rcvar=f"{GUESTS_RC}_enable",
            list_var=f"{GUESTS_RC}_list",
            requires=GUESTS_RC_REQUIRE,
            desc="the bhyve guests of warden-provision, started once pf filters the bridge",
            bridge=layout.bridge,
            sysctls=SYSCTLS,
        )

    rc_conf, prefixes = _rc_conf(layout)
    manifest = Manifest(
        host=layout.name,
        bridge=layout.bridge,
        agents=sorted(a.name for a in layout.agents + layout.guests),
        files=[entry for _, (_, entry) in sorted(files.items())],
        rc_conf=rc_conf,
        rc_conf_owned_prefixes=prefixes,
        pf_anchor=PF_ANCHOR,
        pf_anchor_file=PF_ANCHOR_FILE,
        jails=jails,
        guests=guests,
        parent=layout.parent,
        rctl_rules=host_rules(layout.agents),
        sysctl=sysctl_lines() if layout.agents or layout.guests else [],
        ssh_ports=list(layout.ssh_ports),
    )
    return manifest, files


# -- writing the tree ------------------------------------------------------------------


def _env() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        # Not HTML: each format has its own filter, written at every `{{ }}` (escape.py;
        # tests/test_escape.py refuses a template output without one).
        autoescape=False,
        auto_reload=False,  # templates do not change during a render: no stat per file rendered
    )
    return register(env)


STAGED = ".warden-new"  # a file written in full, waiting for its rename
LOCK_NAME = ".render.lock"  # in build/: one render writes there at a time


def _write_file(path: str, data: bytes, mode: int) -> None:
    """Write PATH whole with MODE exactly (not filtered by the umask), and fsync it.

    os.write may write less than asked (a full disk, a signal): loop until every byte
    is written, or raise — a short file is never left behind (docs/security.md).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(errno.EIO, "write wrote nothing", path)
            view = view[written:]
        os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same(path: str, data: bytes, mode: int) -> bool:
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode or st.st_size != len(data):
        return False
    with open(path, "rb") as fh:
        return fh.read() == data


def _safe_rel(rel: str) -> str:
    """REL, refused if it would leave the host's tree (models.py refuses such paths first)."""
    norm = os.path.normpath(rel)
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise RenderError([Problem((Location(Path(rel)),), f"{rel} leaves the build tree", "report this as a bug")])
    return norm


@dataclass
class _Staged:
    """A host tree written in full beside the live one: commit() makes it live, abort() drops it."""

    commit: Callable[[], None]
    abort: Callable[[], None]


def _stage_sync(root: str, items: Sequence[tuple[str, bytes, int]]) -> _Staged:
    """Stage every changed file of ROOT as `<file>.warden-new`, fsynced; nothing live changes yet.

    Unchanged files are left alone (a re-render, as every `invoke plan` does, mostly
    reads).  The commit renames the staged files into place in ITEMS' order (the
    manifest last), removes files no item names and the directories they leave empty.
    """
    existing: set[str] = set()
    for dirpath, _, names in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        existing.update(os.path.normpath(os.path.join(rel_dir, n)) for n in names)
    staged: list[tuple[str, str]] = []
    made: list[str] = []

    def abort() -> None:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for d in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(d)

    try:
        for rel, data, mode in items:
            path = os.path.join(root, rel)
            if rel in existing and _same(path, data, mode):
                continue
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                missing = []
                while parent != root and not os.path.lexists(parent):
                    missing.append(parent)
                    parent = os.path.dirname(parent)
                for d in reversed(missing):
                    os.mkdir(d)
                    made.append(d)
            if os.path.isdir(path) and not os.path.islink(path):
                raise IsADirectoryError(errno.EISDIR, "a directory is where a file goes", path)
            tmp = path + STAGED
            _write_file(tmp, data, mode)
            staged.append((tmp, path))
        for d in {os.path.dirname(p) for _, p in staged}:
            _fsync_dir(d)
    except BaseException:
        abort()
        raise

    def commit() -> None:
        for tmp, path in staged:
            os.replace(tmp, path)
        wanted = {rel for rel, _, _ in items}
        for rel in existing - wanted:
            os.unlink(os.path.join(root, rel))
        for dirpath, _, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
            if dirpath != root and not os.listdir(dirpath):
                os.rmdir(dirpath)

    return _Staged(commit, abort)


def _stage_fresh(build_dir: Path, host: str, items: Sequence[tuple[str, bytes, int]]) -> _Staged:
    """Write the whole tree to build/.<host>.new, fsynced; commit swaps it with build/<host>."""
    root = build_dir / host
    tmp, old = build_dir / f".{host}.new", build_dir / f".{host}.old"
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        for rel, data, mode in items:
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_file(str(path), data, mode)
        for dirpath, _, _ in os.walk(tmp):
            _fsync_dir(dirpath)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    def commit() -> None:
        if root.exists():
            root.rename(old)
        tmp.rename(root)
        _fsync_dir(str(build_dir))
        shutil.rmtree(old, ignore_errors=True)

    return _Staged(commit, lambda: shutil.rmtree(tmp, ignore_errors=True))


def _items(manifest: Manifest, files: Files) -> list[tuple[str, bytes, int]]:
    items = [
        (_safe_rel(path.lstrip("/")), text.encode("utf-8"), int(entry.mode, 8)) for path, (text, entry) in files.items()
    ]
    items.sort()
    items.append((MANIFEST_RELPATH, manifest.to_json().encode("utf-8"), 0o644))
    return items


def _stage_host(build_dir: Path, manifest: Manifest, files: Files) -> tuple[RenderedHost, _Staged]:
    root = build_dir / manifest.host
    items = _items(manifest, files)
    rendered = RenderedHost(manifest.host, root, manifest, [root / rel for rel, _, _ in items[:-1]])
    if root.is_dir():
        try:
            return rendered, _stage_sync(str(root), items)
        except OSError:
            pass  # e.g. a directory where a file now goes: rebuild the tree beside it
    return rendered, _stage_fresh(build_dir, manifest.host, items)


def render_fleet(fleet: Fleet, build_dir: Path, only: Sequence[str] | None = None) -> list[RenderedHost]:
    """Write build/<machine>/ for every host and guest (or only those named).

    Raises RenderError, before writing anything, when `render_problems` finds something.
    Directories of machines no longer in the fleet are left alone: build/ may hold other
    trees (the demo's), and plan/Ansible only read the machines they are asked about.

    Complete or absent (docs/security.md): every changed file is written in full and
    fsynced beside the live tree first; only when every machine is staged are they
    renamed into place, the manifest last. An OSError (a full disk) leaves the previous
    build as it was.
    """
    problems = render_problems(fleet)
    if problems:
        raise RenderError(problems)
    jenv = _env()
    chosen = [lay for lay in layouts(fleet) if only is None or lay.name in only]
    try:
        rendered = [render_layout(lay, jenv) for lay in chosen]
    except UnsafeValue as exc:  # models.py refuses such values first: reaching this is a bug
        raise RenderError([Problem((Location(TEMPLATES),), str(exc), "report this as a bug")]) from None
    from filelock import FileLock

    build_dir.mkdir(parents=True, exist_ok=True)
    # One render at a time in build/: two would stage into the same .<host>.new (filelock).
    with FileLock(str(build_dir / LOCK_NAME), timeout=300):
        staged: list[tuple[RenderedHost, _Staged]] = []
        try:
            for manifest, files in rendered:
                staged.append(_stage_host(build_dir, manifest, files))
        except BaseException:
            for _, stage in staged:
                stage.abort()
            raise
        for _, stage in staged:
            stage.commit()
    return [host for host, _ in staged]
