"""The agent registry: one directory per agent holding its `.env` (README.md#the-agent-env).

Loading never stops at the first bad file: every file's problems are collected so that
`invoke check` can show them all.  Adding and removing are done under one file lock so
that two `add-agent` runs cannot choose the same subnet or lose each other's write.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from pydantic import ValidationError

from .envfile import EnvFile, EnvFileError
from .models import (
    AGENT_NAME_RE,
    DEFAULT_API_PORT,
    OWNED_KEYS,
    ROLE_KEYS,
    Agent,
    Host,
    derive_defaults,
    pydantic_messages,
    split_owned,
)
from .problems import Location, Problem

ENV_NAME = ".env"
BASE_DERIVED = frozenset({"WARDEN_SUBNET", "WARDEN_GATEWAY", *(ip for ip, _ in ROLE_KEYS.values())})
LOCK_NAME = ".registry.lock"


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


def env_path(agents_dir: Path, name: str) -> Path:
    return agents_dir / name / ENV_NAME


def iter_env_files(agents_dir: Path) -> list[Path]:
    if not agents_dir.is_dir():
        return []
    return sorted(p / ENV_NAME for p in agents_dir.iterdir() if p.is_dir() and (p / ENV_NAME).is_file())


def only_host(hosts: Sequence[Host]) -> str | None:
    return hosts[0].name if len(hosts) == 1 else None


def build_agent(
    path: Path, values: Mapping[str, str], lines: Mapping[str, int], hosts: Sequence[Host]
) -> tuple[Agent | None, list[Problem]]:
    """Validate one agent's values; on failure, one Problem per bad key, each with its line."""
    owned, extra = split_owned(values)
    derived = derive_defaults(owned, only_host(hosts))
    try:
        agent = Agent.model_validate({**derived, "source": path, "lines": dict(lines), "extra": extra})
    except ValidationError as exc:
        problems = []
        messages = pydantic_messages(exc)
        if any(key == "AGENT_SUBNET_BASE" for key, _ in messages):
            # The addresses derive from the base: one error for the cause, not one per address.
            messages = [(k, m) for k, m in messages if k in owned or k not in BASE_DERIVED]
        for key, msg in messages:
            fix = _FIXES.get(key, f"set {key} to a valid value in {path}")
            if key == "AGENT_HOST":
                names = ", ".join(h.name for h in hosts) or "none in the inventory"
                fix = f"set AGENT_HOST to one of the inventory hosts ({names})"
            problems.append(Problem((Location(path, lines.get(key), key),), f"{key} {msg}", fix, rule="value"))
        return None, problems
    return agent, []


_FIXES = {
    "AGENT_NAME": "use lowercase letters and digits only, e.g. 'atlas2' instead of 'atlas-2'",
    "AGENT_SUBNET_BASE": "write three octets, e.g. AGENT_SUBNET_BASE=10.0.1",
    "AGENT_PLACEMENT": "use AGENT_PLACEMENT=host or AGENT_PLACEMENT=bhyve",
    "WARDEN_SUBNET": "use the agent's /24, e.g. WARDEN_SUBNET=10.0.1.0/24",
    "CONTROLPLANE_API_PORT": "use a free TCP port between 1024 and 65535, e.g. 3101",
}


def load_fleet(agents_dir: Path, hosts: list[Host], host_problems: Sequence[Problem] = ()) -> Fleet:
    fleet = Fleet(hosts=hosts, agents=[], problems=list(host_problems))
    for path in iter_env_files(agents_dir):
        try:
            env = EnvFile.load(path)
        except EnvFileError as exc:
            fleet.problems.append(
                Problem((Location(path, exc.line),), str(exc).split(": ", 1)[1], "see the message", rule="syntax")
            )
            continue
        values = env.values()
        lines = env.line_numbers()
        fleet.raw[path] = values
        agent, problems = build_agent(path, values, lines, hosts)
        fleet.problems.extend(problems)
        if agent is not None:
            fleet.agents.append(agent)
    return fleet


# -- allocation ------------------------------------------------------------------------


def used_networks(fleet: Fleet) -> list[IPv4Network]:
    nets = [a.subnet for a in fleet.agents]
    for values in fleet.raw.values():
        base = values.get("AGENT_SUBNET_BASE", "")
        with suppress(ValueError):
            nets.append(IPv4Network(f"{base}.0/24"))
    for h in fleet.hosts:
        nets.extend(h.host_networks)
        nets.append(h.vm_uplink)
    return nets


def next_free_subnet(pool: IPv4Network, taken: Sequence[IPv4Network]) -> IPv4Network | None:
    """The lowest /24 of POOL that overlaps nothing TAKEN.

    Sort the taken networks once and sweep: O(n log n), not a /24-by-/24 scan against
    every agent (docs/design.md#quality-bars).
    """
    relevant = sorted((int(n.network_address), int(n.broadcast_address)) for n in taken if n.overlaps(pool))
    candidate = int(pool.network_address) if pool.prefixlen <= 24 else None
    if candidate is None:
        return None
    end = int(pool.broadcast_address)
    for lo, hi in relevant:
        if hi < candidate:
            continue
        if lo > candidate + 255:
            break
        # overlap: move past it, aligned up to the next /24
        candidate = ((hi + 1) + 255) // 256 * 256
    if candidate + 255 > end:
        return None
    return IPv4Network((candidate, 24))


def next_free_port(agents: Sequence[Agent], raw_ports: Sequence[int] = ()) -> int:
    used = {a.api_port for a in agents} | set(raw_ports)
    port = DEFAULT_API_PORT
    while port in used:
        port += 1
    return port


def next_free_vm_ip(host: Host, agents: Sequence[Agent]) -> IPv4Address:
    """Guests get uplink addresses from .10 upward; .1 is the host's (docs/freebsd.md#vm-bhyve)."""
    used = {a.vm_ip for a in agents if a.vm_ip is not None}
    for offset in range(10, host.vm_uplink.num_addresses - 1):
        ip = host.vm_uplink.network_address + offset
        if ip not in used:
            return ip
    raise RegistryError(
        f"{host.source}: host {host.name}: warden_vm_uplink {host.vm_uplink} has no free address",
        "give warden_vm_uplink a larger network",
    )


# -- add / remove ----------------------------------------------------------------------


class RegistryError(Exception):
    def __init__(self, message: str, fix: str) -> None:
        super().__init__(f"{message} (fix: {fix})")
        self.message = message
        self.fix = fix


@contextmanager
def locked(agents_dir: Path, timeout: float = 60) -> Iterator[None]:
    from filelock import FileLock

    agents_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(agents_dir / LOCK_NAME), timeout=timeout):
        yield


@dataclass(frozen=True)
class AddRequest:
    name: str
    subnet: str | None = None
    host: str | None = None
    placement: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)


def add_agent(agents_dir: Path, hosts: list[Host], req: AddRequest) -> tuple[Agent, dict[str, str]]:
    """Choose what is free, write agents/<name>/.env in full, return the agent and its values.

    The whole choose-and-write runs under the registry lock; the new file is checked
    together with the fleet before it is written, so a refused add leaves no trace.
    """
    from .checks import check_fleet

    if not AGENT_NAME_RE.match(req.name):
        raise RegistryError(
            f"agent name {req.name!r} is not valid: lowercase letters and digits, starting with "
            "a letter, at most 16 characters (rc.d name and VNET jail prefix: "
            "docs/freebsd.md#service-and-variable-names, docs/freebsd.md#bastille-create)",
            f"use e.g. {''.join(c for c in req.name.lower() if c.isalnum())[:16] or 'atlas'!r}",
        )
    with locked(agents_dir):
        path = env_path(agents_dir, req.name)
        if path.exists():
            raise RegistryError(
                f"{path}: agent {req.name!r} already exists", f"pick another name or `invoke remove-agent {req.name}`"
            )
        fleet = load_fleet(agents_dir, hosts)
        host = _choose_host(hosts, req.host)
        values: dict[str, str] = {"AGENT_NAME": req.name, "AGENT_HOST": host.name}
        if req.placement:
            values["AGENT_PLACEMENT"] = req.placement
        values.update(req.settings)
        if req.subnet:
            values["AGENT_SUBNET_BASE"] = req.subnet.removesuffix(".0/24").removesuffix(".0")
            if values["AGENT_SUBNET_BASE"].count(".") == 3:
                values["AGENT_SUBNET_BASE"] = values["AGENT_SUBNET_BASE"].rsplit(".", 1)[0]
        else:
            net = next_free_subnet(host.pool, used_networks(fleet))
            if net is None:
                raise RegistryError(
                    f"{host.source}: host {host.name}: no free /24 left in warden_pool {host.pool}",
                    "enlarge warden_pool or give --subnet",
                )
            values["AGENT_SUBNET_BASE"] = str(net.network_address).rsplit(".", 1)[0]
        if "CONTROLPLANE_API_PORT" not in values:
            same_host = [a for a in fleet.agents if a.host == host.name]
            values["CONTROLPLANE_API_PORT"] = str(next_free_port(same_host))
        if values.get("AGENT_PLACEMENT") == "bhyve" and "WARDEN_VM_IP" not in values:
            values["WARDEN_VM_IP"] = str(next_free_vm_ip(host, fleet.agents_on(host.name)))
        full = derive_defaults(values, host.name)
        agent, problems = build_agent(path, full, {}, hosts)
        if agent is None:
            raise RegistryError("; ".join(p.message for p in problems), problems[0].fix)
        trial = Fleet(hosts=hosts, agents=[*fleet.agents, agent], raw=fleet.raw)
        mine = [p for p in check_fleet(trial) if p.is_error and any(loc.file == path for loc in p.locations)]
        if mine:
            raise RegistryError("; ".join(str(p) for p in mine), mine[0].fix)
        items = [(k, full[k]) for k in OWNED_KEYS if full.get(k, "") != ""]
        items += [(k, v) for k, v in req.settings.items() if k not in OWNED_KEYS]
        env = EnvFile.new(
            path, f"{req.name}: written by `invoke add-agent`; derived values are spelled out and may be edited.", items
        )
        env.write(0o600)
        return agent, {k: full[k] for k in OWNED_KEYS if k in full}


def _choose_host(hosts: Sequence[Host], wanted: str | None) -> Host:
    if wanted:
        for h in hosts:
            if h.name == wanted:
                return h
        names = ", ".join(h.name for h in hosts) or "none"
        raise RegistryError(
            f"host {wanted!r} is not in the inventory (hosts: {names})",
            "add it to inventory/hosts.yml or pick one of those",
        )
    if len(hosts) == 1:
        return hosts[0]
    if not hosts:
        raise RegistryError(
            "the inventory lists no hosts", "add a host to inventory/hosts.yml (or set PROVISION_INVENTORY)"
        )
    raise RegistryError(
        f"the inventory has {len(hosts)} hosts ({', '.join(h.name for h in hosts)})",
        "say which one with --host",
    )


def remove_agent(agents_dir: Path, name: str) -> Path:
    with locked(agents_dir):
        path = env_path(agents_dir, name)
        if not path.exists():
            known = ", ".join(p.parent.name for p in iter_env_files(agents_dir)) or "none"
            raise RegistryError(f"{path}: no agent {name!r} (agents: {known})", "check the name with `invoke list`")
        shutil.rmtree(path.parent)
        return path.parent
