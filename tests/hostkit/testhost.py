"""An SSH test host: a real OpenSSH server on 127.0.0.1, chrooted in a Debian tree.

Each test gets a writable overlay of the cached root tree (rootfs.py), the FreeBSD
command doubles installed at their FreeBSD paths, a throw-away host key and client
key, and `sshd -D` listening on a free loopback port.  Paramiko and Ansible talk to it
as they would to a FreeBSD host; `/` on the other side is the overlay.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .rootfs import ensure_rootfs

DOUBLES = Path(__file__).resolve().parent.parent / "doubles" / "freebsd.py"
AUTHKEYS = """#!/bin/sh
# New connections are refused while the pfctl double says a loaded ruleset cut SSH;
# open ones go on, as PF's kept states would let them (tests/doubles/freebsd.py).
[ -e /var/db/warden-doubles/ssh-cut ] && exit 0
cat /etc/ssh/warden_authorized_key
"""


def ssh_banner(host: str, port: int) -> bool:
    """An sshd answers there (a forwarder alone accepts, then closes without a banner)."""
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect((host, port))
            return s.recv(4).startswith(b"SSH-")
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestHost:
    """One running test host; call stop() (the fixture does) to tear it down."""

    __test__ = False  # not a pytest test class

    def __init__(self, workdir: Path, netns: str | None = None) -> None:
        """NETNS: run sshd in a network namespace of that name (created here, removed by
        stop()), reached from 127.0.0.1:port through a forwarder (tests/hostkit/netns.py)."""
        self.workdir = workdir
        self.root = workdir / "root"
        self.port = free_port()
        self.client_key = workdir / "id_ed25519"
        self.log = workdir / "sshd.log"
        self.netns = netns
        # Ansible's SSH connections to this host share one master connection (ControlPersist,
        # as Ansible's defaults do), in a directory of this host's own: a socket path is at
        # most 108 bytes, so not under the test's deep tmp_path, and never shared with an
        # earlier host that had the same port.
        self.control_dir = Path(tempfile.mkdtemp(prefix="wcm", dir="/tmp"))
        self._mounts: list[Path] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._forwarder: subprocess.Popen[bytes] | None = None
        self._start()

    # -- setup -------------------------------------------------------------------------
    def _start(self) -> None:
        self._prepare()
        self._install_sshd()

    def _prepare(self, python: str = "/usr/bin/python3") -> None:
        """The root tree with the doubles, run by PYTHON."""
        lower = ensure_rootfs()
        for d in ("upper", "work", "root"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        try:
            self._mount(
                [
                    "-t",
                    "overlay",
                    "overlay",
                    "-o",
                    f"lowerdir={lower},upperdir={self.workdir / 'upper'},workdir={self.workdir / 'work'}",
                ],
                self.root,
            )
        except subprocess.CalledProcessError:
            shutil.rmtree(self.root)
            subprocess.run(["cp", "-a", "--reflink=auto", str(lower), str(self.root)], check=True)
        self._mount(["--bind", "/dev"], self.root / "dev")
        self._mount(["-t", "proc", "proc"], self.root / "proc")
        self._install_doubles(python)

    def _mount(self, args: list[str], target: Path) -> None:
        subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
        self._mounts.append(target)

    def _install_doubles(self, python: str) -> None:
        from tests.doubles.freebsd import PATHS

        lib = self.root / "usr/local/lib/warden-doubles"
        lib.mkdir(parents=True, exist_ok=True)
        shutil.copy(DOUBLES, lib / "freebsd.py")
        for cmd, path in PATHS.items():
            target = self.root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            target.write_text(
                f"#!{python}\nimport sys\nsys.path.insert(0, '/usr/local/lib/warden-doubles')\n"
                f"import freebsd\nfreebsd.main({cmd!r})\n"
            )
            target.chmod(0o755)
        for d in ("etc", "usr/local/etc/rc.d", "var/db/warden-doubles", "var/log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        # rc.subr for running an rc.d script for real (tests/doubles/rc.subr says what it follows)
        shutil.copy(DOUBLES.parent / "rc.subr", self.root / "etc/rc.subr")
        rc = self.root / "etc/rc.conf"
        if not rc.exists():
            rc.write_text('hostname="testhost.home.arpa"\nifconfig_vtnet0="DHCP"\nsshd_enable="YES"\n')
        pf = self.root / "etc/pf.conf"
        if not pf.exists():
            pf.write_text(
                'ext_if = "vtnet0"\nset skip on lo0\nblock in all\npass out all keep state\n'
                "pass in on $ext_if proto tcp to port ssh keep state\n"
            )
        (self.root / "usr/local/bastille/releases/14.3-RELEASE").mkdir(parents=True, exist_ok=True)
        # A host prepared for Bastille VNET jails has its devfs ruleset (docs/freebsd.md#bastille-vnet-jails).
        (self.root / "etc/devfs.rules").write_text("[bastille_vnet=13]\nadd include $devfsrules_jail_vnet\n")

    def _install_sshd(self) -> None:
        ssh = self.root / "etc/ssh"
        for f in ssh.glob("warden_host_key*"):
            f.unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "warden_host_key")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)], check=True)
        (ssh / "warden_authorized_key").write_text(self.client_key.with_suffix(".pub").read_text())
        authkeys = self.root / "usr/local/libexec/warden-authkeys"
        authkeys.parent.mkdir(parents=True, exist_ok=True)
        authkeys.write_text(AUTHKEYS)
        authkeys.chmod(0o755)
        (ssh / "sshd_config_warden").write_text(
            f"Port {22 if self.netns else self.port}\nListenAddress 127.0.0.1\nHostKey /etc/ssh/warden_host_key\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nAuthorizedKeysFile none\nAuthorizedKeysCommand /usr/local/libexec/warden-authkeys\n"
            "AuthorizedKeysCommandUser nobody\nStrictModes no\nLogLevel VERBOSE\nMaxStartups 100\n"
            "MaxSessions 100\nSubsystem sftp internal-sftp\nPidFile /run/sshd-warden.pid\n"
            "SetEnv PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        )
        (self.root / "run/sshd").mkdir(parents=True, exist_ok=True)
        self.host_key_line = "[127.0.0.1]:{} {}".format(
            self.port, " ".join((ssh / "warden_host_key.pub").read_text().split()[:2])
        )
        self.known_hosts = self.workdir / "known_hosts"
        self.known_hosts.write_text(self.host_key_line + "\n")
        log = self.log.open("wb")
        inside: list[str] = []
        if self.netns:
            from .netns import add_netns, forward

            add_netns(self.netns)
            inside = ["ip", "netns", "exec", self.netns]
        self._proc = subprocess.Popen(
            [*inside, "chroot", str(self.root), "/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/sshd_config_warden"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if self.netns:
            self._forwarder = forward(self.port, self.netns, "127.0.0.1", 22)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()}")
            if ssh_banner("127.0.0.1", self.port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on {self.port}: {self.log.read_text()}")

    # -- what tests use ----------------------------------------------------------------
    def write_ssh_config(self, path: Path, alias: str) -> None:
        with path.open("a") as fh:
            fh.write(
                f"Host {alias}\n  HostName 127.0.0.1\n  Port {self.port}\n  User root\n"
                f"  IdentityFile {self.client_key}\n  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n"
            )

    def add_sudo_user(self, name: str) -> None:
        """An unprivileged login user (the test key, as root's) with passwordless sudo."""
        subprocess.run(["chroot", str(self.root), "useradd", "-m", "-s", "/bin/sh", name], check=True)
        # "*": no password, yet not locked ("!"), which sshd without PAM would refuse
        subprocess.run(["chroot", str(self.root), "usermod", "-p", "*", name], check=True)
        sudoers = self.root / "etc/sudoers.d" / name
        sudoers.write_text(f"{name} ALL=(ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)

    def ansible_vars(self, user: str = "root") -> dict[str, Any]:
        return {
            "ansible_host": "127.0.0.1",
            "ansible_port": self.port,
            "ansible_user": user,
            "ansible_ssh_private_key_file": str(self.client_key),
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes "
            f"-o IdentitiesOnly=yes -o ControlPath={self.control_dir}/%r@%h:%p",
        }

    def calls(self) -> list[dict[str, Any]]:
        log = self.root / "var/log/warden-doubles.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def state(self) -> dict[str, Any]:
        path = self.root / "var/db/warden-doubles/state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def connection_count(self) -> int:
        return self.log.read_text(errors="replace").count("Accepted publickey")

    def cut_ssh_on_next_pf_load(self) -> None:
        (self.root / "var/db/warden-doubles/force-ssh-cut").write_text("1\n")

    def fail_call(self, match: str, n: int = 1) -> None:
        """Make the Nth double call whose command line starts with MATCH exit 1 (tests/doubles/freebsd.py)."""
        (self.root / "var/db/warden-doubles/fail.json").write_text(json.dumps({"match": match, "n": n}))

    def kill(self, pid: int) -> None:
        """SIGKILL a process the doubles started (a test control, like fail_call): it leaves the
        doubles' process table, and its pidfiles stay, as a daemon(8) killed so cannot remove
        them (tests/doubles/freebsd.py, docs/freebsd.md#rcd-scripts)."""
        import fcntl

        state_dir = self.root / "var/db/warden-doubles"
        fd = os.open(state_dir / "state.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = json.loads((state_dir / "state.json").read_text())
            gone = state.get("processes", {}).pop(str(pid), None)
            if gone is None:
                raise ValueError(f"no process {pid} in the doubles' process table")
            for svc in state.get("services", {}).values():
                if svc.get("pid") == pid:
                    svc.update(running=False, pid=0)
            (state_dir / "state.json.tmp").write_text(json.dumps(state, indent=1, sort_keys=True))
            (state_dir / "state.json.tmp").replace(state_dir / "state.json")
        finally:
            os.close(fd)

    def clear_failures(self) -> None:
        (self.root / "var/db/warden-doubles/fail.json").unlink(missing_ok=True)

    def stop(self) -> None:
        for proc in (self._forwarder, self._proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self._kill_chrooted()
        if self.netns:
            from .netns import del_netns

            del_netns(self.netns)
        for target in reversed(self._mounts):
            subprocess.run(["umount", "-l", str(target)], capture_output=True)
        self._mounts.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.control_dir, ignore_errors=True)

    def _kill_chrooted(self) -> None:
        """sshd's per-connection children (and anything they started) live on in the chroot."""
        root = str(self.root.resolve())
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if os.readlink(proc / "root") == root:
                    os.kill(int(proc.name), 9)
            except (OSError, ValueError):
                continue
