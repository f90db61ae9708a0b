"""The manifest of one rendered host: what each file is for, who owns it, what we edit.

`build/<host>/.warden/manifest.json` is the contract between the renderer, `plan`
(which diffs it against the live host) and the Ansible roles (which apply it).  A copy
is installed on the host as /var/db/warden/manifest.json so that the next plan knows
what the previous apply put there — that is how removed agents' files are found.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Literal

MANIFEST_RELPATH = ".warden/manifest.json"
LIVE_MANIFEST_PATH = "/var/db/warden/manifest.json"


@dataclass(frozen=True)
class FileEntry:
    """A file we own outright: rendered in full, installed as is."""

    path: str  # absolute path on the host, e.g. /usr/local/etc/rc.d/atlas
    mode: str  # octal string, e.g. "0755"
    owner: str = "root"
    group: str = "wheel"
    agent: str | None = None  # the agent that owns it; None for host-level files
    purpose: str = ""
    secret: bool = False  # contents never printed (the agent's .env)


@dataclass(frozen=True)
class RcEdit:
    """One sysrc(8)-style edit of /etc/rc.conf (docs/freebsd.md#sysrc)."""

    op: Literal["set", "append", "remove", "delete"]
    name: str
    value: str = ""


@dataclass(frozen=True)
class JailSpec:
    name: str
    role: str
    ip: str
    gateway: str
    bridge: str
    mac: str
    release: str
    hostname: str
    create_args: list[str]  # argv after `bastille`: ["create", "-B", ...]
    template: str  # Bastille template, e.g. "warden/ollama"
    agents: list[str]  # every agent using it (several for a shared LLM jail)
    thick: bool = False
    # "IP MAC" permanent ARP entries set inside the jail at each start (docs/isolation.md "Layer 2")
    arp: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GuestSpec:
    """A vm-bhyve guest on this host carrying one agent (docs/design.md#placement)."""

    name: str
    agent: str
    uplink_ip: str
    switch: str
    template: str
    memory: str
    cpus: int
    disk: str
    # Created from (docs/freebsd.md#vm-bhyve): the image (`vm img` URL or host path), the name
    # `vm create -i` takes, the `-n` network argument, and our user-data on the host.
    image: str = ""
    image_file: str = ""
    network: str = ""
    user_data: str = ""
    # The tap vm-bhyve creates by this name at each start (network0_name), so that the
    # anchor can pin the guest's address on it (docs/isolation.md); "" when it cannot.
    tap: str = ""


@dataclass
class Manifest:
    host: str
    bridge: str
    agents: list[str] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)
    # Desired rc.conf state: the edits that bring any rc.conf to it, in order.
    rc_conf: list[RcEdit] = field(default_factory=list)
    # Variables we may have written before and must delete when no longer desired:
    # exact names, plus these prefixes (e.g. "ifconfig_warden0_alias").
    rc_conf_owned_prefixes: list[str] = field(default_factory=list)
    pf_anchor: str = "warden"
    pf_anchor_file: str = "/etc/pf.warden.conf"
    jails: list[JailSpec] = field(default_factory=list)
    guests: list[GuestSpec] = field(default_factory=list)
    parent: str | None = None  # for a bhyve guest: the physical host it runs on
    rctl_rules: list[str] = field(default_factory=list)  # our managed block of /etc/rctl.conf
    sysctl: list[str] = field(default_factory=list)  # our managed block of /etc/sysctl.conf (isolation.py)
    ssh_ports: list[int] = field(default_factory=lambda: [22])  # what the fallback ruleset passes

    def to_json(self) -> str:
        """JSON with one line per list item: reads and diffs well, and encodes fast.

        `json.dumps(..., indent=…)` runs the pure-Python encoder over every nested value
        (a third of render time at 1,000 agents); each item here goes through the C
        encoder once.  Any JSON reader sees the same data as before.
        """
        parts = []
        for key, value in sorted(_shallow(self).items()):
            name = json.dumps(key)
            if isinstance(value, list) and value:
                items = ",\n".join("    " + json.dumps(_shallow(v), sort_keys=True) for v in value)
                parts.append(f"  {name}: [\n{items}\n  ]")
            else:
                parts.append(f"  {name}: {json.dumps(value, sort_keys=True)}")
        return "{\n" + ",\n".join(parts) + "\n}\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            host=data["host"],
            bridge=data.get("bridge", "warden0"),
            agents=list(data.get("agents", [])),
            files=[FileEntry(**f) for f in data.get("files", [])],
            rc_conf=[RcEdit(**e) for e in data.get("rc_conf", [])],
            rc_conf_owned_prefixes=list(data.get("rc_conf_owned_prefixes", [])),
            pf_anchor=data.get("pf_anchor", "warden"),
            pf_anchor_file=data.get("pf_anchor_file", "/etc/pf.warden.conf"),
            jails=[JailSpec(**j) for j in data.get("jails", [])],
            guests=[GuestSpec(**g) for g in data.get("guests", [])],
            parent=data.get("parent"),
            rctl_rules=list(data.get("rctl_rules", [])),
            sysctl=list(data.get("sysctl", [])),
            ssh_ports=[int(p) for p in data.get("ssh_ports", [22])],
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_record(cls, text: str) -> Manifest:
        """The previous apply's record as read from a host: parsed, then held to what the
        renderer could have written (check_record); ValueError naming what is not."""
        try:
            m = cls.from_json(text)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a warden manifest ({type(exc).__name__}: {exc})") from None
        check_record(m)
        return m

    @classmethod
    def load(cls, build_host_dir: Path) -> Manifest:
        return cls.from_json((build_host_dir / MANIFEST_RELPATH).read_text(encoding="utf-8"))


def read_record(text: str | None, host: str = "the host") -> Manifest | None:
    """The previous apply's record as a read returned it (None when there is none);
    ValueError with the cause, the file and the fix when it is not one we wrote."""
    if not text:
        return None
    try:
        return Manifest.from_record(text)
    except ValueError as exc:
        raise ValueError(
            f"{host}: {LIVE_MANIFEST_PATH}, the record of the last apply, cannot be used: {exc} "
            "(fix: restore it from backup, or delete it to plan the host as never applied)"
        ) from None


def _shallow(value: Any) -> Any:
    """A dataclass as a dict of its fields (they hold only str, int, bool, None, lists of str)."""
    if is_dataclass(value) and not isinstance(value, type):
        return dict(vars(value))
    return value


# -- the previous apply's record, read back from a host ---------------------------------
#
# Every name in the record becomes an argument of a root command (`service NAME onestop`,
# `bastille stop NAME`, `rctl -r RULE`, `arp -d`), a path root removes, or an rc.conf
# variable root deletes.  The record is root's file, yet what a read returns is held to
# what render.py could have produced, by full match (docs/security.md#the-facts-read).

_MODE = re.compile(r"0[0-7]{3}")
_RC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_FIXED_RC = {
    "gateway_enable",
    "pf_enable",
    "pf_fallback_rules_enable",
    "pf_fallback_rules_file",
    "bastille_enable",
    "vm_enable",
    "vm_dir",
    "defaultrouter",
    "warden_guests_enable",  # render.GUESTS_RC: rc.d/warden_guests (docs/freebsd.md#boot-order)
}
_APPENDED_RC = {"cloned_interfaces", "static_arp_pairs", "vm_list", "warden_guests_list"}
_RCTL = re.compile(r"(user|jail):([A-Za-z0-9]+):([a-z]+):(deny|log|devctl|throttle)=[0-9]{1,15}[kKmMgGtT]?")
_ROOT_FILES = {
    "/etc/pf.warden.conf",
    "/etc/pf.warden-fallback.conf",
    "/usr/local/etc/newsyslog.conf.d/warden.conf",
    "/usr/local/etc/rc.d/warden_guests",
}


def _bad(what: str, value: object) -> ValueError:
    return ValueError(f"{what} {str(value)[:80]!r} is not one warden-provision writes")


def _check_path(path: str) -> None:
    from .models import PATH_PART_RE

    parts = path.split("/")
    if parts[0] != "" or not all(PATH_PART_RE.fullmatch(p) and p not in (".", "..") for p in parts[1:]):
        raise _bad("file path", path)


# Root's files named after an agent, a jail or a guest: (form, whose names fill it).
_NAMED_ROOT_FILES = (
    (re.compile(r"/usr/local/etc/rc\.d/([a-z0-9]+)"), "local"),
    (re.compile(r"/usr/local/libexec/warden/run-([a-z0-9]+)\.sh"), "local"),
    (re.compile(r"/usr/local/etc/warden/jails/([A-Za-z0-9]+)\.conf"), "jails"),
    (re.compile(r"/usr/local/etc/warden/guests/([a-z0-9]+)vm/user-data"), "agents"),
    (re.compile(r"/.+/\.templates/warden-([a-z0-9]+)\.conf"), "agents"),
)


def _root_file(path: str, agents: set[str], jails: set[str], local: set[str]) -> bool:
    names = {"agents": agents, "jails": jails, "local": local}
    for form, whose in _NAMED_ROOT_FILES:
        m = form.fullmatch(path)
        if m:
            return m.group(1) in names[whose]
    return (
        path in _ROOT_FILES
        or re.fullmatch(r"/usr/local/bastille/templates/warden/[a-z]+/Bastillefile", path) is not None
    )


def check_record(m: Manifest) -> None:
    """ValueError unless every agent, jail, file, rc.conf variable and rctl rule of M is one
    render.py could have written: names by the registry's full matches, paths of the
    forms it renders, an agent's own files only below that agent's home."""
    from .checks import RESERVED_SERVICE_NAMES, RESERVED_USERS
    from .models import AGENT_NAME_RE, HOST_NAME_RE, INTERFACE_RE, VNET_JAIL_NAME_RE

    if not isinstance(m.host, str) or not HOST_NAME_RE.fullmatch(m.host):
        raise _bad("host name", m.host)
    if not isinstance(m.bridge, str) or not INTERFACE_RE.fullmatch(m.bridge):
        raise _bad("bridge", m.bridge)
    agents = set(m.agents)
    for a in m.agents:
        if (
            not isinstance(a, str)
            or not AGENT_NAME_RE.fullmatch(a)
            or a in RESERVED_SERVICE_NAMES
            or a in RESERVED_USERS
        ):
            raise _bad("agent name", a)
    guests = set()
    for g in m.guests:
        if g.agent not in agents or not AGENT_NAME_RE.fullmatch(g.name.removesuffix("vm")) or g.name != f"{g.agent}vm":
            raise _bad("guest", g.name)
        guests.add(g.agent)
    local = agents - guests
    jails = set()
    for j in m.jails:
        if not isinstance(j.name, str) or not VNET_JAIL_NAME_RE.fullmatch(j.name) or not set(j.agents) <= agents:
            raise _bad("jail", j.name)
        jails.add(j.name)
    for e in m.files:
        if not isinstance(e.path, str):
            raise _bad("file path", e.path)
        _check_path(e.path)
        if (
            not isinstance(e.mode, str)
            or not _MODE.fullmatch(e.mode)
            or (e.agent is not None and e.agent not in agents)
        ):
            raise _bad("file entry", e.path)
        if e.owner == "root":
            if e.group != "wheel" or not _root_file(e.path, agents, jails, local):
                raise _bad("root's file", e.path)
        elif not (
            e.agent in local and e.owner == e.group == e.agent and re.fullmatch(rf"/(?:usr/)?home/{e.agent}/.+", e.path)
        ):
            raise _bad("agent's file", e.path)
    agent_vars = {f"{a}_enable" for a in local}
    bridge_vars = {f"ifconfig_{m.bridge}", f"ifconfig_{m.bridge}_aliases"}
    for r in m.rc_conf:
        if r.op not in ("set", "append", "remove", "delete") or not _RC_NAME.fullmatch(str(r.name)):
            raise _bad("rc.conf edit", r.name)
        if "\n" in str(r.value):
            raise _bad("rc.conf value", r.value)
        ok = (
            r.name in _APPENDED_RC
            if r.op == "append"
            else r.name in _FIXED_RC
            or r.name in agent_vars
            or r.name in bridge_vars
            or re.fullmatch(r"ifconfig_bridge[0-9]{1,4}_name", r.name) is not None
            or re.fullmatch(rf"ifconfig_{m.bridge}_alias[0-9]{{1,4}}", r.name) is not None
            or any(r.name == f"static_arp_warden_{j}" for j in jails)
            or (m.parent is not None and r.name == "static_arp_warden_uplink")
            or (m.parent is not None and re.fullmatch(r"ifconfig_[A-Za-z][A-Za-z0-9_.]{0,13}[0-9]", r.name) is not None)
        )
        if not ok:
            raise _bad("rc.conf variable", r.name)
    for prefix in m.rc_conf_owned_prefixes:
        if prefix != f"ifconfig_{m.bridge}_alias":
            raise _bad("rc.conf prefix", prefix)
    for rule in m.rctl_rules:
        rm = _RCTL.fullmatch(str(rule))
        if rm is None or rm.group(2) not in (agents if rm.group(1) == "user" else jails):
            raise _bad("rctl rule", rule)
