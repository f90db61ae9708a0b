"""bhyve agents end to end: `site.yml` creates each guest from a cloud image with a
cloud-init seed, waits for its SSH through the host, bootstraps Python and provisions it
as a single-agent host, in the same run (tests/hostkit/bhyve.py boots the guests)."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from provision.models import DEFAULT_RELEASE
from provision.rcconf import read_vars
from tests.hostkit.bhyve import GuestHost, Hypervisor, wait_until
from tests.hostkit.testhost import TestHost

from .conftest import Registry
from .test_ansible import add, playbook, recap

pytestmark = pytest.mark.e2e
_ids = itertools.count()


class Machines:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.hosts: list[TestHost] = []
        self.guests: list[GuestHost] = []
        self.hypervisors: list[Hypervisor] = []

    def host(self, name: str, guests: tuple[str, ...] = ()) -> tuple[TestHost, dict[str, GuestHost]]:
        host = TestHost(self.tmp / name, netns=f"wb{os.getpid()}x{next(_ids)}")
        self.hosts.append(host)
        mine = {g: GuestHost(self.tmp / g) for g in guests}
        self.guests += mine.values()
        if mine:
            self.hypervisors.append(Hypervisor(host, mine))
        return host, mine

    def close(self) -> None:
        for hv in self.hypervisors:
            hv.stop()
        for m in [*self.guests, *self.hosts]:
            m.stop()


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[Machines]:
    m = Machines(tmp_path)
    try:
        yield m
    finally:
        m.close()


def host_entry(host: TestHost) -> dict[str, object]:
    # The operator's key: the one the host takes, and (as a .pub path) the one guests are seeded with.
    return {"warden_ext_if": "vtnet0", "warden_guest_ssh_key": f"{host.client_key}.pub", **host.ansible_vars()}


def bhyve_agent(reg: Registry, name: str, base: str, host: str = "fbsd1") -> None:
    reg.write_env(
        name,
        f"AGENT_NAME={name}\nAGENT_HOST={host}\nAGENT_SUBNET_BASE={base}\nAGENT_PLACEMENT=bhyve\n"
        "WARDEN_VM_IP=10.255.0.10\nWARDEN_JAILS='cms'\n",
    )


def test_a_host_agent_and_a_bhyve_agent_are_provisioned_in_one_run(registry: Registry, machines: Machines) -> None:
    host, guests = machines.host("fbsd1", ("novavm",))
    guest = guests["novavm"]
    registry.inventory.write_text(yaml.safe_dump({"warden_hosts": {"hosts": {"fbsd1": host_entry(host)}}}))
    add(registry, "atlas", 1, jails="cms")
    bhyve_agent(registry, "nova", "10.0.9")

    result = playbook(registry)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    calls = [(c["cmd"], c["argv"]) for c in host.calls()]
    rel = DEFAULT_RELEASE  # the guests' image follows the host's release (warden_release)
    url = f"https://download.freebsd.org/releases/VM-IMAGES/{rel}/amd64/Latest/FreeBSD-{rel}-amd64-BASIC-CLOUDINIT-ufs.raw.xz"
    create = (
        "vm",
        [
            "create",
            "-t",
            "warden-nova",
            "-s",
            "20G",
            "-i",
            f"FreeBSD-{rel}-amd64-BASIC-CLOUDINIT-ufs.raw",
            "-C",
            "-n",
            "ip=10.255.0.10/24;gateway=10.255.0.1;nameservers=9.9.9.9;hostname=novavm.home.arpa",
            "novavm",
        ],
    )
    assert ("vm", ["img", url]) in calls and create in calls
    assert calls.index(("vm", ["img", url])) < calls.index(create) < calls.index(("vm", ["start", "novavm"]))
    # autostart after pf, never from vm_list (rc.d/vm runs BEFORE pf): docs/freebsd.md#boot-order
    boot = read_vars((host.root / "etc/rc.conf").read_text())
    assert "novavm" not in boot.get("vm_list", "").split()
    assert boot["warden_guests_enable"] == "YES" and boot["warden_guests_list"] == "novavm"
    assert (host.root / "usr/local/etc/rc.d/warden_guests").stat().st_mode & 0o777 == 0o755
    # the guest booted from the image, nuageinit gave the operator's key to root, no default user
    seeded = (host.client_key.with_suffix(".pub")).read_text().strip()
    assert guest.nuageinit["keys"] == {"root": [seeded]} and guest.nuageinit["default_user"] is False
    assert guest.nuageinit["address"] == "10.255.0.10/24" and guest.nuageinit["hostname"] == "novavm.home.arpa"
    assert "Accepted publickey for root" in guest.log.read_text()
    # seed.iso holds the guest's private host key: root's only
    assert oct((host.root / "vm/novavm/seed.iso").stat().st_mode & 0o777) == "0o600"
    # bootstrapped, then provisioned as a single-agent host
    assert (guest.root / "usr/local/bin/python3").is_symlink()
    assert (guest.root / "usr/local/etc/rc.d/nova").exists() and sorted(guest.state()["jails"]) == ["novacms"]
    assert (host.root / "usr/local/etc/rc.d/atlas").exists() and not (host.root / "usr/local/etc/rc.d/nova").exists()
    values = read_vars((guest.root / "etc/rc.conf").read_text())
    assert values["ifconfig_eth0"] == "inet 10.255.0.10/24" and values["defaultrouter"] == "10.255.0.1"

    # A reboot as rc(8) runs it: the guest is down, rc.d/warden_guests starts it, and refuses
    # to while pf is disabled (it would be on warden0 unfiltered).
    assert host_cmd(host, "/usr/local/sbin/vm", "stop", "novavm").returncode == 0
    assert wait_until(lambda: guest.netns is None)
    assert host_cmd(host, "/sbin/pfctl", "-d").returncode == 0
    refused = host_cmd(host, "/bin/sh", "/usr/local/etc/rc.d/warden_guests", "start")
    assert refused.returncode == 1 and "pf is not enabled: not starting novavm" in refused.stderr, refused
    assert not wait_until(lambda: guest.netns is not None, 3)
    assert host_cmd(host, "/sbin/pfctl", "-e").returncode == 0
    started = host_cmd(host, "/bin/sh", "/usr/local/etc/rc.d/warden_guests", "start")
    assert started.returncode == 0, started
    assert wait_until(lambda: guest.netns is not None)

    again = playbook(registry)
    assert again.returncode == 0, again.stdout[-5000:]
    assert recap(again, "fbsd1")["changed"] == 0 and recap(again, "novavm")["changed"] == 0, again.stdout[-5000:]

    # Removing the agent stops its guest and keeps its disk; vm_list forgets it.
    (registry.agents / "nova" / ".env").unlink()
    gone = playbook(registry)
    assert gone.returncode == 0, gone.stdout[-5000:]
    assert ("vm", ["stop", "novavm"]) in [(c["cmd"], c["argv"]) for c in host.calls()]
    assert (host.root / "vm/novavm/disk0.img").exists()
    gone_vars = read_vars((host.root / "etc/rc.conf").read_text())
    # removing the last item leaves warden_guests_list="" (sysrc `-=` sets the rest, docs/freebsd.md#sysrc)
    assert gone_vars.get("warden_guests_list", "") == "" and "warden_guests_enable" not in gone_vars
    assert not (host.root / "usr/local/etc/rc.d/warden_guests").exists()
    assert wait_until(lambda: guest.netns is None)


def host_cmd(host: TestHost, *argv: str) -> subprocess.CompletedProcess[str]:
    """ARGV as root on the test host, with rc's environment (PATH from /etc/rc)."""
    env = {"PATH": "/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin", "HOME": "/"}
    return subprocess.run(["chroot", str(host.root), *argv], capture_output=True, text=True, env=env, timeout=60)


def test_the_second_hosts_guest_is_provisioned_too(registry: Registry, machines: Machines) -> None:
    first, _ = machines.host("fbsd1")
    second, guests = machines.host("fbsd2", ("vegavm",))
    registry.inventory.write_text(
        yaml.safe_dump({"warden_hosts": {"hosts": {"fbsd1": host_entry(first), "fbsd2": host_entry(second)}}})
    )
    bhyve_agent(registry, "vega", "10.0.8", host="fbsd2")  # fbsd1, first in the play, has no guest
    result = playbook(registry)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert recap(result, "vegavm")["failed"] == 0
    assert (guests["vegavm"].root / "usr/local/etc/rc.d/vega").exists()


def test_a_guest_created_without_an_image_never_brings_up_ssh(machines: Machines) -> None:
    """vm-bhyve makes an empty disk when `vm create` has no -i (lib/vm-core core::create):
    the guest starts and never answers."""
    host, guests = machines.host("fbsd1", ("bare",))

    def vm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["chroot", str(host.root), "/usr/local/sbin/vm", *args], capture_output=True, text=True)

    (host.root / "etc/rc.conf").write_text('vm_enable="YES"\nvm_dir="/vm"\n')
    assert vm("init").returncode == 0
    (host.root / "vm/.templates/default.conf").write_text(
        'loader="bhyveload"\ncpu=1\nmemory=256M\ndisk0_name="disk0.img"\n'
    )
    assert vm("create", "-k", "/nonexistent.pub", "bare").returncode == 1  # -k needs -C
    assert vm("create", "-s", "1G", "bare").returncode == 0
    assert vm("start", "bare").returncode == 0
    assert "Running" in vm("list").stdout
    assert wait_until(lambda: "bare" in machines.hypervisors[0].booted, 10)
    assert machines.hypervisors[0].booted["bare"] == "no-os" and guests["bare"].netns is None
