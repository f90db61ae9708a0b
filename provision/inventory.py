"""The Ansible inventory, read as Ansible reads it (README.md#inventory).

Anything but one plain YAML file is read with Ansible's own InventoryManager and
VariableManager, so `group_vars/`, `host_vars/`, vault-encrypted values, INI files,
inventory plugins and several sources give what `ansible-inventory --list` gives.
A single plain YAML file with no `group_vars/`/`host_vars/` beside it and no vault
value in it is walked here instead, without importing Ansible: the CLI must start
fast (docs/design.md#architecture).  Both give the same hosts and variables
(tests/test_inventory.py holds them to it).  Only the `warden_*` variables are
interpreted; connection variables are passed through.

The warden hosts are the members of the group `warden_hosts` (its child groups
included), the group site.yml applies to (README.md#inventory): other hosts of a shared
inventory are neither checked nor rendered.  A host with `warden_sample_root` is read
from disk by `invoke plan` wherever it is listed, and never applied to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .models import Host, shown
from .problems import Location, Problem

WARDEN_VARS = {
    "warden_ext_if": "ext_if",
    "warden_bridge": "bridge",
    "warden_bridge_clone": "bridge_clone",
    "warden_vm_dir": "vm_dir",
    "warden_pool": "pool",
    "warden_host_networks": "host_networks",
    "warden_release": "release",
    "warden_vm_uplink": "vm_uplink",
    "warden_guest_image": "guest_image",
    "warden_guest_ssh_key": "guest_ssh_key",
    "warden_guest_nameservers": "guest_nameservers",
    "warden_agent_links": "agent_links",
    "warden_jail_host_ports": "jail_host_ports",
    "warden_ssh_ports": "ssh_ports",
    "warden_sample_root": "sample_root",
    "warden_packages": "packages",
    "warden_jail_nameservers": "jail_nameservers",
}


GROUP = "warden_hosts"  # the hosts site.yml applies to (playbooks/hosts.yml)

# The hosts of the last inventory read that are not warden hosts (name -> source), so that
# an AGENT_HOST naming one is told why, not only that it is unknown (checks.check_agent).
_OUTSIDE: dict[str, Path] = {}


def outside_group(name: str) -> Path | None:
    """The inventory source listing NAME when the last inventory read has it outside GROUP."""
    return _OUTSIDE.get(name)


def _keep(
    found: Mapping[str, tuple[dict[str, Any], int | None]], members: Iterable[str], source: Path
) -> dict[str, tuple[dict[str, Any], int | None]]:
    """FOUND less the hosts outside GROUP (sample hosts stay: plan reads them from disk)."""
    inside = set(members)
    kept = {n: v for n, v in found.items() if n in inside or v[0].get("warden_sample_root") is not None}
    _OUTSIDE.clear()
    _OUTSIDE.update({n: source for n in found if n not in kept})
    return kept


# Rule and fix for each inventory value the Host model refuses ({name}: the host).
_FIXES = {
    "name": ("host-name", "rename the host in the inventory: letters, digits, '.', '-', e.g. fbsd1"),
    "warden_bridge": ("bridge-name", "use e.g. warden_bridge: warden0"),
    "warden_bridge_clone": ("bridge-name", "use a free bridge on the host, e.g. warden_bridge_clone: bridge1"),
    "warden_ext_if": ("ext-if", "use the uplink's name as `ifconfig -l` prints it, e.g. warden_ext_if: vtnet0"),
    "warden_release": (
        "release",
        "use a release name as `bastille bootstrap` takes it, e.g. warden_release: 15.0-RELEASE",
    ),
    "warden_vm_dir": ("vm-dir", "use an absolute path or zfs:pool/dataset, e.g. warden_vm_dir: /vm"),
    "warden_agent_links": ("agent-links", "list pairs of agent names, e.g. warden_agent_links: [[atlas, hermes]]"),
}


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of each mapping key, for error messages."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    lines = {}
    for key_node, _ in node.value:
        lines[loader.construct_object(key_node)] = key_node.start_mark.line + 1
    mapping["__lines__"] = lines
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _walk(
    group: Mapping[str, Any], inherited: dict[str, Any], out: dict[str, tuple[dict[str, Any], int | None]]
) -> None:
    gvars = dict(inherited)
    gvars.update({k: v for k, v in (group.get("vars") or {}).items() if k != "__lines__"})
    hosts = group.get("hosts") or {}
    lines = hosts.get("__lines__", {}) if isinstance(hosts, dict) else {}
    for hname, hvars in hosts.items():
        if hname == "__lines__":
            continue
        merged, line = out.get(hname, ({}, lines.get(hname)))
        merged = {**gvars, **merged}
        merged.update({k: v for k, v in (hvars or {}).items() if k != "__lines__"})
        out[hname] = (merged, line)
    for child in (group.get("children") or {}).values():
        if isinstance(child, Mapping):
            _walk(child, gvars, out)


def _members(data: Mapping[str, Any]) -> set[str]:
    """Hosts of GROUP and of its child groups, however the YAML spreads their definitions."""
    hosts_of: dict[str, set[str]] = {}
    children_of: dict[str, set[str]] = {}

    def visit(name: str, group: Any) -> None:
        hosts_of.setdefault(name, set())
        children_of.setdefault(name, set())
        if not isinstance(group, Mapping):
            return
        hosts = group.get("hosts") or {}
        if isinstance(hosts, Mapping):
            hosts_of[name] |= {str(h) for h in hosts if h != "__lines__"}
        children = group.get("children") or {}
        if isinstance(children, Mapping):
            for child_name, child in children.items():
                if child_name != "__lines__":
                    children_of[name].add(str(child_name))
                    visit(str(child_name), child)

    for name, group in data.items():
        if name != "__lines__":
            visit(str(name), group)
    out: set[str] = set()
    seen: set[str] = set()
    todo = [GROUP]
    while todo:
        group_name = todo.pop()
        if group_name in seen:
            continue
        seen.add(group_name)
        out |= hosts_of.get(group_name, set())
        todo += children_of.get(group_name, set())
    return out


def sources_of(inventory: str | Path | Sequence[Path]) -> list[Path]:
    """Inventory sources: a path, or several as Ansible takes them (`a.yml,b.yml`)."""
    if isinstance(inventory, (str, Path)):
        return [Path(part) for part in str(inventory).split(",") if part]
    return list(inventory)


def needs_ansible(sources: Sequence[Path]) -> bool:
    """Whether only Ansible can read SOURCES as Ansible does (see the module docstring)."""
    if len(sources) != 1:
        return True
    path = sources[0]
    if not path.is_file() or path.suffix not in (".yml", ".yaml"):
        return True  # a directory, INI, a script or a plugin's config
    if (path.parent / "group_vars").exists() or (path.parent / "host_vars").exists():
        return True
    head = path.read_bytes()
    return b"$ANSIBLE_VAULT" in head or b"!vault" in head or b"plugin:" in head


def load_inventory(inventory: str | Path | Sequence[Path]) -> tuple[list[Host], list[Problem]]:
    """Hosts sorted by name, and a Problem for every warden_* value that does not parse."""
    sources = sources_of(inventory)
    missing = [p for p in sources if not p.exists()]
    if missing or not sources:
        return [], [
            Problem(
                (Location(missing[0] if missing else Path("-")),),
                "inventory file not found",
                "create it (see examples/fleet/inventory/hosts.yml and README.md#inventory), or choose the "
                "inventory with ANSIBLE_INVENTORY (README.md#choosing-the-inventory)",
                rule="inventory-missing",
            )
        ]
    if needs_ansible(sources):
        return _with_ansible(sources)
    return _plain_yaml(sources[0])


def _with_ansible(sources: Sequence[Path]) -> tuple[list[Host], list[Problem]]:
    """Every host and its variables through InventoryManager + VariableManager.

    Vault values are decrypted with the password Ansible would use (ANSIBLE_VAULT_PASSWORD_FILE,
    ANSIBLE_VAULT_IDENTITY_LIST or ansible.cfg); a warden_* value that cannot be read is
    a Problem naming it, never a silent default.
    """
    from ansible import constants as C
    from ansible.cli import CLI
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    # asked now, not at ansible's import: the environment of this call counts
    password_files = [f for f in [C.config.get_config_value("DEFAULT_VAULT_PASSWORD_FILE")] if f]
    try:
        secrets = CLI.setup_vault_secrets(
            loader,
            vault_ids=list(C.config.get_config_value("DEFAULT_VAULT_IDENTITY_LIST") or []),
            vault_password_files=password_files,
            auto_prompt=False,  # never a prompt: unread values become Problems
            initialize_context=False,
        )
        loader.set_vault_secrets(secrets)
        _share_secrets(secrets)
    except AnsibleError as exc:
        return [], [
            Problem(
                (Location(sources[0]),),
                f"the vault password cannot be read: {exc.message}",
                "point ANSIBLE_VAULT_PASSWORD_FILE (or vault_password_file in ansible.cfg) at the password file",
                rule="inventory-vault",
            )
        ]
    try:
        manager = InventoryManager(loader=loader, sources=[str(p) for p in sources])
    except AnsibleError as exc:
        return [], [
            Problem(
                (Location(sources[0]),),
                f"Ansible cannot read it: {exc.message}",
                "fix the inventory",
                rule="inventory-yaml",
            )
        ]
    variables = VariableManager(loader=loader, inventory=manager)
    found: dict[str, tuple[dict[str, Any], int | None]] = {}
    unreadable: list[Problem] = []
    for host in manager.get_hosts():
        hvars = variables.get_vars(host=host, include_hostvars=False)
        templar = Templar(loader=loader, variables=hvars)
        plain: dict[str, Any] = {}
        for key, value in hvars.items():
            if not (key.startswith("warden_") or key.startswith("ansible_")):
                continue
            try:
                plain[key] = _plain(templar.template(value))
            except AnsibleError as exc:
                if key.startswith("warden_"):
                    unreadable.append(
                        Problem(
                            (
                                Location(
                                    Path(str(hvars.get("inventory_file") or sources[0])), None, f"{host.name}.{key}"
                                ),
                            ),
                            f"{key} of host {host.name} cannot be read: {_first_line(exc.message)}",
                            "give Ansible the vault password (ANSIBLE_VAULT_PASSWORD_FILE, or vault_password_file "
                            "in ansible.cfg), as ansible-playbook needs it too",
                            rule="inventory-vault",
                        )
                    )
        found[host.name] = (plain, None)
    group = manager.groups.get(GROUP)
    members = [h.name for h in group.get_hosts()] if group is not None else []
    kept = _keep(found, members, sources[0])
    hosts, problems = _hosts(kept, sources[0], drop_magic=True)
    # a host outside the group is not ours to read: its unreadable values are no problem
    unreadable = [p for p in unreadable if (p.locations[0].key or "").rsplit(".warden_", 1)[0] in kept]
    return hosts, unreadable + problems


def _share_secrets(secrets: list[Any]) -> None:
    """Make SECRETS the ones vault values decrypt with (ansible-core's one context per process).

    Inside ansible-playbook (the site.yml filters) the context already holds the run's
    secrets; ours are added to them.
    """
    from ansible.parsing.vault import VaultSecretsContext

    current = VaultSecretsContext.current(optional=True)
    if current is None:
        VaultSecretsContext.initialize(VaultSecretsContext(secrets))
    else:
        current.secrets.extend(s for s in secrets if s not in current.secrets)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unreadable"


def _plain(value: Any) -> Any:
    """Ansible's tagged strings, lists and dicts as plain Python values."""
    if isinstance(value, str):
        return value if type(value) is str else "".join(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# Variables VariableManager adds to every host; not the operator's connection settings.
_MAGIC = frozenset({"ansible_playbook_python", "ansible_config_file", "ansible_facts", "ansible_search_path"})


def _plain_yaml(path: Path) -> tuple[list[Host], list[Problem]]:
    """The fast path: one plain YAML inventory walked without Ansible."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return [], [
            Problem(
                (Location(path, mark.line + 1 if mark else None),),
                f"not valid YAML: {getattr(exc, 'problem', exc)}",
                "fix the YAML syntax",
                rule="inventory-yaml",
            )
        ]
    found: dict[str, tuple[dict[str, Any], int | None]] = {}
    for group in (v for k, v in data.items() if k != "__lines__"):
        if isinstance(group, Mapping):
            _walk(group, {}, found)
    return _hosts(_keep(found, _members(data), path), path)


def _hosts(
    found: Mapping[str, tuple[dict[str, Any], int | None]], path: Path, drop_magic: bool = False
) -> tuple[list[Host], list[Problem]]:
    hosts: list[Host] = []
    problems: list[Problem] = []
    for name in sorted(found):
        hvars, line = found[name]
        fields: dict[str, Any] = {"name": str(name), "source": path, "line": line}
        for var, field in WARDEN_VARS.items():
            if var in hvars and hvars[var] is not None:
                fields[field] = hvars[var]
        if isinstance(fields.get("jail_nameservers"), list):
            fields["jail_nameservers"] = tuple(fields["jail_nameservers"])
        if isinstance(fields.get("packages"), list):
            fields["packages"] = tuple(fields["packages"])
        if isinstance(fields.get("agent_links"), list):
            fields["agent_links"] = tuple(tuple(pair) for pair in fields["agent_links"])
        fields["ansible_vars"] = {
            k: v for k, v in hvars.items() if not k.startswith("warden_") and not (drop_magic and k in _MAGIC)
        }
        try:
            hosts.append(Host.model_validate(fields))
        except ValidationError as exc:
            for err in exc.errors():
                field = str(err["loc"][0]) if err.get("loc") else "?"
                var = next((k for k, f in WARDEN_VARS.items() if f == field), field)
                message = str(err["msg"]).removeprefix("Value error, ")
                rule, fix = _FIXES.get(var, ("inventory-value", f"set {var} on host {{name}} to a valid value"))
                problems.append(
                    Problem(
                        (Location(path, line, f"{name}.{var}" if var != "name" else str(name)),),
                        f"{var}: {message}" if var != "name" else f"host {shown(str(name))} {message}",
                        fix.format(name=name),
                        rule=rule,
                    )
                )
    return hosts, problems
