"""Agents and hosts as validated values.

An agent's `.env` holds strings; everything downstream (checks, templates, Ansible)
wants typed values with every default derived once, here.  Field-level rules live on
the models (one agent, one value); rules that compare agents live in `checks.py`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .problems import Problem

# docs/freebsd.md#service-and-variable-names, docs/freebsd.md#bastille-create:
# the name becomes the rc.d `name` (shell identifier),
# the user, the tmux session and the prefix of VNET jail names (no `-` or `_`).
AGENT_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")
# docs/freebsd.md#bastille-create: Bastille VNET jail names: letters and digits only, not all digits.
VNET_JAIL_NAME_RE = re.compile(r"^[A-Za-z0-9]+$")
BCP47_RE = re.compile(r"^[a-z]{2,3}(-[A-Z][a-z]{3})?(-(?:[A-Z]{2}|[0-9]{3}))?$")
SUBNET_BASE_RE = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")

JAIL_ROLES = ("git", "cms", "ollama", "llamacpp", "db")
LLM_ROLES = frozenset({"ollama", "llamacpp"})
DEFAULT_JAILS = ("git", "cms", "ollama", "db")
# Clawdie slot map (docs/freebsd.md#clawdie-conventions, newest): .1 gateway, .2 git, .3 cms, .4 local AI, .5 db.
SLOT = {"gateway": 1, "git": 2, "cms": 3, "ollama": 4, "llamacpp": 4, "db": 5}
# The older map some installs still carry (docs/freebsd.md#clawdie-conventions): db .3, cms .4, llama .5, git .6.
OLD_SLOT = {"git": 6, "cms": 4, "ollama": 5, "llamacpp": 5, "db": 3}

ROLE_KEYS: dict[str, tuple[str, str]] = {
    "git": ("WARDEN_GIT_IP", "GIT_JAIL_NAME"),
    "cms": ("WARDEN_CMS_IP", "CMS_JAIL_NAME"),
    "ollama": ("WARDEN_OLLAMA_IP", "OLLAMA_JAIL_NAME"),
    "llamacpp": ("WARDEN_LLAMA_CPP_IP", "LLAMA_CPP_JAIL_NAME"),
    "db": ("WARDEN_DB_IP", "DB_JAIL_NAME"),
}

DEFAULT_API_PORT = 3100
DEFAULT_POOL = IPv4Network("10.0.0.0/16")
DEFAULT_BRIDGE = "warden0"
DEFAULT_RELEASE = "15.0-RELEASE"
DEFAULT_VM_UPLINK = IPv4Network("10.255.0.0/24")

# Keys this tool owns, in the order add-agent writes them (the file documents itself).
OWNED_KEYS = (
    "AGENT_NAME",
    "ASSISTANT_NAME",
    "AGENT_HOST",
    "AGENT_PLACEMENT",
    "AGENT_SUBNET_BASE",
    "WARDEN_SUBNET",
    "WARDEN_GATEWAY",
    "WARDEN_JAILS",
    "WARDEN_GIT_IP",
    "WARDEN_CMS_IP",
    "WARDEN_OLLAMA_IP",
    "WARDEN_LLAMA_CPP_IP",
    "WARDEN_DB_IP",
    "GIT_JAIL_NAME",
    "CMS_JAIL_NAME",
    "OLLAMA_JAIL_NAME",
    "LLAMA_CPP_JAIL_NAME",
    "DB_JAIL_NAME",
    "CONTROLPLANE_API_PORT",
    "AGENT_DIR",
    "AGENT_COMMAND",
    "DISPLAY_LOCALE",
    "ASSISTANT_LOCALE",
    "SYSTEM_LOCALE",
    "SOUL_REPO",
    "SOUL_REF",
    "AGENT_REQUIRES",
    "AGENT_MEMORY_LIMIT",
    "AGENT_MAXPROC",
    "AGENT_PCPU",
    "AGENT_OPENFILES",
    "JAIL_MEMORY_LIMIT",
    "JAIL_MAXPROC",
    "JAIL_PCPU",
    "WARDEN_VM_IP",
    "WARDEN_VM_MEMORY",
    "WARDEN_VM_CPUS",
    "WARDEN_VM_DISK",
)
OWNED = frozenset(OWNED_KEYS)

SECRET_KEY_RE = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE)", re.I)


def is_secret_key(key: str) -> bool:
    """Keys whose values are never printed, diffed or logged (docs/design.md#secrets)."""
    return key not in OWNED and bool(SECRET_KEY_RE.search(key))


class Jail(BaseModel):
    """One Bastille VNET service jail as an agent sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: str
    name: str
    ip: IPv4Address

    @property
    def mac_seed(self) -> str:
        return self.name


def jail_mac(host: str, jail: str) -> str:
    """A static MAC for the jail's epair, stable across renders and unique in practice.

    Locally administered unicast (02:…), hashed from host and jail name so that the
    same jail always gets the same MAC (Bastille issue tracker: duplicate MACs after
    re-creation); `checks.py` still refuses the rare hash collision.
    """
    digest = hashlib.sha256(f"{host}/{jail}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


class Agent(BaseModel):
    """A fully derived agent: every value the renderer needs, no defaults left to guess."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(alias="AGENT_NAME")
    assistant_name: str = Field(alias="ASSISTANT_NAME")
    host: str = Field(alias="AGENT_HOST")
    placement: Literal["host", "bhyve"] = Field(alias="AGENT_PLACEMENT")
    subnet_base: str = Field(alias="AGENT_SUBNET_BASE")
    subnet: IPv4Network = Field(alias="WARDEN_SUBNET")
    gateway: IPv4Address = Field(alias="WARDEN_GATEWAY")
    jail_roles: tuple[str, ...] = Field(alias="WARDEN_JAILS")
    git_ip: IPv4Address = Field(alias="WARDEN_GIT_IP")
    cms_ip: IPv4Address = Field(alias="WARDEN_CMS_IP")
    ollama_ip: IPv4Address = Field(alias="WARDEN_OLLAMA_IP")
    llamacpp_ip: IPv4Address = Field(alias="WARDEN_LLAMA_CPP_IP")
    db_ip: IPv4Address = Field(alias="WARDEN_DB_IP")
    git_jail: str = Field(alias="GIT_JAIL_NAME")
    cms_jail: str = Field(alias="CMS_JAIL_NAME")
    ollama_jail: str = Field(alias="OLLAMA_JAIL_NAME")
    llamacpp_jail: str = Field(alias="LLAMA_CPP_JAIL_NAME")
    db_jail: str = Field(alias="DB_JAIL_NAME")
    api_port: int = Field(alias="CONTROLPLANE_API_PORT", ge=1024, le=65535)
    directory: str = Field(alias="AGENT_DIR")
    command: str = Field(alias="AGENT_COMMAND")
    display_locale: str = Field(alias="DISPLAY_LOCALE")
    assistant_locale: str = Field(alias="ASSISTANT_LOCALE")
    system_locale: str = Field(alias="SYSTEM_LOCALE")
    soul_repo: str | None = Field(default=None, alias="SOUL_REPO")
    soul_ref: str | None = Field(default=None, alias="SOUL_REF")
    requires: tuple[str, ...] = Field(default=(), alias="AGENT_REQUIRES")
    # rctl(8) limits (docs/freebsd.md#rctl): for the agent's user, and for each of its own jails.
    memory_limit: str | None = Field(default=None, alias="AGENT_MEMORY_LIMIT")
    maxproc: int | None = Field(default=None, alias="AGENT_MAXPROC", ge=1)
    pcpu: int | None = Field(default=None, alias="AGENT_PCPU", ge=1, le=6400)
    openfiles: int | None = Field(default=None, alias="AGENT_OPENFILES", ge=16)
    jail_memory_limit: str | None = Field(default=None, alias="JAIL_MEMORY_LIMIT")
    jail_maxproc: int | None = Field(default=None, alias="JAIL_MAXPROC", ge=1)
    jail_pcpu: int | None = Field(default=None, alias="JAIL_PCPU", ge=1, le=6400)
    vm_ip: IPv4Address | None = Field(default=None, alias="WARDEN_VM_IP")
    vm_memory: str = Field(default="2G", alias="WARDEN_VM_MEMORY")
    vm_cpus: int = Field(default=2, alias="WARDEN_VM_CPUS", ge=1, le=64)
    vm_disk: str = Field(default="20G", alias="WARDEN_VM_DISK")

    # Not from .env keys: where the agent came from and what else its .env holds.
    source: Path = Field(default=Path("-"), exclude=True)
    lines: Mapping[str, int] = Field(default_factory=dict, exclude=True)
    extra: Mapping[str, str] = Field(default_factory=dict, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not AGENT_NAME_RE.match(v):
            raise ValueError(
                "must be lowercase letters and digits, start with a letter, at most 16 "
                "characters: it becomes the rc.d name (a shell identifier, docs/freebsd.md#service-and-variable-names) "
                "and the prefix of Bastille VNET jail names (no '-' or '_', docs/freebsd.md#bastille-create)"
            )
        return v

    @field_validator("subnet_base")
    @classmethod
    def _base(cls, v: str) -> str:
        m = SUBNET_BASE_RE.match(v)
        if not m or any(int(o) > 255 or (len(o) > 1 and o[0] == "0") for o in m.groups()):
            raise ValueError("must be the first three octets of a /24, e.g. 10.0.1")
        return v

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: IPv4Network) -> IPv4Network:
        if v.prefixlen != 24:
            raise ValueError("must be a /24 (one per agent, README.md#the-agent-env)")
        return v

    @field_validator("jail_roles", mode="before")
    @classmethod
    def _roles(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = tuple(v.split())
        for role in v:
            if role not in JAIL_ROLES:
                raise ValueError(f"unknown jail role {role!r}; known: {' '.join(JAIL_ROLES)}")
        if len(set(v)) != len(v):
            raise ValueError("lists a role twice")
        return tuple(v)

    @field_validator("display_locale", "assistant_locale")
    @classmethod
    def _bcp47(cls, v: str) -> str:
        if not BCP47_RE.match(v):
            raise ValueError("must be a BCP 47 tag such as en-US or sl-SI")
        return v

    @field_validator("directory")
    @classmethod
    def _dir(cls, v: str) -> str:
        if not v.startswith("/") or ".." in v.split("/") or not re.match(r"^[A-Za-z0-9_./-]+$", v):
            raise ValueError("must be an absolute path of letters, digits, '_', '.', '-', '/'")
        return v.rstrip("/") or "/"

    @field_validator("requires", mode="before")
    @classmethod
    def _requires(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = tuple(part for part in re.split(r"[\s,]+", v) if part)
        for name in v:
            if not AGENT_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not an agent name (space-separated agent names expected)")
        return tuple(v)

    @field_validator("memory_limit", "jail_memory_limit")
    @classmethod
    def _rctl_size(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[0-9]+[kKmMgGtT]?$", v):
            raise ValueError("must be an rctl amount such as 2G or 512m (docs/freebsd.md#rctl)")
        return v

    @field_validator("vm_memory", "vm_disk")
    @classmethod
    def _size(cls, v: str) -> str:
        if not re.match(r"^[0-9]+[KMGT]?$", v):
            raise ValueError("must be a size such as 2G or 512M (vm-bhyve syntax, docs/freebsd.md#vm-bhyve)")
        return v

    # -- derived views -----------------------------------------------------------
    @property
    def user(self) -> str:
        return self.name

    @property
    def rcvar(self) -> str:
        return f"{self.name}_enable"

    @property
    def tmux_session(self) -> str:
        return self.name

    @property
    def db_prefix(self) -> str:
        return self.name

    @property
    def vm_name(self) -> str:
        """vm-bhyve guest name; also the guest's inventory hostname."""
        return f"{self.name}vm"

    @property
    def jails(self) -> tuple[Jail, ...]:
        return tuple(
            Jail(role=role, name=getattr(self, f"{role}_jail"), ip=getattr(self, f"{role}_ip"))
            for role in self.jail_roles
        )

    def key_line(self, key: str) -> int | None:
        return self.lines.get(key)

    def secrets(self) -> dict[str, str]:
        return {k: v for k, v in self.extra.items() if is_secret_key(k) and v}


class Host(BaseModel):
    """A FreeBSD host from inventory/hosts.yml, with the `warden_*` variables we read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    ext_if: str | None = None
    bridge: str = DEFAULT_BRIDGE
    bridge_clone: str = "bridge0"
    vm_dir: str = "/vm"
    pool: IPv4Network = DEFAULT_POOL
    host_networks: tuple[IPv4Network, ...] = ()
    release: str = DEFAULT_RELEASE
    vm_uplink: IPv4Network = DEFAULT_VM_UPLINK
    agent_links: tuple[tuple[str, str], ...] = ()
    sample_root: str | None = None  # read this directory instead of SSH (the bundled example)
    source: Path = Path("inventory/hosts.yml")
    line: int | None = None
    ansible_vars: Mapping[str, Any] = Field(default_factory=dict)


def derive_defaults(values: Mapping[str, str], only_host: str | None) -> dict[str, str]:
    """Fill every owned key that VALUES leaves out, from AGENT_NAME and AGENT_SUBNET_BASE.

    Used both by add-agent (to write the file out in full) and when reading an .env a
    user wrote by hand with only the required keys.
    """
    out = dict(values)
    name = out.get("AGENT_NAME", "")
    out.setdefault("ASSISTANT_NAME", name[:1].upper() + name[1:])
    if only_host is not None:
        out.setdefault("AGENT_HOST", only_host)
    out.setdefault("AGENT_PLACEMENT", "host")
    base = out.get("AGENT_SUBNET_BASE")
    if base and SUBNET_BASE_RE.match(base):
        out.setdefault("WARDEN_SUBNET", f"{base}.0/24")
        out.setdefault("WARDEN_GATEWAY", f"{base}.{SLOT['gateway']}")
        for role, (ip_key, _) in ROLE_KEYS.items():
            out.setdefault(ip_key, f"{base}.{SLOT[role]}")
    out.setdefault("WARDEN_JAILS", " ".join(DEFAULT_JAILS))
    for role, (_, jail_key) in ROLE_KEYS.items():
        # `<agent><role>`, not Clawdie's `<agent>-<role>` (docs/freebsd.md#clawdie-conventions).
        out.setdefault(jail_key, f"{name}{role}")
    out.setdefault("CONTROLPLANE_API_PORT", str(DEFAULT_API_PORT))
    out.setdefault("AGENT_DIR", f"/home/{name}/clawdie")
    out.setdefault("AGENT_COMMAND", "node dist/index.js")
    out.setdefault("DISPLAY_LOCALE", "en-US")
    out.setdefault("ASSISTANT_LOCALE", "en-US")
    out.setdefault("SYSTEM_LOCALE", "en_US.UTF-8")
    return out


def split_owned(values: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    owned = {k: v for k, v in values.items() if k in OWNED and v != ""}
    extra = {k: v for k, v in values.items() if k not in OWNED}
    return owned, extra


def pydantic_messages(exc: ValidationError) -> list[tuple[str, str]]:
    """(key, message) pairs from a ValidationError, keyed by the .env key name."""
    out = []
    for err in exc.errors():
        loc = err.get("loc") or ("?",)
        key = str(loc[0])
        msg = err.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err.get("type") == "missing":
            msg = "is required"
        out.append((key, msg))
    return out


@dataclass
class Fleet:
    """Everything the checks and the renderer look at, loaded once."""

    hosts: list[Host]
    agents: list[Agent]
    problems: list[Problem] = field(default_factory=list)
    # Raw values for agents whose model did not validate: still used by fleet checks.
    raw: dict[Path, dict[str, str]] = field(default_factory=dict)

    def host(self, name: str) -> Host | None:
        return next((h for h in self.hosts if h.name == name), None)

    def agents_on(self, host: str) -> list[Agent]:
        return [a for a in self.agents if a.host == host]
