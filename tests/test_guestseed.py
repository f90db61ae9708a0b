"""The bhyve guests' image and cloud-init seed (provision/guestseed.py): which key, which
image, and a user-data nuageinit reads as we mean it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from provision.guestseed import image_name, image_source, ssh_key, user_data
from provision.models import Host
from provision.problems import Problem
from provision.registry import load_fleet
from provision.render import RenderError, render_fleet

from .conftest import Registry


def keypair(directory: Path, name: str = "id_ed25519") -> str:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "op@x", "-f", str(directory / name)], check=True
    )
    return (directory / f"{name}.pub").read_text().strip()


def test_the_only_id_pub_in_home_is_the_default_key(tmp_path: Path) -> None:
    key = keypair(tmp_path / ".ssh")
    assert ssh_key(Host(name="fbsd1"), home=tmp_path) == key


@pytest.mark.parametrize("count", [0, 2])
def test_no_or_several_id_pubs_and_no_inventory_key_is_a_clear_error(tmp_path: Path, count: int) -> None:
    (tmp_path / ".ssh").mkdir()
    for i in range(count):
        keypair(tmp_path / ".ssh", f"id_k{i}")
    found = ssh_key(Host(name="fbsd1"), home=tmp_path)
    assert isinstance(found, Problem) and "warden_guest_ssh_key" in found.fix
    assert f"has {count} id_*.pub files" in found.message


def test_the_inventory_key_may_be_the_line_or_a_pub_file(tmp_path: Path) -> None:
    key = keypair(tmp_path / "keys")
    assert ssh_key(Host(name="fbsd1", guest_ssh_key=key), home=tmp_path) == key
    assert ssh_key(Host(name="fbsd1", guest_ssh_key=str(tmp_path / "keys/id_ed25519.pub")), home=tmp_path) == key


@pytest.mark.parametrize(
    "value",
    [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMa5+OOUOeHAgro0I6znJPof6D+xT8E4zWauLN9ut7qn op\nssh-rsa AAAA",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMa5+OOUOeHAgro0I6znJPof6D+xT8E4zWauLN9ut7qn a'b\"c",
        'command="sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMa5+OOUOeHAgro0I6znJPof6D+xT8E4zWauLN9ut7qn',
    ],
    ids=["two-lines", "quotes-in-comment", "options"],
)
def test_anything_but_one_plain_public_key_line_is_refused(tmp_path: Path, value: str) -> None:
    assert isinstance(ssh_key(Host(name="fbsd1", guest_ssh_key=value), home=tmp_path), Problem)


def test_a_private_key_file_is_refused(tmp_path: Path) -> None:
    keypair(tmp_path / "keys")
    found = ssh_key(Host(name="fbsd1", guest_ssh_key=str(tmp_path / "keys/id_ed25519")), home=tmp_path)
    assert isinstance(found, Problem) and "never a private key" in found.fix
    assert "PRIVATE" not in str(found)


def test_the_default_image_is_the_hosts_release_cloud_image() -> None:
    url = image_source(Host(name="fbsd1", release="14.3-RELEASE"))
    assert url == (
        "https://download.freebsd.org/releases/VM-IMAGES/14.3-RELEASE/amd64/Latest/"
        "FreeBSD-14.3-RELEASE-amd64-BASIC-CLOUDINIT-ufs.raw.xz"
    )
    assert isinstance(url, str) and image_name(url) == "FreeBSD-14.3-RELEASE-amd64-BASIC-CLOUDINIT-ufs.raw"
    assert image_name("/var/img/mine.raw") == "/var/img/mine.raw"


@pytest.mark.parametrize("value", ["/vm/x.raw #c", "file:///x.raw", "https://h/x y.raw", "relative.raw", "/a/$(id)"])
def test_an_image_value_that_would_need_quoting_is_refused(value: str) -> None:
    assert isinstance(image_source(Host(name="fbsd1", guest_image=value)), Problem)


def test_user_data_puts_the_key_on_root_and_creates_no_default_user() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMa5+OOUOeHAgro0I6znJPof6D+xT8E4zWauLN9ut7qn op@x"
    text = user_data(key, "Managed by warden-provision.\n# Rendered from agents/nova/.env.")
    assert text.startswith("#cloud-config\n# Managed by warden-provision.\n# Rendered from agents/nova/.env.\n")
    data = yaml.safe_load(text)  # what nuageinit's YAML parser sees (tests/test_cloudyaml.py: both parsers)
    # nuageinit creates the default user (password "freebsd") only when `users` is absent or
    # lists "default" (libexec/nuageinit/nuageinit create_default_user).
    assert data["users"] == [{"name": "root", "ssh_authorized_keys": [key]}]
    assert data["ssh_pwauth"] is False and "ssh_authorized_keys" not in data
    # no final line break: neither parser can be given one alike (docs/freebsd.md#nuageinit-yaml)
    assert data["write_files"] == [
        {"path": "/etc/ssh/sshd_config", "append": True, "content": "PermitRootLogin prohibit-password"}
    ]


def test_check_and_render_refuse_a_host_with_guests_but_no_key(registry: Registry, tmp_path: Path) -> None:
    for pub in (Path.home() / ".ssh").glob("id_*.pub"):
        pub.unlink()
    registry.write_env(
        "nova", "AGENT_NAME=nova\nAGENT_SUBNET_BASE=10.0.9\nAGENT_PLACEMENT=bhyve\nWARDEN_VM_IP=10.255.0.10\n"
    )
    from provision.inventory import load_inventory

    hosts, _ = load_inventory(registry.inventory)
    fleet = load_fleet(registry.agents, hosts)
    with pytest.raises(RenderError) as exc:
        render_fleet(fleet, registry.build)
    assert any(p.rule == "guest-ssh-key" for p in exc.value.problems)
    assert not registry.build.exists()


def test_a_zfs_vm_dir_is_refused_for_a_host_with_guests(tmp_path: Path) -> None:
    keypair(tmp_path / ".ssh")
    from provision.guestseed import guest_problems

    host = Host(name="fbsd1", vm_dir="zfs:zroot/vm")
    assert [p.rule for p in guest_problems([host], {"fbsd1"}, home=tmp_path)] == ["guest-vm-dir"]
    assert guest_problems([host], set(), home=tmp_path) == []  # no guests, no rule


def test_the_anchor_grants_the_guests_sshd_to_the_user_ansible_jumps_as(registry: Registry, tmp_path: Path) -> None:
    """playbooks/guests.yml reaches a guest with `ssh -W` through its host as the host's
    ansible_user; sshd opens that connection in the user's session, so pf sees that user
    (pf.conf(5) user) and a grant to root alone drops it."""
    keypair(tmp_path / ".ssh")
    registry.write_inventory(
        "warden_hosts:\n  hosts:\n    fbsd1:\n      warden_ext_if: vtnet0\n      ansible_user: admin\n"
        f"      warden_guest_ssh_key: {tmp_path / '.ssh' / 'id_ed25519.pub'}\n"
    )
    registry.write_env(
        "nova", "AGENT_NAME=nova\nAGENT_SUBNET_BASE=10.0.9\nAGENT_PLACEMENT=bhyve\nWARDEN_VM_IP=10.255.0.10\n"
    )
    from provision.inventory import load_inventory

    hosts, _ = load_inventory(registry.inventory)
    render_fleet(load_fleet(registry.agents, hosts), registry.build)
    anchor = (registry.build / "fbsd1/etc/pf.warden.conf").read_text()
    assert 'to 10.255.0.0/24 user { "root" "admin" } keep state' in anchor

    from provision.guestseed import guest_problems

    host = Host(name="fbsd1", ansible_vars={"ansible_user": "{{ lookup('env', 'USER') }}"})
    rules = [p.rule for p in guest_problems([host], {"fbsd1"}, home=tmp_path)]
    assert rules == ["guest-jump-user"]
