"""bhyve for the test hosts: boots the guests the `vm` double was asked to start.

`vm start` (tests/doubles/freebsd.py) returns at once and leaves a boot record, as vm-bhyve
leaves bhyve running in the background (lib/vm-core core::__start).  The Hypervisor watches
a host's records and boots each guest the way a FreeBSD BASIC-CLOUDINIT image would:

- only from a disk that `vm create -i` wrote an image onto: an empty disk never brings up SSH;
- at the first boot only (nuageinit(7)), nuageinit reads the seed vm-bhyve attached (the
  `cidata` cd9660 image, here JSON from the makefs double) and applies it as
  libexec/nuageinit/nuageinit does: hostname, the
  network-config whose `match.macaddress` is the NIC's MAC (renamed by `set-name`), the
  users and their `ssh_authorized_keys` (the default user `freebsd` only when `users` is
  absent or lists "default"), `ssh_keys` as the host keys, `write_files`;
- sshd starts with FreeBSD's defaults (PermitRootLogin no unless the config says otherwise,
  sshd_config(5)), in a network namespace of its own joined to the host's by a veth pair on
  a bridge carrying the host's warden0 addresses: the guest is reachable only through its host;
- the image has no Python: the doubles run on an interpreter outside PATH, and the `pkg`
  double's `install python3` adds /usr/local/bin/python3.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from .netns import add_netns, del_netns, ip
from .testhost import TestHost

HIDDEN_PYTHON = "/usr/libexec/warden-doubles/python3"
GUEST_SSHD = """Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
StrictModes no
LogLevel VERBOSE
MaxStartups 100
MaxSessions 100
Subsystem sftp internal-sftp
PidFile /run/sshd-warden.pid
SetEnv PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
"""


class GuestHost(TestHost):
    """A guest's disk: the root tree, doubles, no Python on PATH and no sshd until it boots."""

    def __init__(self, workdir: Path) -> None:
        self.nuageinit: dict[str, Any] = {}
        self._network: tuple[str | None, str | None] = (None, None)
        super().__init__(workdir)

    def _start(self) -> None:
        self._prepare(python=HIDDEN_PYTHON)
        self._mount(["--bind", "/dev/pts"], self.root / "dev/pts")  # raw runs in a pty (ssh -tt)
        hidden = self.root / HIDDEN_PYTHON.lstrip("/")
        hidden.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.root / "usr/bin/python3.11", hidden)
        for stale in self.root.glob("usr/bin/python3*"):
            stale.unlink()
        self.client_key = Path("/nonexistent")  # only the seeded key may log in

    def _nuageinit(self, seed: dict[str, str], mac: str) -> tuple[str | None, str | None]:
        """The seed applied as libexec/nuageinit/nuageinit does; the NIC's address and gateway."""
        meta = yaml.safe_load(seed.get("meta-data", "")) or {}
        net = yaml.safe_load(seed.get("network-config", "")) or {}
        text = seed.get("user-data", "")
        user = (yaml.safe_load(text) or {}) if text.startswith("#cloud-config") else {}
        root = self.root
        # hostname (nuageinit sethostname): user-data fqdn/hostname, else meta-data local-hostname
        hostname = user.get("fqdn") or user.get("hostname") or meta.get("local-hostname") or ""
        (root / "etc/rc.conf.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/rc.conf.d/hostname").write_text(f'hostname="{hostname}"\n')
        # network-config (nuageinit network_config): match.macaddress must be this NIC's MAC
        address, gateway = None, None
        for spec in (net.get("ethernets") or {}).values():
            if (spec.get("match") or {}).get("macaddress", mac) != mac:
                continue
            name = spec.get("set-name", "vtnet0")
            address = (spec.get("addresses") or [None])[0]
            gateway = spec.get("gateway4")
            lines = [f"ifconfig_vtnet0_name={name}\n"] if name != "vtnet0" else []
            lines.append(f'ifconfig_{name}="inet {address}"\n')
            (root / "etc/rc.conf.d/network").write_text("".join(lines))
            (root / "etc/rc.conf.d/routing").write_text(f'defaultrouter="{gateway}"\n')
            break
        # write_files first, users after (nuageinit: files are created before the users)
        sshd_config = root / "etc/ssh/sshd_config"
        sshd_config.write_text(GUEST_SSHD)
        for f in user.get("write_files") or []:
            path = root / str(f["path"]).lstrip("/")
            with path.open("a" if f.get("append") else "w") as fh:
                fh.write(str(f.get("content", "")))
        users = user.get("users")
        self.nuageinit = {
            "default_user": users is None or "default" in users,
            "keys": {},
            "hostname": hostname,
            "address": address,
        }
        for u in users or []:
            if isinstance(u, dict) and u.get("name") == "root":
                keys = [str(k) for k in u.get("ssh_authorized_keys") or []]
                self.nuageinit["keys"]["root"] = keys
                (root / "root/.ssh").mkdir(parents=True, exist_ok=True)
                with (root / "root/.ssh/authorized_keys").open("a") as fh:
                    fh.write("".join(k + "\n" for k in keys))
        ssh = root / "etc/ssh"
        keys_in_seed = user.get("ssh_keys") or {}
        if "ed25519_private" in keys_in_seed:
            # nuageinit ssh_keys writes each value and a line break
            (ssh / "ssh_host_ed25519_key").write_text(str(keys_in_seed["ed25519_private"]) + "\n")
            (ssh / "ssh_host_ed25519_key").chmod(0o600)
            (ssh / "ssh_host_ed25519_key.pub").write_text(str(keys_in_seed["ed25519_public"]) + "\n")
        else:  # rc.d/sshd makes the missing host keys at boot
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "ssh_host_ed25519_key")])
        # FreeBSD's compiled-in default when no line sets it (sshd_config(5)); written here as a
        # last line of its own, after whatever write_files left (possibly an unterminated line).
        if not re.search(r"(?m)^[ \t]*PermitRootLogin[ \t]", sshd_config.read_text()):
            with sshd_config.open("a") as fh:
                fh.write("\nPermitRootLogin no\n")
        # The doubles' view of the booted guest: the renamed NIC, and no python3 package.
        state = root / "var/db/warden-doubles/state.json"
        state.parent.mkdir(parents=True, exist_ok=True)
        nics: dict[str, Any] = {"lo0": {"inet": ["127.0.0.1/8"], "up": True, "members": [], "bridge": False}}
        if address:
            nics["eth0"] = {"inet": [address], "up": True, "members": [], "bridge": False}
        state.write_text(json.dumps({"interfaces": nics, "packages": ["bastille", "git", "tmux"]}))
        return address, gateway

    def boot(self, netns: str, seed: dict[str, str], mac: str, host_netns: str, bridge_addrs: list[str]) -> None:
        # nuageinit runs at the first boot only (nuageinit(7); rc.d KEYWORD firstboot): a later
        # boot keeps what it wrote, and the packages installed since.
        done = self.root / "var/db/warden-doubles/firstboot-done"
        if not done.exists():
            self._network = self._nuageinit(seed, mac)
            done.touch()
        address, gateway = self._network
        root = self.root
        # The NIC on the host's switch: a veth pair, host end on a bridge with warden0's addresses.
        add_netns(netns)
        if subprocess.run(["ip", "-n", host_netns, "link", "show", "warden0"], capture_output=True).returncode:
            ip("-n", host_netns, "link", "add", "warden0", "type", "bridge")
            for cidr in bridge_addrs:
                ip("-n", host_netns, "addr", "add", cidr, "dev", "warden0")
            ip("-n", host_netns, "link", "set", "warden0", "up")
        tap = f"tap{abs(hash(netns)) % 10000}"
        ip("link", "add", tap, "netns", host_netns, "type", "veth", "peer", "name", "eth0", "netns", netns)
        ip("-n", netns, "link", "set", "eth0", "address", mac)
        ip("-n", host_netns, "link", "set", tap, "master", "warden0", "up")
        ip("-n", netns, "link", "set", "eth0", "up")
        if address:
            ip("-n", netns, "addr", "add", address, "dev", "eth0")
        if gateway:
            ip("-n", netns, "route", "add", "default", "via", gateway)
        self.netns = netns
        (root / "run/sshd").mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "chroot",
                str(root),
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
                "/etc/ssh/sshd_config",
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def shutdown(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        self._proc = None
        self._kill_chrooted()
        if self.netns:
            del_netns(self.netns)
            self.netns = None


class Hypervisor:
    """Boots and stops HOST's guests (by vm name) as the vm double's records say."""

    def __init__(self, host: TestHost, guests: dict[str, GuestHost]) -> None:
        assert host.netns, "the host runs in a network namespace: its guests join it"
        self.host, self.guests = host, guests
        self.booted: dict[str, str] = {}  # name -> "ssh" or "no-os"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _records(self) -> Path:
        return self.host.root / "var/db/warden-doubles/bhyve"

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for name, guest in self.guests.items():
                record = self._records() / f"{name}.start"
                if record.exists() and name not in self.booted:
                    self.booted[name] = self._boot(name, guest, Path(record.read_text().strip()))
                elif not record.exists() and name in self.booted:
                    guest.shutdown()
                    del self.booted[name]

    def _boot(self, name: str, guest: GuestHost, vm_path: Path) -> str:
        where = self.host.root / str(vm_path).lstrip("/")
        conf: dict[str, str] = {}
        for line in (where / f"{name}.conf").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                conf[key.strip()] = value.strip().strip('"')
        disk0 = where / conf.get("disk0_name", "disk0.img")
        with disk0.open("rb") as fh:
            if not fh.read(32).startswith(b"WARDEN-DOUBLE-IMAGE"):
                return "no-os"  # an empty disk: the loader finds nothing to boot
        seed: dict[str, str] = {}
        num = 1
        while f"disk{num}_name" in conf:
            if conf.get(f"disk{num}_type") == "ahci-cd":
                image = json.loads((where / conf[f"disk{num}_name"]).read_text())
                if image.get("label") == "cidata":
                    seed = image["files"]
            num += 1
        warden0 = self.host.state().get("interfaces", {}).get("warden0", {}).get("inet", [])
        assert self.host.netns is not None
        guest.boot(f"{self.host.netns}-{name}", seed, conf["network0_mac"], self.host.netns, list(warden0))
        return "ssh"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for guest in self.guests.values():
            guest.shutdown()


def wait_until(predicate: Any, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False
