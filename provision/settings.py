"""Where the registry, inventory and build tree live.

Environment variables let one checkout serve several fleets (and let tests point the
tool at temporary trees) without flags on every command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    agents_dir: Path
    inventory: Path
    build_dir: Path
    cache_dir: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        root = Path(env.get("PROVISION_ROOT", REPO_ROOT))
        return cls(
            agents_dir=Path(env.get("PROVISION_AGENTS_DIR", root / "agents")),
            inventory=Path(env.get("PROVISION_INVENTORY", root / "inventory" / "hosts.yml")),
            build_dir=Path(env.get("PROVISION_BUILD_DIR", root / "build")),
            cache_dir=Path(env.get("PROVISION_CACHE_DIR", root / ".cache")),
        )
