"""The agent registry: one directory per agent holding its `.env` (README.md#the-agent-env).

Loading never stops at the first bad file: every file's problems are collected so that
`invoke check` can show them all.  Adding and removing are done under one file lock so
that two `add-agent` runs cannot choose the same subnet or lose each other's write.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    Fleet,
    Host,
    derive_defaults,
    pydantic_messages,
    role_keys_for,
    split_owned,
)
from .problems import Location, Problem

ENV_NAME = ".env"
BASE_DERIVED = frozenset({"WARDEN_SUBNET", "WARDEN_GATEWAY", *(ip for ip, _ in ROLE_KEYS.values())})
LOCK_NAME = ".registry.lock"


class RegistryError(Exception):
    """A registry command refused: the cause and, separately, the fix in the user's terms."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})"


def agent_dir(agents_dir: Path, name: str) -> Path:
    """agents/<name>, only for a valid agent name whose directory stays inside the registry.

    A registry command never touches a path outside the agents directory: the name is
    checked before it becomes a path (`/tmp/x`, `../x`, `atlas\n` are refused), and a
    directory that is a symlink out of the registry is refused too (docs/registry.md).
    """
    if not AGENT_NAME_RE.fullmatch(name):
        raise RegistryError(
            f"{name!r} is not an agent name: lowercase letters and digits, starting with a letter, "
            "at most 16 characters",
            "give the agent's name as `invoke list` shows it",
        )
    root = agents_dir.resolve()
    path = agents_dir / name
    if path.is_symlink() or path.resolve().parent != root:
        raise RegistryError(
            f"{path} is a symlink (to {path.resolve()}): a registry command only works inside {root}",
            f"replace the link by the agent's directory, or remove it by hand if {name} is not an agent",
        )
    return path


def env_path(agents_dir: Path, name: str) -> Path:
    return agent_dir(agents_dir, name) / ENV_NAME


def require_agents_dir(agents_dir: Path) -> None:
    """A missing or mistyped agents directory is an error, never "no agents" (docs/registry.md).

    Reading zero agents from a typo would make the next apply remove every agent.
    """
    if agents_dir.is_dir():
        return
    if agents_dir.exists():
        raise RegistryError(
            f"the agents directory {agents_dir} is not a directory",
            "point PROVISION_AGENTS_DIR at the directory that holds <agent>/.env files",
        )
    raise RegistryError(
        f"the agents directory {agents_dir} does not exist",
        "check PROVISION_AGENTS_DIR for a typo, or create the first agent with `invoke add-agent NAME`",
    )


def prepare_agents_dir(agents_dir: Path) -> bool:
    """Create the agents directory for a first `add-agent`; True when it was created.

    Only its last component is created: a missing parent is more likely a typo in
    PROVISION_AGENTS_DIR than a wish for a new tree.
    """
    if agents_dir.is_dir():
        return False
    if agents_dir.exists():
        require_agents_dir(agents_dir)  # raises: it is a file
    if not agents_dir.parent.is_dir():
        raise RegistryError(
            f"the agents directory {agents_dir} does not exist, nor does its parent {agents_dir.parent}",
            "check PROVISION_AGENTS_DIR for a typo, or create the parent directory first",
        )
    agents_dir.mkdir(mode=0o700)
    return True


def suggest_name(wrong: str) -> str:
    """A valid agent name close to WRONG: lowercase letters and digits, starting with a letter."""
    kept = "".join(c for c in wrong.lower() if c.isascii() and c.isalnum()).lstrip("0123456789")
    return kept[:16] or "atlas"


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
        if any(key == "AGENT_NAME" for key, _ in messages):
            # Names, directory and display name derive from AGENT_NAME: report the cause only.
            messages = [(k, m) for k, m in messages if k in owned]
        for key, msg in messages:
            fix = _FIXES.get(key, f"set {key} to a valid value in {path}")
            if key == "AGENT_HOST":
                names = ", ".join(h.name for h in hosts) or "none in the inventory"
                fix = f"set AGENT_HOST to one of the inventory hosts ({names})"
            elif key == "AGENT_DIR":
                name = derived.get("AGENT_NAME", "<agent>")
                fix = f"set AGENT_DIR=/home/{name}/clawdie (the default: delete the line) or below /home/{name}"
            problems.append(Problem((Location(path, lines.get(key), key),), f"{key} {msg}", fix, rule="value"))
        return None, problems
    return agent, []


_FIXES = {
    "AGENT_NAME": "use lowercase letters and digits only, e.g. 'atlas2' instead of 'atlas-2'",
    "AGENT_SUBNET_BASE": "write three octets, e.g. AGENT_SUBNET_BASE=10.0.1",
    "AGENT_PLACEMENT": "use AGENT_PLACEMENT=host or AGENT_PLACEMENT=bhyve",
    "WARDEN_SUBNET": "use the agent's /24, e.g. WARDEN_SUBNET=10.0.1.0/24",
    "CONTROLPLANE_API_PORT": "use a free TCP port between 1024 and 65535, e.g. 3101",
    "ASSISTANT_NAME": "write the name with letters, digits and spaces only, e.g. ASSISTANT_NAME='Živa Novak'",
    "SYSTEM_LOCALE": "use a FreeBSD locale name, e.g. SYSTEM_LOCALE=en_US.UTF-8 (see `locale -a` on the host)",
    "AGENT_COMMAND": "write the command on one line, e.g. AGENT_COMMAND='node dist/index.js'",
    "SOUL_REPO": "use the repo's https:// or ssh:// URL, user@host:path, or an absolute path",
    "SOUL_REF": "run `invoke soul-pin <agent>` to write the commit SOUL_REF resolves to",
    **{
        key: "use letters and digits only, e.g. <agent><role> such as atlasgit"
        for key in ("GIT_JAIL_NAME", "CMS_JAIL_NAME", "OLLAMA_JAIL_NAME", "LLAMA_CPP_JAIL_NAME", "DB_JAIL_NAME")
    },
}


def owned_key_like(key: str) -> str | None:
    """The owned key KEY looks like a typo of (`AGENT_PLACMENT` → AGENT_PLACEMENT), else None.

    Unknown keys are the application's and are kept (docs/registry.md), so a near miss
    is a warning, not an error; the cutoff is high so `AGENT_MEMORY` is not flagged.
    """
    import difflib

    if key in OWNED_KEYS:
        return None
    close = difflib.get_close_matches(key, OWNED_KEYS, n=1, cutoff=0.85)
    return close[0] if close else None


def key_warnings(path: Path, env: EnvFile) -> list[Problem]:
    """Warnings for one .env: keys that look like typos of owned keys, keys set twice."""
    from .problems import Severity

    out: list[Problem] = []
    seen: dict[str, int] = {}
    for line in env.lines:
        if line.key is None:
            continue
        if line.key in seen:
            out.append(
                Problem(
                    (Location(path, line.lineno, line.key),),
                    f"{line.key} is set twice (lines {seen[line.key]} and {line.lineno}); the last one counts",
                    f"delete one of the two {line.key} lines",
                    Severity.WARNING,
                    rule="key-twice",
                )
            )
        seen[line.key] = line.lineno
    for key, lineno in seen.items():
        like = owned_key_like(key)
        if like is not None:
            out.append(
                Problem(
                    (Location(path, lineno, key),),
                    f"{key} is not a key this tool reads; did you mean {like}?",
                    f"rename it to {like} (or ignore this if {key} is for the agent's application)",
                    Severity.WARNING,
                    rule="key-typo",
                )
            )
    return out


def load_fleet(agents_dir: Path, hosts: list[Host], host_problems: Sequence[Problem] = ()) -> Fleet:
    """Every agent of the registry; a missing agents directory raises RegistryError."""
    require_agents_dir(agents_dir)
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
        fleet.problems.extend(key_warnings(path, env))
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


@contextmanager
def locked(agents_dir: Path, timeout: float = 60) -> Iterator[None]:
    from filelock import FileLock

    with FileLock(str(agents_dir / LOCK_NAME), timeout=timeout):
        yield


# The add-agent options that stand for an owned key: messages name the option the user
# typed, not the .env key it becomes (docs/registry.md#messages).
FLAG_KEYS = {
    "AGENT_SUBNET_BASE": "--subnet",
    "AGENT_HOST": "--host",
    "AGENT_PLACEMENT": "--placement",
    "CONTROLPLANE_API_PORT": "--port",
    "WARDEN_JAILS": "--jails",
    "SYSTEM_LOCALE": "--system-locale",
    "DISPLAY_LOCALE": "--locale",
    "ASSISTANT_LOCALE": "--locale",
    "SOUL_REPO": "--soul-repo",
    "SOUL_REF": "--soul-ref",
}


@dataclass(frozen=True)
class AddRequest:
    """What the user asked for.  SETTINGS are KEY=VALUE pairs; FLAGS says which of them
    came from an option (key → `--port`), so that messages name what was typed."""

    name: str
    subnet: str | None = None
    host: str | None = None
    placement: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    flags: Mapping[str, str] = field(default_factory=dict)

    def said(self, key: str) -> str:
        """How the user wrote KEY: `--subnet 10.0.1` or `--set AGENT_SUBNET_BASE=10.0.1`."""
        value = self.settings.get(key, "")
        if key in self.flags:
            return f"{self.flags[key]} {value}"
        return f"--set {key}={value}"

    def fix_for(self, key: str, value: str) -> str:
        """The fix in the user's terms: the option they typed for KEY, with VALUE."""
        if key in self.flags:
            return f"{self.flags[key]} {value}"
        return f"--set {key}={value}"


def parse_subnet(text: str, said: str = "", fix_for: Callable[[str], str] | None = None) -> str:
    """The base (first three octets) of the /24 TEXT names: `10.0.1`, `10.0.1.0`, `10.0.1.0/24`.

    Any other prefix length is refused rather than narrowed to a /24: `10.0.9.0/16` may
    be a typo for a pool, and quietly taking its first /24 would hide it.  SAID is how
    the user wrote it and FIX_FOR spells a value the same way, for the message.
    """
    said = said or f"--subnet {text}"
    fix_for = fix_for or (lambda v: f"--subnet {v}")
    text = text.strip()
    address, slash, prefix = text.partition("/")
    octets = address.split(".")
    if len(octets) == 3:
        address += ".0"
    try:
        net = IPv4Network(f"{address}/{prefix if slash else 24}", strict=False)
    except ValueError:
        raise RegistryError(
            f"{said} is not a /24: expected three octets (10.0.1) or a network (10.0.1.0/24)",
            f"give e.g. {fix_for('10.0.1')}",
        ) from None
    base = str(IPv4Network(f"{address}/24", strict=False).network_address).rsplit(".", 1)[0]
    if net.prefixlen != 24:
        raise RegistryError(
            f"{said} is a /{net.prefixlen}, not a /24: every agent gets exactly one /24",
            f"give one /24, e.g. {fix_for(base)}",
        )
    if str(net.network_address) != address:
        raise RegistryError(
            f"{said} is an address inside {net}, not the network itself",
            f"give the /24 as {fix_for(base)}",
        )
    return base


def _reconcile(req: AddRequest) -> AddRequest:
    """Fold --subnet/--host/--placement into the settings; an option and a `--set` of the
    same key that disagree are refused (never one silently over the other)."""
    settings = dict(req.settings)
    flags = dict(req.flags)
    if settings.get("AGENT_NAME", req.name) != req.name:
        raise RegistryError(
            f"--set AGENT_NAME={settings['AGENT_NAME']} disagrees with the agent name {req.name}",
            "drop --set AGENT_NAME: the name is the first argument",
        )
    for key, flag, value in (
        ("AGENT_SUBNET_BASE", "--subnet", req.subnet),
        ("AGENT_HOST", "--host", req.host),
        ("AGENT_PLACEMENT", "--placement", req.placement),
    ):
        if value is None:
            continue
        if (
            key in settings
            and settings[key] != value
            and not (key == "AGENT_SUBNET_BASE" and _same_subnet(settings[key], value))
        ):
            raise RegistryError(
                f"{flag} {value} and --set {key}={settings[key]} disagree",
                f"give only one of them: {flag} or --set {key}",
            )
        settings[key] = value
        flags[key] = flag
    return AddRequest(req.name, settings=settings, flags=flags)


def _same_subnet(a: str, b: str) -> bool:
    try:
        return parse_subnet(a) == parse_subnet(b)
    except RegistryError:
        return False


def add_agent(agents_dir: Path, hosts: list[Host], req: AddRequest) -> tuple[Agent, dict[str, str]]:
    """Choose what is free, write agents/<name>/.env in full, return the agent and its values.

    The whole choose-and-write runs under the registry lock; the new file is checked
    together with the fleet before it is written, so a refused add leaves no trace.
    Owned keys the user gave (as options or `--set`) are kept as given or refused, never
    replaced by a chosen value.
    """
    from .checks import check_fleet

    if not AGENT_NAME_RE.fullmatch(req.name):
        raise RegistryError(
            f"agent name {req.name!r} is not valid: lowercase letters and digits, starting with "
            "a letter, at most 16 characters (it becomes the rc.d name and the VNET jail prefix: "
            "docs/freebsd.md#service-and-variable-names, docs/freebsd.md#bastille-create)",
            f"use e.g. {suggest_name(req.name)!r}",
        )
    req = _reconcile(req)
    given = dict(req.settings)
    if "AGENT_SUBNET_BASE" in given:
        given["AGENT_SUBNET_BASE"] = parse_subnet(
            given["AGENT_SUBNET_BASE"],
            req.said("AGENT_SUBNET_BASE"),
            lambda v: req.fix_for("AGENT_SUBNET_BASE", v),
        )
    prepare_agents_dir(agents_dir)
    with locked(agents_dir):
        path = env_path(agents_dir, req.name)
        if path.exists():
            raise RegistryError(
                f"{path}: agent {req.name!r} already exists", f"pick another name or `invoke remove-agent {req.name}`"
            )
        fleet = load_fleet(agents_dir, hosts)
        host = _choose_host(hosts, given.get("AGENT_HOST"))
        values: dict[str, str] = {"AGENT_NAME": req.name, "AGENT_HOST": host.name, **given}
        free_net = next_free_subnet(host.pool, used_networks(fleet))
        if "AGENT_SUBNET_BASE" not in values:
            if free_net is None:
                raise RegistryError(
                    f"{host.source}: host {host.name}: no free /24 left in warden_pool {host.pool}",
                    "enlarge warden_pool or give --subnet",
                )
            values["AGENT_SUBNET_BASE"] = str(free_net.network_address).rsplit(".", 1)[0]
        same_host = [a for a in fleet.agents if a.host == host.name]
        free_port = next_free_port(same_host)
        values.setdefault("CONTROLPLANE_API_PORT", str(free_port))
        if values.get("AGENT_PLACEMENT") == "bhyve" and "WARDEN_VM_IP" not in values:
            values["WARDEN_VM_IP"] = str(next_free_vm_ip(host, fleet.agents_on(host.name)))
        full = derive_defaults(values, host.name)
        agent, problems = build_agent(path, full, {}, hosts)
        if agent is None:
            raise _refusal(req, problems, free_net, free_port)
        trial = Fleet(hosts=hosts, agents=[*fleet.agents, agent], raw=fleet.raw)
        # A branch SOUL_REF is fine here: `invoke soul-pin` turns it into the commit check wants.
        mine = [
            p
            for p in check_fleet(trial)
            if p.is_error and p.rule != "soul-ref" and any(loc.file == path for loc in p.locations)
        ]
        if mine:
            raise _refusal(req, mine, free_net, free_port)
        # Only the address and jail-name keys of the roles this agent has.
        others = {k for pair in ROLE_KEYS.values() for k in pair} - role_keys_for(full.get("WARDEN_JAILS", ""))
        items = [(k, full[k]) for k in OWNED_KEYS if full.get(k, "") != "" and k not in others]
        items += [(k, v) for k, v in req.settings.items() if k not in OWNED_KEYS]
        env = EnvFile.new(
            path, f"{req.name}: written by `invoke add-agent`; derived values are spelled out and may be edited.", items
        )
        env.write(0o600)
        return agent, {k: full[k] for k in OWNED_KEYS if k in full}


def _refusal(
    req: AddRequest,
    problems: Sequence[Problem],
    free_net: IPv4Network | None,
    free_port: int,
    typed: frozenset[str] | None = None,
) -> RegistryError:
    """One message per cause, cause first, the fix naming the option the user typed.

    A subnet that overlaps another agent's also duplicates each of its addresses; those
    follow from the one cause and are not repeated (docs/registry.md#messages).
    """
    typed = frozenset(req.settings) if typed is None else typed  # keys the user gave, the others are the file's
    overlap = [p for p in problems if p.rule == "subnet-overlap"]
    if overlap or any(p.rule == "subnet-base" for p in problems):
        problems = [p for p in problems if p.rule not in ("duplicate-ip", "ip-duplicate")] or list(problems)
    causes: list[str] = []
    fixes: list[str] = []
    for p in problems:
        others = [str(loc) for loc in p.locations if loc.file != req_path(p, req)]
        key = next((loc.key for loc in p.locations if loc.file == req_path(p, req) and loc.key), None)
        cause = p.message
        if key is not None and key in typed:
            # "CONTROLPLANE_API_PORT=3100 is used…" reads "--port 3100 is used…" to who typed --port
            if cause.startswith(f"{key}={req.settings[key]} "):
                cause = f"{req.said(key)} {cause[len(key) + len(req.settings[key]) + 2 :]}"
            else:
                cause = f"{req.said(key)}: {cause.removeprefix(f'{key} ')}"
        cause += f" ({'; '.join(others)})" if others else ""
        if p.rule == "subnet-overlap":
            where = f"take the next free /24 ({free_net})" if free_net else "take another /24"
            if "AGENT_SUBNET_BASE" not in typed:
                fix = "give --subnet with a free /24"
            elif typed == frozenset(req.settings):
                fix = f"omit --subnet to {where}, or give another /24"
            else:
                fix = f"give --subnet another /24 (the next free one: {free_net})" if free_net else "give another /24"
        elif p.rule == "duplicate-controlplane_api_port":
            fix = f"use {req.fix_for('CONTROLPLANE_API_PORT', str(free_port))} (free on this host), or omit it"
        elif key is not None and key in typed and p.fix.startswith(f"set {key} to a valid value"):
            fix = f"give {req.flags.get(key, f'--set {key}=')} a valid value"  # not the file: it is not written
        elif key is not None and key in req.flags:
            fix = p.fix.replace(f"{key}=", f"{req.flags[key]} ")
        else:
            fix = p.fix
        if cause not in causes:
            causes.append(cause)
        if fix not in fixes:
            fixes.append(fix)
    return RegistryError("; ".join(causes), "; ".join(fixes))


def req_path(problem: Problem, req: AddRequest) -> Path:
    """The new agent's .env among a problem's locations (the one whose agent is REQ's)."""
    for loc in problem.locations:
        if loc.file.parent.name == req.name:
            return loc.file
    return Path("-")


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


@dataclass(frozen=True)
class Removal:
    """What `remove-agent` would delete, and what would break or be lost (docs/registry.md).

    Computed before anything is deleted so the prompt, `--dry-run` and the refusal all
    say the same thing.
    """

    name: str
    directory: Path
    contents: tuple[str, ...]  # entries of agents/<name>/, each with a short description
    lost_work: tuple[str, ...]  # data only this directory holds (a soul repo's unpushed work, own files)
    dependents: tuple[str, ...]  # agents whose registry entries name this one

    @property
    def needs_force(self) -> bool:
        return bool(self.lost_work or self.dependents)


def _git_lines(repo: Path, *args: str) -> list[str] | None:
    """Output lines of a read-only git command in REPO, or None when it is not a repository."""
    import subprocess

    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.splitlines() if done.returncode == 0 else None


def _describe_entry(entry: Path) -> tuple[str, str | None]:
    """(description, why-it-would-be-lost or None) for one entry of an agent's directory."""
    rel = entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else "")
    if entry.name == ENV_NAME:
        return f"{rel} (the agent's settings)", None
    if entry.is_symlink() or not entry.is_dir():
        return rel, f"{rel} is not written by the tool"
    status = _git_lines(entry, "status", "--porcelain")
    if status is None:
        return rel, f"{rel} is not written by the tool"
    unpushed = _git_lines(entry, "log", "--oneline", "--branches", "--not", "--remotes") or []
    lost = []
    if status:
        lost.append(f"{len(status)} uncommitted change(s)")
    if unpushed:
        lost.append(f"{len(unpushed)} commit(s) on no remote")
    why = f"{rel} is a git repository with {' and '.join(lost)}" if lost else None
    return f"{rel} (a git repository)", why


def removal_plan(agents_dir: Path, name: str, fleet: Fleet | None = None) -> Removal:
    """What removing NAME deletes, the work it would lose, and the agents that name it."""
    directory = agent_dir(agents_dir, name)
    path = directory / ENV_NAME
    if not path.is_file():
        known = ", ".join(p.parent.name for p in iter_env_files(agents_dir)) or "none"
        raise RegistryError(f"no agent {name!r} in {agents_dir} (agents: {known})", "check the name with `invoke list`")
    contents, lost = [], []
    for entry in sorted(directory.iterdir()):
        if entry.name == LOCK_NAME:
            continue
        what, why = _describe_entry(entry)
        contents.append(what)
        if why:
            lost.append(why)
    dependents: list[str] = []
    if fleet is not None:
        me = next((a for a in fleet.agents if a.name == name), None)
        mine = {(j.name, j.ip) for j in me.jails} if me else set()
        for other in fleet.agents:
            if other.name == name:
                continue
            for jail in other.jails:
                if (jail.name, jail.ip) in mine:
                    dependents.append(f"{other.name} shares {name}'s {jail.role} jail {jail.name} ({jail.ip})")
            if name in other.requires:
                dependents.append(f"{other.name} requires {name} (AGENT_REQUIRES in {other.source})")
    return Removal(name, directory, tuple(contents), tuple(lost), tuple(dependents))


def remove_agent(agents_dir: Path, name: str, hosts: list[Host] | None = None, force: bool = False) -> Removal:
    """Delete agents/<name>/ under the registry lock, unless that loses work or breaks others.

    The plan is recomputed under the lock, so what is deleted is what was checked.
    """
    require_agents_dir(agents_dir)
    with locked(agents_dir):
        fleet = load_fleet(agents_dir, hosts) if hosts is not None else None
        plan = removal_plan(agents_dir, name, fleet)
        if plan.needs_force and not force:
            causes = [*plan.lost_work, *plan.dependents]
            raise RegistryError(
                f"removing {name} would {'lose work' if plan.lost_work else 'break other agents'}: "
                + "; ".join(causes),
                "commit and push the work, or change the dependent agents first; or pass --force to remove anyway",
            )
        shutil.rmtree(plan.directory)
        return plan


# -- change ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeRequest:
    """What `set-agent` was asked to change; None leaves a value as it is."""

    name: str
    subnet: str | None = None
    host: str | None = None
    placement: str | None = None
    port: int | None = None
    jails: str | None = None
    rename: str | None = None


@dataclass(frozen=True)
class Change:
    """What `set-agent` rewrote: (key, old, new) per key, and what happens elsewhere."""

    agent: Agent
    path: Path
    edits: tuple[tuple[str, str, str], ...]
    notes: tuple[str, ...]


def _moved(value: str, old: IPv4Network, new_base: str) -> str:
    """An address (or the /24) of the old subnet, moved to the same place in the new one."""
    if value == str(old):
        return f"{new_base}.0/24"
    try:
        ip = IPv4Address(value)
    except ValueError:
        return value
    if ip not in old:
        return value  # not derived from this agent's subnet: a shared jail elsewhere, kept
    return f"{new_base}.{int(ip) - int(old.network_address)}"


def change_agent(agents_dir: Path, hosts: list[Host], req: ChangeRequest) -> Change:
    """Rewrite one agent's .env so every derived value follows the change, under the lock.

    Moving the subnet moves the gateway and every jail address that lay in it (a shared
    LLM jail elsewhere stays); moving host re-chooses the API port and bhyve uplink
    address only when the old ones are taken there.  Only the lines of changed keys are
    rewritten: comments, order and the application's keys stay (docs/registry.md#changing-an-agent).
    """
    from .checks import check_fleet

    if req.rename is not None:
        raise RegistryError(
            f"set-agent does not rename: {req.name} is the rc.d service, the user, the jail prefix and the "
            "data directory on the host",
            f"add the new agent with `invoke add-agent {req.rename}` and the same options, move its data on the "
            f"host, then `invoke remove-agent {req.name}`",
        )
    require_agents_dir(agents_dir)
    path = env_path(agents_dir, req.name)
    with locked(agents_dir):
        if not path.is_file():
            known = ", ".join(p.parent.name for p in iter_env_files(agents_dir)) or "none"
            raise RegistryError(
                f"no agent {req.name!r} in {agents_dir} (agents: {known})", "check the name with `invoke list`"
            )
        fleet = load_fleet(agents_dir, hosts)
        current = next((a for a in fleet.agents if a.name == req.name), None)
        if current is None:
            raise RegistryError(
                f"{path} does not load, so its derived values cannot be rewritten", "fix it first (see `invoke check`)"
            )
        env = EnvFile.load(path)
        values = env.values()
        new: dict[str, str] = {}
        flags: dict[str, str] = {}
        notes: list[str] = []
        others = [a for a in fleet.agents if a.name != req.name]
        host = _choose_host(hosts, req.host) if req.host else fleet.host(current.host)
        assert host is not None
        if req.subnet is not None:
            base = parse_subnet(req.subnet)
            flags["AGENT_SUBNET_BASE"] = "--subnet"
            new["AGENT_SUBNET_BASE"] = base
            for key in sorted(BASE_DERIVED):
                if key in values:
                    new[key] = _moved(values[key], current.subnet, base)
        if req.jails is not None:
            flags["WARDEN_JAILS"] = "--jails"
            new["WARDEN_JAILS"] = req.jails
        if req.placement is not None and req.placement != current.placement:
            flags["AGENT_PLACEMENT"] = "--placement"
            new["AGENT_PLACEMENT"] = req.placement
        placement = new.get("AGENT_PLACEMENT", current.placement)
        if req.port is not None:
            flags["CONTROLPLANE_API_PORT"] = "--port"
            new["CONTROLPLANE_API_PORT"] = str(req.port)
        if host.name != current.host:
            flags["AGENT_HOST"] = "--host"
            new["AGENT_HOST"] = host.name
            there = [a for a in others if a.host == host.name]
            if req.port is None and current.api_port in {a.api_port for a in there}:
                new["CONTROLPLANE_API_PORT"] = str(next_free_port(there))
                notes.append(
                    f"port {current.api_port} is taken on {host.name}: CONTROLPLANE_API_PORT becomes "
                    f"{new['CONTROLPLANE_API_PORT']}"
                )
            notes.append(
                f"on the next apply {current.host} loses {req.name}'s service, files and gateway address, as for a "
                f"removed agent; its jails and their data stay on {current.host} unless that apply runs with "
                "-e warden_destroy_jails=true"
            )
        if placement == "bhyve" and (host.name != current.host or current.placement != "bhyve"):
            taken = [a for a in others if a.host == host.name]
            if (
                current.vm_ip is None
                or current.vm_ip in {a.vm_ip for a in taken}
                or current.vm_ip not in host.vm_uplink
            ):
                new["WARDEN_VM_IP"] = str(next_free_vm_ip(host, taken))
        new = {k: v for k, v in new.items() if values.get(k) != v or k not in values}
        new = {k: v for k, v in new.items() if not (k not in values and k in BASE_DERIVED)}
        if not new:
            raise RegistryError(
                f"{req.name}: nothing to change", "give at least one of --subnet, --host, --placement, --port, --jails"
            )
        merged = {**values, **new}
        agent, problems = build_agent(path, merged, env.line_numbers(), hosts)
        said = AddRequest(req.name, settings=merged, flags=flags)
        typed = frozenset(flags)
        free_port = next_free_port([a for a in others if a.host == host.name])
        if agent is None:
            raise _refusal(said, problems, None, free_port, typed)
        trial = Fleet(hosts=hosts, agents=[*others, agent], raw={p: v for p, v in fleet.raw.items() if p != path})
        before = {str(p) for p in check_fleet(fleet) if p.is_error}
        # new errors anywhere: moving atlas's subnet breaks iris, which shares atlas's LLM jail
        caused = [p for p in check_fleet(trial) if p.is_error and str(p) not in before]
        if caused:
            free = next_free_subnet(host.pool, [n for n in used_networks(trial) if n != agent.subnet])
            raise _refusal(said, caused, free, free_port, typed)
        order = {k: i for i, k in enumerate(OWNED_KEYS)}
        edits = tuple((k, values.get(k, ""), v) for k, v in sorted(new.items(), key=lambda kv: order.get(kv[0], 99)))
        for key, value in new.items():
            env.set(key, value)
        env.write(0o600)
        return Change(agent, path, edits, tuple(notes))
