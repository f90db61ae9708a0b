"""The manifest of one rendered host: what each file is for, who owns it, what we edit.

`build/<host>/.warden/manifest.json` is the contract between the renderer, `plan`
(which diffs it against the live host) and the Ansible roles (which apply it).  A copy
is installed on the host as /var/db/warden/manifest.json so that the next plan knows
what the previous apply put there — that is how removed agents' files are found.
"""

from __future__ import annotations

import json
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
    def load(cls, build_host_dir: Path) -> Manifest:
        return cls.from_json((build_host_dir / MANIFEST_RELPATH).read_text(encoding="utf-8"))


def _shallow(value: Any) -> Any:
    """A dataclass as a dict of its fields (they hold only str, int, bool, None, lists of str)."""
    if is_dataclass(value) and not isinstance(value, type):
        return dict(vars(value))
    return value
