"""Reading a host's live files: one SSH connection, one command, one round trip.

`invoke plan` must not open a connection per file (SPEC §10): the whole read is one
POSIX sh script run over one exec channel, which prints each file framed by its byte
length.  SSH follows the operator's own settings — `~/.ssh/config`, the agent, key
files and known_hosts — and an unknown host key is refused, never accepted.
paramiko is imported only here, and only when a command needs it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .models import Host

# Extra paths the previous apply recorded (one per line): read in the same round so that
# files of removed agents are found without a second trip.
PREVIOUS_FILES_LIST = "/var/db/warden/files"

_SCRIPT = r"""
emit() {
    if [ -f "$1" ] && [ -r "$1" ]; then
        n=$(wc -c < "$1" | tr -d ' ')
        printf 'F %s %s\n' "$n" "$1"
        cat "$1"
    else
        printf 'M 0 %s\n' "$1"
    fi
}
for f in "$@"; do emit "$f"; done
if [ -f LIST ]; then
    while IFS= read -r f; do
        case "$f" in /*) emit "$f" ;; esac
    done < LIST
fi
printf 'E 0 end\n'
"""


class RemoteError(Exception):
    """A host we could not read; the message is one line naming the host and the cause."""


@dataclass(frozen=True)
class Target:
    host: str
    hostname: str
    port: int
    user: str | None
    key_files: tuple[str, ...]
    known_hosts: tuple[str, ...]


def read_script(list_path: str = PREVIOUS_FILES_LIST) -> str:
    return _SCRIPT.replace("LIST", shlex.quote(list_path))


def parse_frames(data: bytes) -> dict[str, bytes | None]:
    """Split the script's output back into path → bytes (None = missing)."""
    out: dict[str, bytes | None] = {}
    pos = 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        kind, size, path = data[pos:nl].decode("utf-8", "surrogateescape").split(" ", 2)
        pos = nl + 1
        if kind == "E":
            return out
        if kind == "F":
            n = int(size)
            body = data[pos : pos + n]
            if len(body) != n:
                raise ValueError(f"{path}: expected {n} bytes, got {len(body)}")
            out[path] = body
            pos += n
        else:
            out.setdefault(path, None)
    raise ValueError("output ended before the end marker")


def ssh_config_path() -> Path:
    return Path(os.environ.get("PROVISION_SSH_CONFIG", Path.home() / ".ssh" / "config"))


def resolve(host: Host) -> Target:
    """Where and how to connect: inventory ansible_* variables win over ~/.ssh/config, like Ansible."""
    import paramiko

    cfg_path = ssh_config_path()
    cfg: dict[str, Any] = {}
    alias = str(host.ansible_vars.get("ansible_host", host.name))
    if cfg_path.is_file():
        config = paramiko.SSHConfig.from_path(str(cfg_path))
        cfg = dict(config.lookup(host.name if host.name in config.get_hostnames() else alias))
    v = host.ansible_vars
    hostname = str(v.get("ansible_host") or cfg.get("hostname") or host.name)
    port = int(v.get("ansible_port") or cfg.get("port") or 22)
    user = v.get("ansible_user") or cfg.get("user")
    keys = [str(v["ansible_ssh_private_key_file"])] if v.get("ansible_ssh_private_key_file") else []
    keys += [os.path.expanduser(k) for k in cfg.get("identityfile", [])]
    known = [os.path.expanduser(k) for k in str(cfg.get("userknownhostsfile", "~/.ssh/known_hosts")).split()]
    return Target(host.name, hostname, port, str(user) if user else None, tuple(keys), tuple(known))


def read_files(host: Host, paths: Sequence[str], sample_root: Path | None = None) -> dict[str, bytes | None]:
    """Every path's bytes (None if absent), plus the files the previous apply listed."""
    if sample_root is not None:
        return _read_local(sample_root, paths)
    return _read_ssh(resolve(host), paths)


def _read_local(root: Path, paths: Sequence[str]) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}

    def emit(path: str) -> None:
        f = root / path.lstrip("/")
        out[path] = f.read_bytes() if f.is_file() else None

    for p in paths:
        emit(p)
    listed = root / PREVIOUS_FILES_LIST.lstrip("/")
    if listed.is_file():
        for line in listed.read_text(encoding="utf-8").splitlines():
            if line.startswith("/") and line not in out:
                emit(line)
    return out


def _read_ssh(t: Target, paths: Sequence[str]) -> dict[str, bytes | None]:
    command = "sh -c " + shlex.quote(read_script()) + " sh " + " ".join(shlex.quote(p) for p in paths)
    status, data, err = _exec_ssh(t, command)
    if status != 0:
        raise RemoteError(f"{t.host}: reading files failed (exit {status}): {err or 'no message'}")
    try:
        return parse_frames(data)
    except ValueError as exc:
        raise RemoteError(f"{t.host}: unreadable reply: {exc}") from None


def run_script(host: Host, script: str) -> str:
    """Run a read-only POSIX sh script on HOST over one connection; its stdout as text."""
    t = resolve(host)
    status, data, err = _exec_ssh(t, "sh -c " + shlex.quote(script))
    if status != 0:
        raise RemoteError(f"{t.host}: the probe failed (exit {status}): {err or 'no message'}")
    return data.decode("utf-8", errors="replace")


def _exec_ssh(t: Target, command: str) -> tuple[int, bytes, str]:
    """One connection, one exec channel: (exit status, stdout bytes, last stderr line)."""
    import paramiko

    client = paramiko.SSHClient()
    try:
        for known in t.known_hosts:
            if Path(known).is_file():
                client.load_host_keys(known)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            t.hostname,
            port=t.port,
            username=t.user,
            key_filename=list(t.key_files) or None,  # type: ignore[arg-type]  # paramiko accepts a list
            allow_agent=True,
            look_for_keys=not t.key_files,
            timeout=15,
            banner_timeout=15,
            auth_timeout=15,
        )
        _, stdout, stderr = client.exec_command(command, timeout=120)
        data = stdout.read()
        status = stdout.channel.recv_exit_status()
        err = stderr.read().decode(errors="replace").strip().splitlines()
        return status, data, err[-1] if err else ""
    except paramiko.BadHostKeyException:
        raise RemoteError(
            f"{t.host}: the host key of {t.hostname}:{t.port} does not match known_hosts — refusing "
            "(fix: verify the host, then update known_hosts with ssh-keygen -R and a fresh ssh login)"
        ) from None
    except paramiko.SSHException as exc:
        msg = str(exc)
        if "not found in known_hosts" in msg:
            raise RemoteError(
                f"{t.host}: {t.hostname}:{t.port} is not in known_hosts — refusing an unknown host key "
                f"(fix: ssh -p {t.port} {t.hostname} once and check the fingerprint, or ssh-keyscan it)"
            ) from None
        raise RemoteError(f"{t.host}: SSH to {t.hostname}:{t.port} failed: {msg}") from None
    except OSError as exc:
        raise RemoteError(f"{t.host}: cannot connect to {t.hostname}:{t.port}: {exc.strerror or exc}") from None
    finally:
        client.close()


def sample_root_of(host: Host, base: Path) -> Path | None:
    """The bundled sample host tree, when the inventory sets `warden_sample_root`."""
    if not host.sample_root:
        return None
    path = Path(host.sample_root)
    return path if path.is_absolute() else base / path
