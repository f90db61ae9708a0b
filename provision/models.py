"""Agents and hosts as validated values.

An agent's `.env` holds strings; everything downstream (checks, templates, Ansible)
wants typed values with every default derived once, here.  Field-level rules live on
the models (one agent, one value); rules that compare agents live in `checks.py`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .masking import url_credentials
from .problems import Problem

# Every pattern here is used with re.fullmatch, never with `$`: `$` also matches before
# a final newline, and "t1git\n" would pass (docs/security.md, "Values and secrets").

# docs/freebsd.md#service-and-variable-names, docs/freebsd.md#bastille-create:
# the name becomes the rc.d `name` (shell identifier),
# the user, the tmux session and the prefix of VNET jail names (no `-` or `_`).
AGENT_NAME_RE = re.compile(r"[a-z][a-z0-9]{0,15}")
# docs/freebsd.md#bastille-create: Bastille VNET jail names: letters and digits only, not all digits.
VNET_JAIL_NAME_RE = re.compile(r"[A-Za-z0-9]+")
# What a jail name key may hold at all (checks.py explains the Bastille rule above).
JAIL_NAME_CHARS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
BCP47_RE = re.compile(r"[a-z]{2,3}(-[A-Z][a-z]{3})?(-(?:[A-Z]{2}|[0-9]{3}))?")
SUBNET_BASE_RE = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
# An inventory host name (a DNS name or an address): it names build/<host>/ and appears
# in rendered comments.
HOST_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
# SYSTEM_LOCALE's characters; checks.py decides whether it names a UTF-8 locale.
LOCALE_CHARS_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
RCTL_AMOUNT_RE = re.compile(r"[0-9]{1,15}[kKmMgGtT]?")
VM_SIZE_RE = re.compile(r"[0-9]{1,15}[KMGT]?")
# An AGENT_DIR component: no blanks, quotes or shell characters; "." and ".." refused apart.
PATH_PART_RE = re.compile(r"[A-Za-z0-9_.-]{1,255}")
# A git ref as SOUL_REF may name it (git check-ref-format, without the exotic forms).
GIT_REF_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,254}")
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
# docs/freebsd.md#interface-name-length: interface names, at most 15 characters (IFNAMSIZ - 1).
INTERFACE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,13}[0-9]")
# A release Bastille bootstraps: 15.0-RELEASE, 14.3-RELEASE-p2, 15.0-BETA3, 16.0-CURRENT.
RELEASE_RE = re.compile(r"[0-9]{1,2}\.[0-9]-(?:RELEASE(?:-p[0-9]{1,3})?|BETA[0-9]{1,2}|RC[0-9]{1,2}|STABLE|CURRENT)")
# vm_dir: a path, or vm-bhyve's "zfs:pool/dataset" (docs/freebsd.md#vm-bhyve).
VM_DIR_RE = re.compile(r"(?:zfs:[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*|(?:/[A-Za-z0-9_.-]+)+)")

# ASSISTANT_NAME is shown, never parsed: letters of any script (with their combining
# marks), digits, spaces and simple punctuation; no quotes, `$`, backquote, backslash or
# control characters, and not longer than a name.
ASSISTANT_NAME_MAX = 64
ASSISTANT_NAME_PUNCT = frozenset(" .,-()!?:")
AGENT_COMMAND_MAX = 1024
SOUL_REPO_MAX = 2048

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
# The oldest supported release: a jail's userland must not be newer than the host's kernel,
# and render stays offline, so the default runs on every supported kernel (docs/freebsd.md#jail-release).
DEFAULT_RELEASE = "14.3-RELEASE"
DEFAULT_PACKAGES = ("tmux", "node", "git")
# Quad9's two public resolvers: they answer from any jail that has NAT, with no host setup.
DEFAULT_JAIL_NAMESERVERS = (IPv4Address("9.9.9.9"), IPv4Address("149.112.112.112"))
PACKAGE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
DEFAULT_VM_UPLINK = IPv4Network("10.255.0.0/24")
# A guest resolves through a public resolver unless the inventory names its own
# (warden_guest_nameservers): the host runs no resolver on the uplink.
DEFAULT_GUEST_NAMESERVERS = (IPv4Address("9.9.9.9"),)

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

SECRET_KEY_RE = re.compile(
    r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE|COOKIE|(?:^|_)(?:PASS|PW|PWD|AUTH|DSN)(?:_|$)",
    re.I,
)
# Keys the tool uses on the controller only: not copied into the .env on the host
# (docs/security.md#what-reaches-the-host). The host gets the soul as a bundle.
CONTROLLER_ONLY = frozenset({"SOUL_REPO"})


def is_secret_key(key: str) -> bool:
    """Keys whose values are never printed, diffed or logged (docs/design.md#secrets)."""
    return key not in OWNED and bool(SECRET_KEY_RE.search(key))


def shown(value: str, limit: int = 40) -> str:
    """VALUE as an error message may quote it: repr'd (line breaks visible), cut to LIMIT."""
    return repr(value[:limit]) + ("…" if len(value) > limit else "")


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


def bridge_mac(host: str, bridge: str) -> str:
    """The MAC warden pins on the host's bridge (the jails' and guests' gateway).

    if_bridge otherwise derives its address from the host's UUID and the name the bridge
    was created under (docs/freebsd.md#the-warden0-bridge), which is not known when the
    jails' static ARP entries for their gateway are rendered.  Same scheme as jail_mac;
    the `:` keeps it apart from every `host/jail` seed, and `checks.py` refuses a collision.
    """
    digest = hashlib.sha256(f"{host}/:bridge:{bridge}".encode()).digest()
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
        if not AGENT_NAME_RE.fullmatch(v):
            raise ValueError(
                "must be lowercase letters and digits, start with a letter, at most 16 "
                "characters: it becomes the rc.d name (a shell identifier, docs/freebsd.md#service-and-variable-names) "
                "and the prefix of Bastille VNET jail names (no '-' or '_', docs/freebsd.md#bastille-create)"
            )
        return v

    @field_validator("subnet_base")
    @classmethod
    def _base(cls, v: str) -> str:
        m = SUBNET_BASE_RE.fullmatch(v)
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
                raise ValueError(f"unknown jail role {shown(role)}; known: {' '.join(JAIL_ROLES)}")
        if len(set(v)) != len(v):
            raise ValueError("lists a role twice")
        return tuple(v)

    @field_validator("display_locale", "assistant_locale")
    @classmethod
    def _bcp47(cls, v: str) -> str:
        if not BCP47_RE.fullmatch(v):
            raise ValueError("must be a BCP 47 tag such as en-US or sl-SI")
        return v

    @field_validator("directory")
    @classmethod
    def _dir(cls, v: str, info: ValidationInfo) -> str:
        """The agent's own home or below: root makes this directory the agent's (docs/security.md)."""
        name = info.data.get("name")
        parts = v.rstrip("/").split("/")
        if (
            len(v) > 1024
            or parts[0] != ""
            or not all(PATH_PART_RE.fullmatch(p) and p not in (".", "..") for p in parts[1:])
        ):
            raise ValueError("must be an absolute path of letters, digits, '_', '.', '-', without '.' or '..' parts")
        home = parts[1:3] if parts[1:2] == ["home"] else parts[1:4]
        if name is not None and home not in (["home", name], ["usr", "home", name]):
            raise ValueError(
                f"is outside the home of agent {name}: the apply gives the agent's user this directory, "
                f"so it must be /home/{name} or a directory below it (or the same under /usr/home)"
            )
        return "/".join(parts)

    @field_validator("assistant_name")
    @classmethod
    def _display(cls, v: str) -> str:
        ok = (
            0 < len(v) <= ASSISTANT_NAME_MAX
            and v == v.strip()
            and unicodedata.category(v[0])[0] in "LN"
            and all(
                unicodedata.category(c)[0] in "LM" or unicodedata.category(c) == "Nd" or c in ASSISTANT_NAME_PUNCT
                for c in v
            )
        )
        if not ok:
            raise ValueError(
                f"must be a display name of at most {ASSISTANT_NAME_MAX} characters: letters of any script, "
                "digits, spaces and . , - ( ) ! ? : — no quotes, $, backquote, backslash or control characters"
            )
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not HOST_NAME_RE.fullmatch(v):
            raise ValueError("must be an inventory host name (letters, digits, '.', '-', '_')")
        return v

    @field_validator("git_jail", "cms_jail", "ollama_jail", "llamacpp_jail", "db_jail")
    @classmethod
    def _jail_chars(cls, v: str) -> str:
        if not JAIL_NAME_CHARS_RE.fullmatch(v):
            raise ValueError("must be a jail name: letters and digits, at most 64 (docs/freebsd.md#bastille-create)")
        return v

    @field_validator("system_locale")
    @classmethod
    def _locale_chars(cls, v: str) -> str:
        if not LOCALE_CHARS_RE.fullmatch(v):
            raise ValueError("must be a locale name such as en_US.UTF-8 (letters, digits, '_', '.', '-', '@')")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: str) -> str:
        if not v.strip() or len(v) > AGENT_COMMAND_MAX or not v.isprintable():
            raise ValueError(
                f"must be one line of at most {AGENT_COMMAND_MAX} printable characters (the command /bin/sh runs "
                "as the agent's user)"
            )
        return v

    @field_validator("soul_repo")
    @classmethod
    def _soul_repo(cls, v: str | None) -> str | None:
        if v is not None and not soul_repo_ok(v):
            raise ValueError(
                "must be a git URL (https://, ssh://, git://, file://, user@host:path) or an absolute path, "
                f"at most {SOUL_REPO_MAX} characters, without blanks or control characters"
            )
        return v

    @field_validator("soul_ref")
    @classmethod
    def _soul_ref(cls, v: str | None) -> str | None:
        if v is not None and (not GIT_REF_RE.fullmatch(v) or ".." in v or v.endswith((".lock", "/", "."))):
            raise ValueError("must be a git commit, branch or tag name (letters, digits, '_', '.', '/', '-')")
        return v

    @field_validator("requires", mode="before")
    @classmethod
    def _requires(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = tuple(part for part in re.split(r"[\s,]+", v) if part)
        for name in v:
            if not AGENT_NAME_RE.fullmatch(name):
                raise ValueError(f"{shown(name)} is not an agent name (space-separated agent names expected)")
        return tuple(v)

    @field_validator("memory_limit", "jail_memory_limit")
    @classmethod
    def _rctl_size(cls, v: str | None) -> str | None:
        if v is not None and not RCTL_AMOUNT_RE.fullmatch(v):
            raise ValueError("must be an rctl amount such as 2G or 512m (docs/freebsd.md#rctl)")
        return v

    @field_validator("vm_memory", "vm_disk")
    @classmethod
    def _size(cls, v: str) -> str:
        if not VM_SIZE_RE.fullmatch(v):
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
        """Values never to be shown or shipped in a soul: secret-looking keys, and the
        credentials inside any URL (DATABASE_URL=postgres://user:pass@…, SOUL_REPO)."""
        out = {k: v for k, v in self.extra.items() if is_secret_key(k) and v}
        for key, value in [*self.extra.items(), ("SOUL_REPO", self.soul_repo or "")]:
            for n, cred in enumerate(url_credentials(value)):
                out.setdefault(f"{key}#userinfo{n}", cred)
        return out


# `PORT`, `tcp/PORT` or `udp/PORT`, optionally `@USER`: the user whose socket serves it.
HOST_PORT_RE = re.compile(r"(?:(tcp|udp)/)?([0-9]{1,5})(?:@([a-z][a-z0-9_-]{0,31}))?")
HOST_PORT_OWNER = "root"


class PolicyError(ValueError):
    """A value the isolation policy (isolation.py) cannot use."""


def parse_host_ports(values: Iterable[object]) -> list[tuple[str, int, str]]:
    """`warden_jail_host_ports` items, `8080` (tcp), `udp/123` or `tcp/8443@squid`, as
    (proto, port, owner).  The owner is the user whose listening socket the jails may
    reach (pf.conf(5) user); root unless named (docs/isolation.md "Ports on the gateway")."""
    out: dict[tuple[str, int], str] = {}
    for v in values:
        text = str(v)
        m = HOST_PORT_RE.fullmatch(text)
        if m is None:
            raise PolicyError(
                f"warden_jail_host_ports: {text!r} is not PORT, tcp/PORT or udp/PORT (optionally @USER, "
                "the user whose socket serves it)"
            )
        proto, port, owner = m.group(1) or "tcp", int(m.group(2)), m.group(3) or HOST_PORT_OWNER
        if not 1 <= port <= 65535:
            raise PolicyError(f"warden_jail_host_ports: {port} is not a port")
        if owner == "unknown":
            # pf.conf(5) user: `unknown` is the user of forwarded packets, not a socket's owner
            raise PolicyError(f"warden_jail_host_ports: {text!r}: 'unknown' is not a user pf can match a socket by")
        if out.get((proto, port), owner) != owner:
            raise PolicyError(
                f"warden_jail_host_ports: {proto}/{port} is listed with two owners, {out[(proto, port)]} and {owner}:"
                " one user's socket serves a port"
            )
        out[(proto, port)] = owner
    return sorted((proto, port, owner) for (proto, port), owner in out.items())


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
    # bhyve guests (docs/freebsd.md#vm-bhyve): the image, the operator's key, the resolvers.
    guest_image: str | None = None
    guest_ssh_key: str | None = None
    guest_nameservers: tuple[IPv4Address, ...] = DEFAULT_GUEST_NAMESERVERS
    agent_links: tuple[tuple[str, str], ...] = ()
    # Ports on their gateway that jails may reach besides DNS and their agent's API port:
    # `8080` (tcp), `udp/123`, `tcp/8443@squid` (the socket's owner, root by default; docs/isolation.md).
    jail_host_ports: tuple[str, ...] = ()
    # Ports sshd listens on besides 22 and ansible_port, kept open by the fallback ruleset.
    ssh_ports: tuple[int, ...] = ()
    sample_root: str | None = None  # read this directory instead of SSH (the bundled example)
    # What the agents run that base FreeBSD lacks: the wrapper's tmux, the agent's node,
    # git for its repos (docs/freebsd.md#base-system-and-packages). The same default is in
    # roles/warden_agents/defaults/main.yml.
    packages: tuple[str, ...] = DEFAULT_PACKAGES
    # The jails' resolvers (`bastille create -n`); empty keeps Bastille's copy of the host's
    # resolv.conf, which fails in a VNET jail when it names 127.0.0.1 (docs/freebsd.md#dns-in-vnet-jails).
    jail_nameservers: tuple[IPv4Address, ...] = DEFAULT_JAIL_NAMESERVERS
    source: Path = Path("inventory/hosts.yml")
    line: int | None = None
    ansible_vars: Mapping[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not HOST_NAME_RE.fullmatch(v):
            raise ValueError("is not a host name: letters, digits, '.', '-', '_', at most 63 characters")
        return v

    @field_validator("ext_if", "bridge", "bridge_clone")
    @classmethod
    def _interface(cls, v: str | None) -> str | None:
        if v is not None and not INTERFACE_RE.fullmatch(v):
            raise ValueError(
                f"{shown(v)} is not a valid interface name (letters/digits, ending in a digit, at most 15 characters: "
                "docs/freebsd.md#interface-name-length)"
            )
        return v

    @field_validator("vm_dir")
    @classmethod
    def _vm_dir(cls, v: str) -> str:
        if not VM_DIR_RE.fullmatch(v) or any(p in (".", "..") for p in v.split("/")) or len(v) > 1024:
            raise ValueError(f"{shown(v)} is not an absolute path or zfs:pool/dataset (docs/freebsd.md#vm-bhyve)")
        return v

    @field_validator("release")
    @classmethod
    def _release(cls, v: str) -> str:
        if not RELEASE_RE.fullmatch(v):
            raise ValueError(
                f"{shown(v)} is not a FreeBSD release name such as 15.0-RELEASE (docs/freebsd.md#jail-release)"
            )
        return v

    @field_validator("packages")
    @classmethod
    def _packages(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if not PACKAGE_NAME_RE.fullmatch(name):
                raise ValueError(f"{shown(name)} is not a package name as `pkg install` takes it, e.g. tmux")
        return v

    @field_validator("agent_links")
    @classmethod
    def _links(cls, v: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        for pair in v:
            if not all(AGENT_NAME_RE.fullmatch(n) for n in pair):
                raise ValueError(f"{shown(str(list(pair)))} is not a pair of agent names")
        return v

    @field_validator("jail_host_ports", mode="before")
    @classmethod
    def _host_ports(cls, v: Any) -> Any:
        items = tuple(str(x) for x in (v if isinstance(v, list | tuple) else [v]))
        try:
            parse_host_ports(items)
        except PolicyError as exc:
            raise ValueError(str(exc)) from exc
        return items


_SCP_LIKE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}@[A-Za-z0-9][A-Za-z0-9.-]{0,252}:[^:\s][^\s]*")
_URL = re.compile(r"(?:https|http|ssh|git|file)://[^\s]+")


def soul_repo_ok(repo: str) -> bool:
    """A SOUL_REPO git may fetch: a URL of a plain transport, user@host:path, or an absolute path.

    Refused: a leading '-' (git would read an option), `<transport>::<address>` remote
    helpers such as `ext::` (runs a command) and `fd::` (waits on a descriptor forever,
    gitremote-helpers(7)), blanks and control characters.
    """
    if len(repo) > SOUL_REPO_MAX or not repo.isprintable() or any(c.isspace() for c in repo) or "::" in repo:
        return False
    return bool(_URL.fullmatch(repo) or _SCP_LIKE.fullmatch(repo) or (repo.startswith("/") and "\\" not in repo))


# e0a_<jail> must fit IFNAMSIZ (15 characters) or Bastille falls back to numbered epairs
# (docs/freebsd.md#interface-name-length): a jail name of at most 11 characters.
JAIL_NAME_MAX = 11
ROLE_SUFFIX = {"git": "git", "cms": "cms", "ollama": "llm", "llamacpp": "llm", "db": "db"}


def default_jail_name(agent: str, role: str) -> str:
    """`<agent><role>` when it fits in 11 characters (every name this tool wrote before);
    else `<agent><short role>` (git, cms, llm, db); an agent name too long even for that
    keeps its first characters and gains 3 hex digits of its SHA-256, so two long names
    sharing a prefix get different jails (check still refuses the rare collision)."""
    if len(agent + role) <= JAIL_NAME_MAX:
        return agent + role
    suffix = ROLE_SUFFIX[role]
    room = JAIL_NAME_MAX - len(suffix)
    if len(agent) <= room:
        return agent + suffix
    return agent[: room - 3] + hashlib.sha256(agent.encode()).hexdigest()[:3] + suffix


def role_keys_for(roles: str) -> frozenset[str]:
    """The .env keys (address and jail name) of the roles listed in WARDEN_JAILS."""
    return frozenset(k for r in roles.split() if r in ROLE_KEYS for k in ROLE_KEYS[r])


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
    if base and SUBNET_BASE_RE.fullmatch(base):
        out.setdefault("WARDEN_SUBNET", f"{base}.0/24")
        out.setdefault("WARDEN_GATEWAY", f"{base}.{SLOT['gateway']}")
        for role, (ip_key, _) in ROLE_KEYS.items():
            out.setdefault(ip_key, f"{base}.{SLOT[role]}")
    out.setdefault("WARDEN_JAILS", " ".join(DEFAULT_JAILS))
    for role, (_, jail_key) in ROLE_KEYS.items():
        # `<agent><role>`, not Clawdie's `<agent>-<role>` (docs/freebsd.md#clawdie-conventions).
        out.setdefault(jail_key, default_jail_name(name, role))
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
