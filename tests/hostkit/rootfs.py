"""A Debian root tree for the SSH test host, built once per machine with debootstrap.

The tree gives the test host real absolute paths (/etc/rc.conf, /usr/local/etc/rc.d)
and a real python3 for Ansible; the FreeBSD commands are added per test as doubles.
It is built into a temporary directory and renamed into place, under a file lock, so a
half-built tree is never used and parallel test runs build it once.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from filelock import FileLock

CACHE = Path(os.environ.get("WARDEN_TEST_ROOTFS_CACHE", "/var/cache/warden-provision"))
# sudo: the test host's unprivileged login user applies with become (tests/test_become.py).
PACKAGES = ["python3", "openssh-server", "tar", "git", "ca-certificates", "sudo"]


def cache_name(suite: str) -> str:
    """The tree's directory: the suite and the package list, so a tree built from another list
    (one without sudo, say) is never reused; it is built anew beside it."""
    digest = hashlib.sha256(",".join(sorted(PACKAGES)).encode()).hexdigest()[:12]
    return f"rootfs-{suite}-{digest}"


def suite_and_mirror() -> tuple[str, str]:
    """The Debian suite of this machine and the mirror its own apt sources use."""
    codename = "bookworm"
    osr = Path("/etc/os-release")
    if osr.exists():
        m = re.search(r"^VERSION_CODENAME=(\S+)$", osr.read_text(), re.M)
        codename = m.group(1) if m else codename
    mirror = None
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        m = re.search(r"^URIs:\s*(\S+)", deb822.read_text(), re.M)
        mirror = m.group(1) if m else None
    legacy = Path("/etc/apt/sources.list")
    if mirror is None and legacy.exists():
        m = re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+" + re.escape(codename) + r"\s", legacy.read_text(), re.M)
        mirror = m.group(1) if m else None
    return codename, mirror or "http://deb.debian.org/debian"


def ensure_rootfs() -> Path:
    """The cached tree, building it first if this machine has none (about 35 s)."""
    suite, mirror = suite_and_mirror()
    CACHE.mkdir(parents=True, exist_ok=True)
    final = CACHE / cache_name(suite)
    if (final / "usr/sbin/sshd").exists():
        return final
    with FileLock(str(CACHE / f"{final.name}.lock"), timeout=900):
        if (final / "usr/sbin/sshd").exists():
            return final
        tmp = CACHE / f".{final.name}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        started = time.monotonic()
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", suite, str(tmp), mirror],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for junk in ("var/cache/apt/archives", "usr/share/doc", "usr/share/man", "usr/share/locale"):
            shutil.rmtree(tmp / junk, ignore_errors=True)
        # The image must not start sshd or other services on its own.
        (tmp / "etc/ssh").mkdir(parents=True, exist_ok=True)
        for key in (tmp / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        tmp.rename(final)
        print(f"built {final} in {time.monotonic() - started:.0f} s")
    return final
