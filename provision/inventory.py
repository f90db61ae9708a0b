"""The Ansible YAML inventory, read without importing Ansible.

The CLI must start fast (docs/design.md#architecture), so the plain YAML inventory format is walked here:
groups with `hosts`, `vars` and `children`; group vars apply to member hosts, host
vars win.  Only the `warden_*` variables are interpreted; the rest is passed through.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    "warden_agent_links": "agent_links",
    "warden_sample_root": "sample_root",
}


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


def load_inventory(path: Path) -> tuple[list[Host], list[Problem]]:
    """Hosts sorted by name, and a Problem for every warden_* value that does not parse."""
    if not path.exists():
        return [], [
            Problem(
                (Location(path),),
                "inventory file not found",
                "create it (see examples/fleet/inventory/hosts.yml and README.md#inventory) or set PROVISION_INVENTORY",
                rule="inventory-missing",
            )
        ]
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
    hosts: list[Host] = []
    problems: list[Problem] = []
    for name in sorted(found):
        hvars, line = found[name]
        fields: dict[str, Any] = {"name": str(name), "source": path, "line": line}
        for var, field in WARDEN_VARS.items():
            if var in hvars and hvars[var] is not None:
                fields[field] = hvars[var]
        if isinstance(fields.get("agent_links"), list):
            fields["agent_links"] = tuple(tuple(pair) for pair in fields["agent_links"])
        fields["ansible_vars"] = {k: v for k, v in hvars.items() if not k.startswith("warden_")}
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
