"""Where the registry, inventory and build tree live.

Environment variables let one checkout serve several fleets (and let tests point the
tool at temporary trees) without flags on every command.  The inventory is chosen the
way ansible-playbook chooses it, so that both read the same one
(README.md#choosing-the-inventory): ANSIBLE_INVENTORY, else `inventory` in the
ansible.cfg Ansible would read, else inventory/hosts.yml.  PROVISION_INVENTORY, when
set, wins for provision alone (site.yml refuses a run where it differs from
ansible-playbook's).

Without PROVISION_* the tree is the directory the command runs from (PROVISION_ROOT
changes it): agents/, build/, .cache/ and the ansible.cfg it reads, as ansible-playbook
reads ./ansible.cfg.  Installed from a wheel there is no repository to fall back on, so
a clone behaves the same way: `invoke` (tasks.py) sets PROVISION_ROOT to the clone.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


def project_root(environ: Mapping[str, str] | None = None) -> Path:
    """PROVISION_ROOT, else the current directory (module docstring)."""
    env = os.environ if environ is None else environ
    return Path(env.get("PROVISION_ROOT") or Path.cwd())


@dataclass(frozen=True)
class Settings:
    agents_dir: Path
    inventory: Path
    build_dir: Path
    cache_dir: Path
    # every inventory source, as several `-i` give them; `inventory` is the first
    inventory_sources: tuple[Path, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.inventory_sources:
            object.__setattr__(self, "inventory_sources", (self.inventory,))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        root = project_root(env)
        sources = inventory_sources(env, root)
        return cls(
            agents_dir=Path(env.get("PROVISION_AGENTS_DIR", root / "agents")),
            inventory=sources[0],
            build_dir=Path(env.get("PROVISION_BUILD_DIR", root / "build")),
            cache_dir=Path(env.get("PROVISION_CACHE_DIR", root / ".cache")),
            inventory_sources=sources,
        )


def _split(value: str, base: Path) -> tuple[Path, ...]:
    return tuple(base / part.strip() for part in value.split(",") if part.strip())


def ansible_cfg(env: Mapping[str, str], cwd: Path) -> Path | None:
    """The ansible.cfg Ansible reads: ANSIBLE_CONFIG, ./ansible.cfg, ~/.ansible.cfg, /etc/ansible/ansible.cfg."""
    candidates = [Path(env["ANSIBLE_CONFIG"])] if env.get("ANSIBLE_CONFIG") else []
    candidates += [cwd / "ansible.cfg", Path.home() / ".ansible.cfg", Path("/etc/ansible/ansible.cfg")]
    return next((c for c in candidates if c.is_file()), None)


def inventory_sources(env: Mapping[str, str], root: Path) -> tuple[Path, ...]:
    """The inventory, chosen as ansible-playbook chooses it without `-i` (module docstring)."""
    if env.get("PROVISION_INVENTORY"):
        return _split(env["PROVISION_INVENTORY"], Path())
    if env.get("ANSIBLE_INVENTORY"):
        return _split(env["ANSIBLE_INVENTORY"], Path())
    cfg = ansible_cfg(env, root)
    if cfg is not None:
        parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
        try:
            parser.read(cfg, encoding="utf-8")
            value = parser.get("defaults", "inventory", fallback="")
        except configparser.Error:
            value = ""
        if value:
            # Ansible resolves a relative path in ansible.cfg against the file's directory.
            return _split(os.path.expanduser(value), cfg.parent)
    return (root / "inventory" / "hosts.yml",)
