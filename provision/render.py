"""Render the fleet into `build/<host>/`, a tree that mirrors each host's filesystem.

One Jinja2 template per artifact under `templates/`, laid out by target path; every
value is computed here and passed in plain, so templates hold no decisions.  Output
is deterministic (sorted everywhere, no timestamps): rendering twice gives the same
bytes, and a change of output is a visible diff in the golden files.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from .limits import host_rules
from .manifest import MANIFEST_RELPATH, FileEntry, GuestSpec, JailSpec, Manifest, RcEdit
from .models import LLM_ROLES, Agent, jail_mac
from .rcconf import Set, alias_edits
from .registry import Fleet
from .settings import REPO_ROOT

TEMPLATES = REPO_ROOT / "templates"
HEADER = "Managed by warden-provision: {what}. Local changes are overwritten."
VM_SWITCH = "warden"  # vm-bhyve manual switch bound to the host's bridge (FREEBSD.md §5)
GUEST_EXT_IF = "vtnet0"  # the guest's virtio-net NIC on the VM switch


@dataclass
class HostLayout:
    """Everything one machine (a host or a bhyve guest) carries, before templating."""

    name: str
    ext_if: str
    bridge: str
    bridge_clone: str
    release: str
    agents: list[Agent]
    links: tuple[tuple[str, str], ...] = ()
    parent: str | None = None
    uplink_gateway: str | None = None  # guests: the host's address on the VM uplink
    uplink_ip: str | None = None  # guests: the guest's own uplink address
    vm_uplink: IPv4Network | None = None  # hosts carrying guests: the uplink network
    guests: list[Agent] = field(default_factory=list)
    vm_dir: str = "/vm"


@dataclass
class RenderedHost:
    name: str
    directory: Path
    manifest: Manifest
    files: list[Path]


def _env() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def layouts(fleet: Fleet) -> list[HostLayout]:
    """One layout per inventory host, plus one per bhyve guest (a host of its own, SPEC §5)."""
    out: list[HostLayout] = []
    for host in sorted(fleet.hosts, key=lambda h: h.name):
        mine = sorted(fleet.agents_on(host.name), key=lambda a: a.name)
        on_host = [a for a in mine if a.placement == "host"]
        guests = [a for a in mine if a.placement == "bhyve"]
        out.append(
            HostLayout(
                name=host.name,
                ext_if=host.ext_if or "",
                bridge=host.bridge,
                bridge_clone=host.bridge_clone,
                release=host.release,
                agents=on_host,
                links=host.agent_links,
                vm_uplink=host.vm_uplink if guests else None,
                guests=guests,
                vm_dir=host.vm_dir,
            )
        )
        for agent in guests:
            out.append(
                HostLayout(
                    name=agent.vm_name,
                    ext_if=GUEST_EXT_IF,
                    bridge="warden0",
                    bridge_clone="bridge0",
                    release=host.release,
                    agents=[agent],
                    parent=host.name,
                    uplink_gateway=str(host.vm_uplink.network_address + 1),
                    uplink_ip=f"{agent.vm_ip}/{host.vm_uplink.prefixlen}",
                )
            )
    return out


def _header(what: str) -> str:
    return HEADER.format(what=what)


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
    for name in sorted(owner):
        agent, jail = owner[name]
        cidr = f"{jail.ip}/{agent.subnet.prefixlen}"
        thick = jail.role == "db"  # FREEBSD.md §9: db is a thick jail (-T)
        # FREEBSD.md §4.1: options before NAME RELEASE IP INTERFACE; -B bridged VNET on an
        # existing bridge, -M static MAC, -g the agent's gateway (a VNET jail without a
        # default route is a provisioning defect, §9).
        args = ["create", "-B", *(["-T"] if thick else []), "-M", "-g", str(agent.gateway), name, layout.release,
                cidr, layout.bridge]
        specs.append(
            JailSpec(
                name=name,
                role=jail.role,
                ip=str(jail.ip),
                gateway=str(agent.gateway),
                bridge=layout.bridge,
                mac=jail_mac(layout.name, name),
                release=layout.release,
                hostname=f"{name}.{agent.name}.home.arpa",  # §9: home.arpa, never .local
                create_args=args,
                template=f"warden/{jail.role}",
                agents=sorted(users[name]),
                thick=thick,
            )
        )
    return specs


def _gateways(layout: HostLayout) -> list[str]:
    cidrs = [f"{a.gateway}/{a.subnet.prefixlen}" for a in sorted(layout.agents, key=lambda a: a.subnet)]
    if layout.vm_uplink is not None:
        cidrs.append(f"{layout.vm_uplink.network_address + 1}/{layout.vm_uplink.prefixlen}")
    return cidrs


def _rc_conf(layout: HostLayout) -> tuple[list[RcEdit], list[str]]:
    """Desired rc.conf edits and the variable-name prefixes we own on this machine.

    FREEBSD.md §2.2: the cloned bridge is renamed to warden0 and configured under its
    new name; §2.1: aliases numbered from 0 without gaps; §3.4: gateway_enable for NAT.
    """
    bridge, clone = layout.bridge, layout.bridge_clone
    cidrs = _gateways(layout)
    edits: list[RcEdit] = [
        RcEdit("append", "cloned_interfaces", clone),
        RcEdit("set", f"ifconfig_{clone}_name", bridge),
        RcEdit("set", f"ifconfig_{bridge}", f"inet {cidrs[0]} up" if cidrs else "up"),
    ]
    for edit in alias_edits(bridge, cidrs[1:], {}):
        assert isinstance(edit, Set)
        edits.append(RcEdit("set", edit.name, edit.value))
    if layout.uplink_ip is not None:
        edits.append(RcEdit("set", f"ifconfig_{layout.ext_if}", f"inet {layout.uplink_ip}"))
        edits.append(RcEdit("set", "defaultrouter", str(layout.uplink_gateway)))
    edits += [
        RcEdit("set", "gateway_enable", "YES"),
        RcEdit("set", "pf_enable", "YES"),
        RcEdit("set", "pf_fallback_rules_enable", "YES"),
        RcEdit("set", "pf_fallback_rules_file", "/etc/pf.warden-fallback.conf"),
    ]
    if layout.guests:
        edits += [RcEdit("set", "vm_enable", "YES"), RcEdit("set", "vm_dir", layout.vm_dir)]
    edits += [RcEdit("set", f"{a.name}_enable", "YES") for a in layout.agents]
    return edits, [f"ifconfig_{bridge}_alias"]


def _pf_exceptions(layout: HostLayout) -> list[str]:
    """Pass rules that pierce inter-agent isolation: shared LLM jails and inventory links."""
    rules = []
    by_name = {a.name: a for a in layout.agents}
    for agent in layout.agents:
        for jail in agent.jails:
            if jail.role in LLM_ROLES and jail.ip not in agent.subnet:
                rule = f"pass in quick on $bridge from {agent.subnet} to {jail.ip} keep state"
                rules.append(f"{rule}  # shared {jail.name}")
    for a, b in sorted(tuple(sorted(pair)) for pair in layout.links):
        if a in by_name and b in by_name:
            na, nb = by_name[a].subnet, by_name[b].subnet
            rules.append(f"pass in quick on $bridge from {na} to {nb} keep state  # link {a} {b}")
            rules.append(f"pass in quick on $bridge from {nb} to {na} keep state  # link {b} {a}")
    return rules


def _agent_env(agent: Agent) -> str:
    locale = agent.system_locale
    return f"LANG={locale} LC_ALL={locale} HOME=/home/{agent.user} USER={agent.user}"


def render_layout(layout: HostLayout, jenv: Any) -> tuple[Manifest, dict[str, tuple[str, FileEntry]]]:
    """The manifest and every file (host path → text, entry) for one machine."""
    files: dict[str, tuple[str, FileEntry]] = {}

    def add(path: str, template: str, entry: FileEntry, **values: Any) -> None:
        files[path] = (jenv.get_template(template).render(**values), entry)

    for agent in layout.agents:
        what = f"agent {agent.name} from {agent.source.parent.name}/.env"
        wrapper = f"{agent.directory}/run-{agent.name}.sh"
        add(f"/usr/local/etc/rc.d/{agent.name}", "usr/local/etc/rc.d/agent.j2",
            FileEntry(f"/usr/local/etc/rc.d/{agent.name}", "0755", agent=agent.name, purpose="rc.d service"),
            header=_header(what), name=agent.name, requires=list(agent.requires), assistant_name=agent.assistant_name,
            directory=agent.directory, env=_agent_env(agent), user=agent.user, wrapper=wrapper)
        add(wrapper, "agent/run-agent.sh.j2",
            FileEntry(wrapper, "0755", owner=agent.user, group=agent.user, agent=agent.name,
                      purpose="daemon(8) child: tmux session running the agent"),
            header=_header(what), name=agent.name, user=agent.user, session=agent.tmux_session,
            directory=agent.directory, command=shlex.quote(agent.command))
        env_path = f"{agent.directory}/.env"
        files[env_path] = (agent.source.read_text(encoding="utf-8") if agent.source.is_file() else "",
                           FileEntry(env_path, "0600", owner=agent.user, group=agent.user, agent=agent.name,
                                     purpose="the agent's .env (secrets)", secret=True))

    agent_nets = [str(a.subnet) for a in sorted(layout.agents, key=lambda a: a.subnet)]
    nets = agent_nets + ([str(layout.vm_uplink)] if layout.vm_uplink is not None else [])
    add("/etc/pf.warden.conf", "etc/pf.warden.conf.j2",
        FileEntry("/etc/pf.warden.conf", "0644", purpose="PF anchor: NAT and isolation for the agents"),
        header=_header(f"PF anchor for host {layout.name}"), anchor="warden", anchor_file="/etc/pf.warden.conf",
        ext_if=layout.ext_if, bridge=layout.bridge, nets=nets, agent_nets=agent_nets,
        uplink=layout.vm_uplink is not None, exceptions=_pf_exceptions(layout))
    add("/etc/pf.warden-fallback.conf", "etc/pf.warden-fallback.conf.j2",
        FileEntry("/etc/pf.warden-fallback.conf", "0644", purpose="PF fallback ruleset keeping SSH open"),
        header=_header("PF fallback rules"))

    jails = _jails(layout)
    for jail in jails:
        path = f"/usr/local/etc/warden/jails/{jail.name}.conf"
        add(path, "usr/local/etc/warden/jails/jail.conf.j2",
            FileEntry(path, "0644", agent=jail.agents[0] if len(jail.agents) == 1 else None,
                      purpose=f"Bastille VNET jail spec ({jail.role})"),
            header=_header(f"jail {jail.name}"), jail=jail)
    for role in sorted({j.role for j in jails}):
        path = f"/usr/local/bastille/templates/warden/{role}/Bastillefile"
        add(path, f"usr/local/bastille/templates/warden/{role}/Bastillefile.j2",
            FileEntry(path, "0644", purpose=f"Bastille template for {role} jails"),
            header=_header(f"Bastille template warden/{role}"))

    guests = []
    for agent in layout.guests:
        assert agent.vm_ip is not None
        guest = GuestSpec(name=agent.vm_name, agent=agent.name, uplink_ip=str(agent.vm_ip), switch=VM_SWITCH,
                          template=f"warden-{agent.name}", memory=agent.vm_memory, cpus=agent.vm_cpus,
                          disk=agent.vm_disk)
        guests.append(guest)
        path = f"{layout.vm_dir}/.templates/{guest.template}.conf"
        add(path, "vm/guest.conf.j2", FileEntry(path, "0644", agent=agent.name, purpose="vm-bhyve guest template"),
            header=_header(f"bhyve guest of agent {agent.name}"), guest=guest, template_name=guest.template)

    rc_conf, prefixes = _rc_conf(layout)
    manifest = Manifest(
        host=layout.name,
        bridge=layout.bridge,
        agents=sorted(a.name for a in layout.agents + layout.guests),
        files=[entry for _, (_, entry) in sorted(files.items())],
        rc_conf=rc_conf,
        rc_conf_owned_prefixes=prefixes,
        jails=jails,
        guests=guests,
        parent=layout.parent,
        rctl_rules=host_rules(layout.agents),
    )
    return manifest, files


def render_fleet(fleet: Fleet, build_dir: Path, only: Sequence[str] | None = None) -> list[RenderedHost]:
    """Write build/<host>/ for every machine (or only those named); stale files are removed."""
    jenv = _env()
    rendered = []
    for layout in layouts(fleet):
        if only is not None and layout.name not in only:
            continue
        manifest, files = render_layout(layout, jenv)
        root = build_dir / layout.name
        tmp = build_dir / f".{layout.name}.new"
        shutil.rmtree(tmp, ignore_errors=True)
        written = []
        for path, (text, entry) in sorted(files.items()):
            target = tmp / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            target.chmod(int(entry.mode, 8))
            written.append(root / path.lstrip("/"))
        (tmp / MANIFEST_RELPATH).parent.mkdir(parents=True, exist_ok=True)
        (tmp / MANIFEST_RELPATH).write_text(manifest.to_json(), encoding="utf-8")
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        rendered.append(RenderedHost(layout.name, root, manifest, written))
    return rendered
