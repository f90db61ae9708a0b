"""The inventory as Ansible reads it: group_vars, host_vars, vault, INI, several sources (issue 15, item 12)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from provision.inventory import load_inventory
from provision.models import Host
from provision.settings import Settings

from .conftest import REPO, TWO_HOSTS, Registry
from .test_cli import invoke

VAULT_PASSWORD = "correct horse"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def vault_encrypt(value: str, name: str, password_file: Path) -> str:
    """`name: !vault |` YAML for VALUE, made by ansible-vault itself."""
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible-vault")),
            "encrypt_string",
            "--vault-password-file",
            str(password_file),
            value,
            "--name",
            name,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout


def test_group_vars_and_host_vars_beside_the_inventory_are_read(tmp_path: Path) -> None:
    inventory = write(
        tmp_path / "hosts.yml",
        """\
        all:
          children:
            warden_hosts:
              hosts:
                fbsd1:
                fbsd2:
                  warden_release: 14.3-RELEASE
        """,
    )
    write(tmp_path / "group_vars" / "warden_hosts.yml", "warden_ext_if: vtnet0\nwarden_pool: 10.7.0.0/16\n")
    write(tmp_path / "host_vars" / "fbsd2.yml", "warden_ext_if: em0\n")
    hosts, problems = load_inventory(inventory)
    assert problems == []
    by_name = {h.name: h for h in hosts}
    assert by_name["fbsd1"].ext_if == "vtnet0" and str(by_name["fbsd1"].pool) == "10.7.0.0/16"
    assert by_name["fbsd2"].ext_if == "em0" and by_name["fbsd2"].release == "14.3-RELEASE"


def test_check_sees_group_vars(registry: Registry) -> None:
    registry.write_inventory("all:\n  children:\n    warden_hosts:\n      hosts:\n        fbsd1:\n")
    write(registry.root / "group_vars" / "warden_hosts.yml", "warden_ext_if: vtnet0\n")
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    result = invoke(registry, "check")
    assert result.returncode == 0, result.stdout + result.stderr  # no "host has agents but no warden_ext_if"


def test_vault_encrypted_variables_are_read_with_ansibles_password_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = write(tmp_path / "vault-pass", VAULT_PASSWORD + "\n")
    inventory = write(tmp_path / "hosts.yml", "warden_hosts:\n  hosts:\n    fbsd1:\n")
    write(tmp_path / "host_vars" / "fbsd1.yml", vault_encrypt("em0", "warden_ext_if", password))
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(password))
    hosts, problems = load_inventory(inventory)
    assert problems == [] and hosts[0].ext_if == "em0"


def test_without_the_vault_password_check_names_the_variable_it_could_not_read(registry: Registry) -> None:
    password = write(registry.root / "vault-pass", VAULT_PASSWORD + "\n")
    registry.write_inventory("warden_hosts:\n  hosts:\n    fbsd1:\n")
    write(registry.root / "host_vars" / "fbsd1.yml", vault_encrypt("em0", "warden_ext_if", password))
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_VAULT")}
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "check"],
        cwd=REPO,
        env={**env, **registry.env(), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "fbsd1.warden_ext_if" in result.stdout and "cannot be read" in result.stdout
    assert "ANSIBLE_VAULT_PASSWORD_FILE" in result.stdout
    assert "em0" not in result.stdout


def test_ini_inventories_and_several_sources(registry: Registry) -> None:
    ini = write(registry.root / "more.ini", "[warden_hosts]\nfbsd3 warden_ext_if=igb0 warden_pool=10.3.0.0/16\n")
    hosts, problems = load_inventory(f"{registry.inventory},{ini}")
    assert problems == []
    assert {h.name for h in hosts} == {"fbsd1", "fbsd3"}
    assert next(h for h in hosts if h.name == "fbsd3").ext_if == "igb0"
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.3.1\nAGENT_HOST=fbsd3\n")
    listed = invoke(registry, "list", env={"PROVISION_INVENTORY": f"{registry.inventory},{ini}"})
    assert listed.returncode == 0 and "fbsd3" in listed.stdout


@pytest.mark.parametrize("text", [TWO_HOSTS, (REPO / "examples" / "fleet" / "inventory" / "hosts.yml").read_text()])
def test_the_fast_path_reads_what_ansible_reads(tmp_path: Path, text: str) -> None:
    from provision.inventory import _plain_yaml, _with_ansible, needs_ansible

    inventory = write(tmp_path / "hosts.yml", text)
    assert not needs_ansible([inventory])
    fast, fast_problems = _plain_yaml(inventory)
    slow, slow_problems = _with_ansible([inventory])
    assert fast_problems == slow_problems == []

    def comparable(h: Host) -> dict[str, object]:
        return h.model_dump(exclude={"line", "ansible_vars"})

    assert [comparable(h) for h in fast] == [comparable(h) for h in slow]
    for f, s in zip(fast, slow, strict=True):
        assert dict(f.ansible_vars).items() <= dict(s.ansible_vars).items()


def test_the_fast_path_does_not_import_ansible(registry: Registry) -> None:
    code = (
        "import sys; from pathlib import Path; from provision.inventory import load_inventory; "
        f"hosts, _ = load_inventory(Path({str(registry.inventory)!r})); "
        "print([h.name for h in hosts], 'ansible' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == "['fbsd1'] False", result.stderr


def test_the_inventory_is_chosen_as_ansible_playbook_chooses_it(tmp_path: Path) -> None:
    write(tmp_path / "ansible.cfg", "[defaults]\ninventory = site/hosts.yml ; relative to this file\n")
    base = {"PROVISION_ROOT": str(tmp_path)}
    assert Settings.from_env(base).inventory_sources == (tmp_path / "site" / "hosts.yml",)
    both = {**base, "ANSIBLE_INVENTORY": "a.yml,b.ini"}
    assert Settings.from_env(both).inventory_sources == (Path("a.yml"), Path("b.ini"))
    assert Settings.from_env({"PROVISION_ROOT": str(tmp_path / "empty")}).inventory == (
        tmp_path / "empty" / "inventory" / "hosts.yml"
    )


def test_site_yml_refuses_a_provision_inventory_other_than_its_own(registry: Registry) -> None:
    other = registry.root / "other.yml"
    shutil.copy(registry.inventory, other)
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(other), "site.yml", "--check"],
        cwd=REPO,
        env={**os.environ, **registry.env(), "ANSIBLE_NOCOLOR": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert f"PROVISION_INVENTORY={registry.inventory} but ansible-playbook reads {other}" in result.stdout


OUTSIDE = """\
all:
  hosts:
    bastion:
      ansible_host: 192.0.2.7
  children:
    warden_hosts:
      children:
        freebsd:
          hosts:
            fbsd1:
              warden_ext_if: vtnet0
    monitoring:
      hosts:
        grafana:
          warden_ext_if: em0
    samples:
      hosts:
        example:
          warden_sample_root: examples/host
"""


@pytest.mark.parametrize("reader", ["_plain_yaml", "_with_ansible"])
def test_only_the_warden_hosts_group_and_sample_hosts_are_read(tmp_path: Path, reader: str) -> None:
    """site.yml applies to warden_hosts (child groups included); provision reads the same hosts."""
    import provision.inventory as inv

    inventory = write(tmp_path / "hosts.yml", OUTSIDE)
    read = getattr(inv, reader)
    hosts, problems = read(inventory) if reader == "_plain_yaml" else read([inventory])
    assert problems == []
    assert [h.name for h in hosts] == ["example", "fbsd1"]
    assert inv.outside_group("grafana") == inventory and inv.outside_group("bastion") == inventory
    assert inv.outside_group("fbsd1") is None


def test_an_agent_on_a_host_outside_warden_hosts_is_refused_with_the_fix(registry: Registry) -> None:
    registry.write_inventory(OUTSIDE)
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nAGENT_HOST=grafana\n")
    result = invoke(registry, "check")
    assert result.returncode == 1
    text = " ".join(result.stdout.split())
    assert (
        f"AGENT_HOST AGENT_HOST=grafana is in the inventory ({registry.inventory}) but not in the group "
        "warden_hosts, the hosts site.yml applies to" in text
    ), text
    assert "list grafana under warden_hosts in" in text and "fbsd1" in text
