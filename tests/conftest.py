"""Shared fixtures: a throw-away registry + inventory, pointed to by the PROVISION_* variables."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provision.settings import Settings

REPO = Path(__file__).resolve().parent.parent
# The Ansible collection warden.provision, as a clone holds it (ansible.cfg collections_path).
COLLECTION = REPO / "collections" / "ansible_collections" / "warden" / "provision"


@dataclass
class Registry:
    root: Path
    agents: Path
    inventory: Path
    build: Path

    def settings(self) -> Settings:
        return Settings(
            agents_dir=self.agents, inventory=self.inventory, build_dir=self.build, cache_dir=self.root / "cache"
        )

    def write_inventory(self, text: str) -> None:
        self.inventory.write_text(textwrap.dedent(text), encoding="utf-8")

    def write_env(self, dirname: str, text: str) -> Path:
        path = self.agents / dirname / ".env"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def env(self) -> dict[str, str]:
        return {
            "PROVISION_AGENTS_DIR": str(self.agents),
            "PROVISION_INVENTORY": str(self.inventory),
            "PROVISION_BUILD_DIR": str(self.build),
            "PROVISION_CACHE_DIR": str(self.root / "cache"),
        }


ONE_HOST = """\
warden_hosts:
  hosts:
    fbsd1:
      warden_ext_if: vtnet0
      warden_host_networks: [192.168.10.0/24]
"""

TWO_HOSTS = """\
all:
  children:
    warden_hosts:
      vars:
        warden_ext_if: vtnet0
      hosts:
        fbsd1:
          warden_host_networks: [192.168.10.0/24]
        fbsd2:
          warden_pool: 10.1.0.0/16
"""


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    reg = Registry(
        root=tmp_path, agents=tmp_path / "agents", inventory=tmp_path / "hosts.yml", build=tmp_path / "build"
    )
    reg.agents.mkdir()
    reg.write_inventory(ONE_HOST)
    # The operator's home on the controller: one ~/.ssh/id_*.pub, the key bhyve guests are
    # seeded with unless the inventory names one (provision/guestseed.py).
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator@test", "-f", str(home / ".ssh/id_ed25519")],
        check=True,
    )
    monkeypatch.setenv("HOME", str(home))
    for key, value in reg.env().items():
        monkeypatch.setenv(key, value)
    yield reg


from tests.hostkit.fixtures import testhost, testhost_factory  # noqa: E402,F401  (pytest fixtures)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end tests first, each in its module's order, the many short ones after.

    `pytest -n auto --dist worksteal` (scripts/test) hands each worker a contiguous share and
    lets an idle one take the tail of another's queue: with the long tests in front, the
    short ones are what is left to even out the end, not a long test started last.
    """
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


@pytest.fixture(scope="session")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example fleet (examples/fleet) rendered once, as the golden files pin it."""
    from tests.update_golden import render_example

    out = tmp_path_factory.mktemp("example")
    render_example(out)
    return out
