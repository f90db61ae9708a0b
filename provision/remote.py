"""Reading a host's live files: one SSH connection, one exec channel, one round trip.

`invoke plan` must not open a connection per file (docs/design.md#quality-bars): the whole read is one
POSIX sh script, sent on the channel's stdin to `/bin/sh -s`, which prints every file
framed by its byte length (see `read_script`).  The command line itself carries no
data, so the login shell of the remote user (FreeBSD root had csh before 14.0) never
has to parse a quoted multi-line script.

SSH follows the operator's own settings as Ansible's ssh connection would: the
inventory's `ansible_*` variables, then `~/.ssh/config` (`PROVISION_SSH_CONFIG` points
elsewhere), the agent, key files and known_hosts.  An unknown or changed host key is
refused, never accepted.  paramiko is imported only inside the functions that connect,
so that importing `provision` stays fast (docs/design.md#architecture).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .manifest import LIVE_MANIFEST_PATH
from .models import Host
from .settings import project_root

if TYPE_CHECKING:
    import paramiko

START = b"WARDEN-FRAMES 2\n"
BATCH = 500  # paths per `ls`/`cat` call: far below ARG_MAX on FreeBSD and Linux

# What the script prints, after the START line (every <path> is preceded by its byte length):
#   M <n>\n<path>                  absent          U <n>\n<path>   exists, not readable
#   N <n>\n<path>                  not a regular file
#   S <n>\n<path>                  a symlink at or above it, below an agent's home: not followed
#   A <n>\n<path>                  below an agent's home, not read (the facts round: agent_files=False)
#   T <n>\n<path>                  below an agent's home: its reader did not finish in time
#   Z <n>\n<path>                  below an agent's home: larger than AGENT_FILE_LIMIT
#   K <n>\n<path>                  readable regular file, its bytes follow in the batch's C block
#   L <n>\n<`ls -ldnL` output>\n   mode, uid, gid and size of the batch's K files (ls sorts them)
#   C\n<the K files' bytes, concatenated in K order>\n
#   F <n> <mode> <uid> <gid> <size>\n<path><bytes>\n   one file read alone (a newline in its name,
#                                  or below an agent's home)
#   P <n>\n<probe output>\n       the live-state probe's output (provision/probe.py), when asked for
#   E\n                            the end; nothing may follow it
# Every frame is printed by root's shell: no byte a process of an agent's uid wrote ever
# reaches this stream except as the body of an F frame whose length root measured itself.
_HEADER = re.compile(rb"^(?:([MUNKSATZ]) (\d+)|L (\d+)|C|F (\d+) ([-a-zA-Z.+@]{10,12}) (\d+) (\d+) (\d+)|P (\d+)|E)$")
_LS_FIELDS = re.compile(r"^([-a-zA-Z.+@]{10,12}) +\d+ +(\d+) +(\d+) +(\d+) ")

# A file below an agent's home is read by a process of the agent's uid, which the agent can
# stop or ptrace (docs/security.md#the-facts-read): it gets this long, this many bytes.
AGENT_FILE_LIMIT = 1 << 20  # bytes; an agent's .env is a few KB
AGENT_READ_TIMEOUT = 10  # seconds, timeout(1)

# One compound command ({ ... }), so sh reads the whole script before it prints a byte:
# stdin and stdout can never block each other.  LC_ALL=C makes ${#f} a byte count in
# both FreeBSD sh and dash and the `ls` dates three words; `set -f` keeps words from
# being globbed.  Files are tested with builtins, then read in batches: one `ls -ldnL`
# (POSIX long format, numeric ids, symlinks followed) and one `cat` per batch for root's
# files, so their processes do not grow with the number of agents
# (docs/design.md#quality-bars); files below an agent's home cost one process each (below).
# A size that changes between `ls` and `cat` breaks the framing and is reported, never guessed.
# The previous apply's manifest is JSON: with each object on a line of its own (tr), sed
# lists every `"path": "/..."` so that files of removed agents are read in this same
# round, whatever the layout manifest.to_json chooses.  A path with a JSON escape in it
# is not listed; plan then reports the file removed without its content.
# Below an agent's home (/home/<user>/, /usr/home/<user>/) the agent can replace any file
# or directory by a symlink: `linked` tests every component there with the builtin `[ -h ]`
# and such a path is reported (S), never read, so root never shows what a link points to
# (docs/security.md).  The components above, /home -> /usr/home included, are root's.
# With AGENTFILES=0 (the facts round of an apply) nothing there is touched at all: the
# path alone says it is an agent's (A).  Otherwise every other path there is tested and
# read with the rights of the home's owner (chroot(8) -u -g -G with its numeric ids, to
# "/", one process per such file): a link swapped in after the `[ -h ]` test, or a hard
# link to a root-only file (FreeBSD's default security.bsd.hardlink_check_uid=0 lets a
# user link files it does not own), then reads as the agent would, never as root.
# That process is the agent's: it may write anything, stop, or never end.  So its stdout
# is a file root created in a directory only root can enter (mktemp -d: 0700), its
# verdict is its exit status, its file size is capped (ulimit -f, hard and soft, which an
# unprivileged process cannot raise) and its time too (timeout(1), SIGKILL: status 124, or
# 137 where timeout signals its own process group, docs/freebsd.md#reading-as-an-agent); root then
# copies at most LIMIT+1 bytes to a file no agent process has open, measures that copy
# and frames it itself (docs/security.md#the-facts-read).
_SCRIPT = r"""{
LC_ALL=C; export LC_ALL
unset TIME_STYLE CLICOLOR CLICOLOR_FORCE
set -f
nl='
'
seen=$nl
tmpd=
n=0
linked() {
    case $1 in
    /home/*/?*) r=${1#/home/*/} ;;
    /usr/home/*/?*) r=${1#/usr/home/*/} ;;
    *) return 1 ;;
    esac
    p=${1%"$r"}
    while [ -n "$r" ]; do
        p=$p${r%%/*}
        [ -h "$p" ] && return 0
        case $r in */*) r=${r#*/}; p=$p/ ;; *) r= ;; esac
    done
    return 1
}
owner_of() {
    case $1 in
    /home/*/?*) u=${1#/home/}; h=/home/ ;;
    /usr/home/*/?*) u=${1#/usr/home/}; h=/usr/home/ ;;
    *) return 1 ;;
    esac
    h=$h${u%%/*}
    [ -d "$h" ] && [ ! -h "$h" ] || return 1
    set -- $(ls -ldn -- "$h")
    [ "$3" != 0 ] || return 1
    u=$3 g=$4
}
frame() {
    printf '%s %s\n%s' "$1" "${#2}" "$2"
}
asagent() {
    if [ -z "$tmpd" ]; then
        tmpd=$(mktemp -d /tmp/warden-read.XXXXXXXX) || { frame U "$3"; return; }
        trap 'rm -rf "$tmpd"' EXIT
    fi
    # new names each time: a process the agent left behind may still hold the last ones open
    n=$((n + 1)); out=$tmpd/o$n; st=$tmpd/s$n; copy=$tmpd/c$n
    (
        ulimit -f FSIZE
        exec timeout -s KILL TIMEOUT chroot -u "$1" -g "$2" -G "$2" / /bin/sh -c '
f=$1
if [ ! -e "$f" ] && [ ! -h "$f" ]; then exit 3; fi
[ -f "$f" ] || exit 4
[ -r "$f" ] || exit 5
ls -ldnL -- "$f" >&3 || exit 5
exec head -c LIMIT1 -- "$f"' sh "$3" >"$out" 3>"$st" </dev/null 2>/dev/null
    )
    case $? in
    0) ;;
    3) frame M "$3"; return ;;
    4) frame N "$3"; return ;;
    124 | 137) frame T "$3"; return ;;
    *) frame U "$3"; return ;;
    esac
    head -c LIMIT1 "$out" >"$copy" || { frame U "$3"; return; }
    # the agent's `ls -ldnL` line (at most LIMIT bytes: ulimit), read by the builtin
    IFS=' ' read -r mode links uid gid rest <"$st"
    set -- "$3" "$mode" "$links" "$uid" "$gid"
    size=$(wc -c <"$copy")
    size=$((size + 0))
    case $2 in
    -[-r][-w][-xsS][-r][-w][-xsS][-r][-w][-xtT] | -[-r][-w][-xsS][-r][-w][-xsS][-r][-w][-xtT][.+@]) ;;
    *) frame U "$1"; return ;;
    esac
    case $4 in '' | *[!0-9]*) frame U "$1"; return ;; esac
    case $5 in '' | *[!0-9]*) frame U "$1"; return ;; esac
    if [ "$size" -gt LIMIT ]; then frame Z "$1"; return; fi
    printf 'F %s %s %s %s %s\n%s' "${#1}" "$2" "$4" "$5" "$size" "$1"
    cat "$copy"
    printf '\n'
}
single() {
    set -- "$1" $(ls -ldnL -- "$1")
    printf 'F %s %s %s %s %s\n%s' "${#1}" "$2" "$4" "$5" "$6" "$1"
    head -c "$6" -- "$1"
    printf '\n'
}
batch() {
    for f do
        shift
        case $f in
        *"$nl"*) ;;
        *) case $seen in *"$nl$f$nl"*) continue ;; esac; seen=$seen$f$nl ;;
        esac
        case AGENTFILES$f in
        0/home/*/?* | 0/usr/home/*/?*) frame A "$f"; continue ;;
        esac
        if linked "$f"; then
            frame S "$f"
        elif owner_of "$f"; then
            asagent "$u" "$g" "$f"
        elif [ ! -e "$f" ] && [ ! -h "$f" ]; then
            frame M "$f"
        elif [ ! -f "$f" ]; then
            frame N "$f"
        elif [ ! -r "$f" ]; then
            frame U "$f"
        else
            case $f in
            *"$nl"*) single "$f" ;;
            *) frame K "$f"; set -- "$@" "$f" ;;
            esac
        fi
    done
    [ $# -eq 0 ] && return 0
    meta=$(ls -ldnL -- "$@")
    printf 'L %s\n%s\n' "${#meta}" "$meta"
    printf 'C\n'
    cat -- "$@"
    printf '\n'
}
printf 'WARDEN-FRAMES 2\n'
READ
if [ -f MANIFEST ] && [ -r MANIFEST ]; then
    extra=$(tr '{}' '\n\n' < MANIFEST | sed -n 's/.*"path":[[:space:]]*"\(\/[^"\\]*\)".*/\1/p')
    IFS=$nl
    set -- $extra
    unset IFS
    batch "$@"
fi
@@PROBE@@
printf 'E\n'
}
"""


class RemoteError(Exception):
    """A host we could not read; the message is one line naming the host and the cause."""


@dataclass(frozen=True)
class Stat:
    mode: int  # permission bits, setuid/setgid/sticky included (0o7777)
    uid: int
    gid: int


@dataclass
class LiveFiles:
    """What one read found: bytes per path (None = absent), and stat of those present."""

    files: dict[str, bytes | None] = field(default_factory=dict)
    stats: dict[str, Stat] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> why
    # Paths below an agent's home with a symlink at or above them: not read (absent in files).
    symlinks: set[str] = field(default_factory=set)
    # Paths below an agent's home that were not read (absent in files): why, in the
    # agent's terms (docs/security.md#the-facts-read).  Skipped by design in the facts
    # round; otherwise a problem of that agent, never of the whole host.
    agent_files: dict[str, str] = field(default_factory=dict)
    probe: str | None = None  # the probe's output (provision/probe.py), when the read ran it


@dataclass
class Counters:
    """SSH work done by this process (tests and bench/bench_plan.py read it); thread-safe."""

    connections: int = 0
    channels: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, connections: int = 0, channels: int = 0) -> None:
        with self._lock:
            self.connections += connections
            self.channels += channels


STATS = Counters()


@dataclass(frozen=True)
class Target:
    host: str  # the inventory name, for messages
    hostname: str
    port: int
    user: str | None
    key_files: tuple[str, ...]
    known_hosts: tuple[str, ...]
    identities_only: bool = False
    proxy_jump: str | None = None
    proxy_command: str | None = None
    timeout: float = 15.0
    become: tuple[str, ...] = ()  # argv prefix, e.g. ("sudo", "-n", "-u", "root")
    config: Path | None = None  # the ssh_config used (jump hosts are looked up in it too)


# -- the read script and its framing ---------------------------------------------------


def read_script(
    paths: Sequence[str] | None = None,
    manifest: str = LIVE_MANIFEST_PATH,
    probe: str = "",
    agent_files: bool = True,
    timeout: int = AGENT_READ_TIMEOUT,
) -> str:
    """The sh script printing each path's frame, then the previous manifest's files,
    then PROBE's output (provision/probe.py) as one P frame when PROBE is given.

    With PATHS the list is embedded (`set -- ...`, for `/bin/sh -s`, BATCH paths per
    `ls`/`cat` call); without, the script reads "$@" (for `sh -c SCRIPT sh PATH...`, as
    the Ansible filter runs it).  Without AGENT_FILES nothing below an agent's home is
    read (an A frame each): the apply's facts round needs none of it, and an agent's
    process then has no part in the read (docs/security.md#the-facts-read).  TIMEOUT:
    seconds each agent file's reader may take.
    """
    # The probe runs in a subshell as root, stdin closed: its output is one frame whose
    # byte length (LC_ALL=C) the parser checks, like a file's.
    run_probe = (
        "probe_out=$( (\n" + probe + ") </dev/null 2>/dev/null )\n"
        'printf \'P %s\\n%s\\n\' "${#probe_out}" "$probe_out"\n'
        if probe
        else ""
    )
    if paths is None:
        read = 'batch "$@"'
    else:
        chunks = [paths[i : i + BATCH] for i in range(0, len(paths), BATCH)]
        read = "\n".join("set -- " + " ".join(shlex.quote(p) for p in chunk) + '\nbatch "$@"' for chunk in chunks)
    head, tail = _SCRIPT.split("@@PROBE@@\n")
    # ulimit -f counts 512-byte blocks (sh(1)); room for LIMIT+1 bytes, so that more is seen.
    blocks = (AGENT_FILE_LIMIT + 1 + 511) // 512
    values = {
        "LIMIT1": str(AGENT_FILE_LIMIT + 1),
        "LIMIT": str(AGENT_FILE_LIMIT),
        "FSIZE": str(blocks),
        "TIMEOUT": str(int(timeout)),
        "AGENTFILES": "1" if agent_files else "0",
        "MANIFEST": shlex.quote(manifest),
    }
    for key, value in values.items():
        head = head.replace(key, value)
    return head.replace("READ", read) + run_probe + tail


def _mode_bits(text: str) -> int:
    """`-rwsr-x--T` → 0o4750 | sticky: the permission part of an `ls -l` mode string."""
    perms = text[1:10]
    mode = 0
    for i, ch in enumerate(perms):
        if ch in "rwxst":  # s/t: the special bit and x; S/T: the special bit alone
            mode |= 1 << (8 - i)
    for i, bit in ((2, 0o4000), (5, 0o2000), (8, 0o1000)):
        if perms[i] in "sStT":
            mode |= bit
    return mode


def _ls_stats(listing: str, batch: Sequence[str]) -> dict[str, tuple[Stat, int]]:
    """Match `ls -ldnL` lines to the batch's paths (by name: ls sorts): stat and size."""
    out: dict[str, tuple[Stat, int]] = {}
    by_length = sorted(batch, key=len, reverse=True)
    for line in listing.split("\n"):
        path = next((p for p in by_length if line.endswith(" " + p)), None)
        m = _LS_FIELDS.match(line)
        if path is None or m is None or path in out:
            raise ValueError(f"unexpected ls line {line[:80]!r}")
        out[path] = (Stat(_mode_bits(m.group(1)), int(m.group(2)), int(m.group(3))), int(m.group(4)))
    return out


NOT_READ = "not read: the apply compares an agent's files as the agent"
TIMED_OUT = "its reader did not finish in time or was killed (a FIFO swapped in, or a process of the agent stopped it)"
TOO_LARGE = f"larger than {AGENT_FILE_LIMIT // 1024} KiB"
_AGENT_WHY = {"A": NOT_READ, "T": TIMED_OUT, "Z": TOO_LARGE}
_SED_PATH = re.compile(rb'.*"path":[ \t\n\r\f\v]*"(/[^"\\\n]*)"')


def manifest_listed(text: bytes | None) -> list[str]:
    """The paths the read script's sed finds in the previous manifest's bytes (the last
    `"path": "/..."` of each line once `{` and `}` are line breaks): the only paths, besides
    those asked for, the script frames."""
    if not text:
        return []
    out = []
    for line in text.translate(bytes.maketrans(b"{}", b"\n\n")).split(b"\n"):
        m = _SED_PATH.match(line)
        if m:
            out.append(m.group(1).decode("utf-8", "surrogateescape"))
    return out


def parse_live(data: bytes, requested: Collection[str] | None = None, manifest: str = LIVE_MANIFEST_PATH) -> LiveFiles:
    """Split the script's output back into files and stats; ValueError if it is malformed.

    Anything before the start line (a login shell's chatter) is skipped; anything after
    the end marker, a second frame for a path, or (with REQUESTED, the paths the script
    was given) a frame for a path neither asked for nor listed in MANIFEST's bytes is
    refused: the script never prints them (docs/security.md#the-facts-read).
    """
    if data.startswith(START):
        start = 0
    else:
        start = data.find(b"\n" + START) + 1
        if start == 0:
            raise ValueError("no start line (is /bin/sh a POSIX shell?)")
    live = LiveFiles()
    pos = start + len(START)
    batch: list[str] = []
    sizes: dict[str, tuple[Stat, int]] = {}
    framed: list[str] = []
    probes = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        chunk = data[pos : pos + n]
        if len(chunk) != n:
            raise ValueError(f"output ended inside {what}")
        pos += n
        return chunk

    def once(path: str) -> str:
        framed.append(path)
        return path

    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise ValueError("output ended before the end marker")
        m = _HEADER.match(data[pos:nl])
        if m is None:
            raise ValueError(f"bad frame header {data[pos:nl][:60]!r}")
        pos = nl + 1
        head = m.group(0)
        if head == b"E":
            if batch:
                raise ValueError("a batch of files was listed but not sent")
            if data[pos:].strip(b"\n"):
                raise ValueError(f"output after the end marker: {data[pos : pos + 60]!r}")
            _check_paths(framed, requested, live.files.get(manifest))
            return live
        if head == b"C":
            for path in batch:
                stat, size = sizes[path]
                live.files[path] = take(size, path)
                live.stats[path] = stat
            if take(1, "the end of a batch") != b"\n":
                raise ValueError("a file changed while it was read (run plan again)")
            batch, sizes = [], {}
        elif m.group(3) is not None:  # L: the batch's ls listing
            listing = take(int(m.group(3)), "an ls listing").decode("utf-8", "surrogateescape")
            if take(1, "an ls listing") != b"\n":
                raise ValueError("bad ls listing")
            sizes = _ls_stats(listing, batch)
            if set(sizes) != set(batch):
                raise ValueError("ls did not list every file (one changed while it was read?)")
        elif m.group(9) is not None:  # P: the probe's output
            probes += 1
            if probes > 1:
                raise ValueError("a second probe frame")
            live.probe = take(int(m.group(9)), "the probe").decode("utf-8", "replace")
            if take(1, "the probe") != b"\n":
                raise ValueError("bad probe frame")
        elif m.group(4) is not None:  # F: one file alone
            path = once(take(int(m.group(4)), "a path").decode("utf-8", "surrogateescape"))
            body = take(int(m.group(8)), path)
            if take(1, path) != b"\n":
                raise ValueError(f"{path}: changed while it was read (run plan again)")
            live.files[path] = body
            live.stats[path] = Stat(_mode_bits(m.group(5).decode()), int(m.group(6)), int(m.group(7)))
        else:
            kind = m.group(1).decode()
            path = once(take(int(m.group(2)), "a path").decode("utf-8", "surrogateescape"))
            if kind == "M":
                live.files[path] = None
            elif kind == "S":
                live.files[path] = None
                live.symlinks.add(path)
            elif kind in _AGENT_WHY:
                live.agent_files[path] = _AGENT_WHY[kind]
            elif kind in "UN":
                # Below an agent's home that is the agent's problem, shown against it by plan;
                # it never fails the host's read (docs/security.md#the-facts-read).
                why = "permission denied" if kind == "U" else "not a regular file"
                (live.agent_files if agent_of_path(path) else live.unreadable)[path] = why
            else:
                batch.append(path)


def _check_paths(framed: list[str], requested: Collection[str] | None, manifest: bytes | None) -> None:
    seen: set[str] = set()
    for path in framed:
        if path in seen:
            raise ValueError(f"a second frame for {path!r}")
        seen.add(path)
    if requested is None:
        return
    allowed = set(requested) | set(manifest_listed(manifest))
    stray = [p for p in framed if p not in allowed]
    if stray:
        raise ValueError(f"a frame for {stray[0][:80]!r}, which was not asked for")


def parse_frames(data: bytes, requested: Collection[str] | None = None) -> dict[str, bytes | None]:
    """path → bytes (None if absent); ValueError if a file could not be read at all.
    Paths below an agent's home that were not read are left out (LiveFiles.agent_files)."""
    live = parse_live(data, requested)
    if live.unreadable:
        path, why = next(iter(live.unreadable.items()))
        raise ValueError(f"{path}: {why}")
    return live.files


# -- where and how to connect ----------------------------------------------------------


def ssh_config_path() -> Path:
    return Path(os.environ.get("PROVISION_SSH_CONFIG", Path.home() / ".ssh" / "config"))


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "yes", "true", "on", "y"}
    return bool(value)


def _first(v: Mapping[str, Any], *names: str) -> Any:
    return next((v[n] for n in names if v.get(n) not in (None, "")), None)


def _ssh_args(v: Mapping[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """Options from ansible_ssh_common_args / ansible_ssh_extra_args (-o K=V, -i, -p, -l, -J, -F)."""
    words: list[str] = []
    for name in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
        if v.get(name):
            words += shlex.split(str(v[name]))
    opts: dict[str, Any] = {}
    config: Path | None = None
    flags = {"-p": "port", "-l": "user", "-J": "proxyjump"}
    it = iter(words)
    for word in it:
        flag, rest = word[:2], word[2:]
        if flag not in ("-o", "-i", "-F", *flags):
            continue
        arg = rest or next(it, "")
        if flag == "-o":
            key, _, value = arg.replace("=", " ", 1).partition(" ")
            key = key.lower()
            if key == "identityfile":
                opts.setdefault("identityfile", []).append(value.strip())
            else:
                opts.setdefault(key, value.strip())
        elif flag == "-i":
            opts.setdefault("identityfile", []).append(arg)
        elif flag == "-F":
            config = Path(os.path.expanduser(arg))
        else:
            opts.setdefault(flags[flag], arg)
    return opts, config


def _become(v: Mapping[str, Any], user: str | None, host: str) -> tuple[str, ...]:
    if not _truthy(v.get("ansible_become")):
        return ()
    method = str(v.get("ansible_become_method") or "sudo")
    as_user = str(v.get("ansible_become_user") or "root")
    if user == as_user:
        return ()
    if method not in ("sudo", "doas"):
        raise RemoteError(
            f"{host}: ansible_become_method {method} asks for a password, which plan cannot type "
            "(fix: use sudo or doas with NOPASSWD/nopass for this user, or connect as root)"
        )
    return (method, "-n", "-u", as_user)


def resolve(host: Host, ssh_config: Path | None = None) -> Target:
    """Where and how to connect, as Ansible's ssh connection plugin would.

    Ansible runs `ssh [args] <ansible_host>`: ssh_config is matched against
    ansible_host (the inventory name when unset); ansible_port, ansible_user and the
    private key file are passed as options, so they win over the file.
    """
    import paramiko

    v = host.ansible_vars
    alias = str(_first(v, "ansible_host", "ansible_ssh_host") or host.name)
    cli, cli_config = _ssh_args(v)
    cfg_path = cli_config or ssh_config or ssh_config_path()
    cfg: dict[str, Any] = {}
    if cfg_path.is_file():
        try:
            cfg = dict(paramiko.SSHConfig.from_path(str(cfg_path)).lookup(alias))
        except Exception as exc:  # paramiko raises several types for a config it cannot parse
            raise RemoteError(f"{host.name}: cannot read {cfg_path}: {_one_line(str(exc))}") from None
    opts = {**cfg, **{k: val for k, val in cli.items() if k != "identityfile"}}
    hostname = str(opts.get("hostname") or alias)
    port = int(_first(v, "ansible_port", "ansible_ssh_port") or opts.get("port") or 22)
    user_value = _first(v, "ansible_user", "ansible_ssh_user", "ansible_remote_user") or opts.get("user")
    user = str(user_value) if user_value else None
    keys = [str(k) for k in (_first(v, "ansible_ssh_private_key_file", "ansible_private_key_file"),) if k]
    keys += list(cli.get("identityfile", [])) + list(cfg.get("identityfile", []))
    keys = [os.path.expanduser(k) for k in dict.fromkeys(keys)]
    user_known = str(opts.get("userknownhostsfile", "~/.ssh/known_hosts ~/.ssh/known_hosts2"))
    global_known = str(opts.get("globalknownhostsfile", "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"))
    known = tuple(os.path.expanduser(k) for k in (user_known + " " + global_known).split())
    jump = opts.get("proxyjump")
    proxy = opts.get("proxycommand")
    timeout = float(opts.get("connecttimeout") or 15)
    return Target(
        host=host.name,
        hostname=hostname,
        port=port,
        user=user,
        key_files=tuple(keys),
        known_hosts=known,
        identities_only=_truthy(opts.get("identitiesonly", "no")),
        proxy_jump=None if not jump or str(jump).lower() == "none" else str(jump),
        proxy_command=None if not proxy or str(proxy).lower() == "none" else str(proxy),
        timeout=timeout,
        become=_become(v, user, host.name),
        config=cfg_path if cfg_path.is_file() else None,
    )


def has_ssh_settings(name: str, ssh_config: Path | None = None) -> bool:
    """Whether ssh_config names NAME in a Host pattern other than the catch-all `*`."""
    import fnmatch

    path = ssh_config or ssh_config_path()
    if not path.is_file():
        return False
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        words = line.strip().replace("=", " ").split()
        if len(words) < 2 or words[0].lower() != "host":
            continue
        patterns = [w for w in words[1:] if not w.startswith("!")]
        if any(p != "*" and fnmatch.fnmatchcase(name, p) for p in patterns):
            return True
    return False


def _jump_targets(t: Target) -> list[Target]:
    """The ProxyJump chain (`[user@]host[:port],...`), each hop resolved through ssh_config too."""
    if t.proxy_jump is None:
        return []
    hops = []
    for spec in t.proxy_jump.split(","):
        m = re.match(r"^(?:(?:ssh://)?([^@]+)@)?(\[[^\]]+\]|[^:]+)(?::(\d+))?$", spec.strip())
        if m is None:
            raise RemoteError(f"{t.host}: cannot parse ProxyJump {spec!r}")
        hvars: dict[str, Any] = {}
        if m.group(1):
            hvars["ansible_user"] = m.group(1)
        if m.group(3):
            hvars["ansible_port"] = int(m.group(3))
        hop = resolve(Host(name=m.group(2).strip("[]"), ansible_vars=hvars), t.config)
        hops.append(replace(hop, host=t.host, proxy_jump=None, become=()))
    return hops


# -- reading ---------------------------------------------------------------------------


def local_root(host: Host, base: Path | None = None) -> Path | None:
    """A directory read instead of SSH: `warden_sample_root` (the bundled example), or
    `/` for `ansible_connection: local` (plan run on the FreeBSD host itself).  A relative
    sample root is relative to the project (PROVISION_ROOT, else the current directory)."""
    if host.sample_root:
        path = Path(host.sample_root)
        return path if path.is_absolute() else (base or project_root()) / path
    if str(host.ansible_vars.get("ansible_connection", "")) == "local":
        return Path("/")
    return None


def sample_root_of(host: Host, base: Path | None = None) -> Path | None:
    """The bundled sample host tree, when the inventory sets `warden_sample_root`."""
    if not host.sample_root:
        return None
    return local_root(host, base)


def _manifest_paths(text: bytes) -> list[str]:
    try:
        data = json.loads(text)
        return [str(f["path"]) for f in data.get("files", []) if str(f.get("path", "")).startswith("/")]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


_AGENT_PATH = re.compile(r"/(?:usr/)?home/([^/]+)/.+", re.DOTALL)


def agent_of_path(path: str) -> str | None:
    """The user whose home PATH lies below (/home/<user>/…, /usr/home/<user>/…), as the
    read script's `case` patterns tell; None for root's paths."""
    m = _AGENT_PATH.fullmatch(path)
    return m.group(1) if m else None


def _linked(root: Path, path: str) -> bool:
    """The read script's `linked` for a host whose / is ROOT."""
    parts = path.split("/")
    start = 3 if parts[:2] == ["", "home"] else 4 if parts[:3] == ["", "usr", "home"] else None
    if start is None or len(parts) <= start:
        return False
    return any(os.path.islink(root.joinpath(*parts[1 : i + 1])) for i in range(start, len(parts)))


def read_local(root: Path, paths: Sequence[str], manifest: str = LIVE_MANIFEST_PATH) -> LiveFiles:
    """What the script would print for a host whose `/` is ROOT, read directly."""
    live = LiveFiles()

    def frame(path: str) -> None:
        f = root / path.lstrip("/")
        if _linked(root, path):
            live.files[path] = None
            live.symlinks.add(path)
        elif not os.path.lexists(f):
            live.files.setdefault(path, None)
        elif not f.is_file():
            (live.agent_files if agent_of_path(path) else live.unreadable)[path] = "not a regular file"
        elif not os.access(f, os.R_OK):
            (live.agent_files if agent_of_path(path) else live.unreadable)[path] = "permission denied"
        else:
            st = f.stat()
            live.files[path] = f.read_bytes()
            live.stats[path] = Stat(st.st_mode & 0o7777, st.st_uid, st.st_gid)

    for p in dict.fromkeys(paths):
        frame(p)
    previous = live.files.get(manifest)
    for p in _manifest_paths(previous or b""):
        if p not in live.files and p not in live.unreadable:
            frame(p)
    return live


def fetch(host: Host, paths: Sequence[str], ssh_config: Path | None = None, probe: str = "") -> LiveFiles:
    """Every path's bytes and stat, plus the files of the previous apply, in one round;
    with PROBE (provision/probe.py) its output too, in the same round (LiveFiles.probe).
    The bundled sample host is a tree on disk: nothing is probed there (probe stays None).

    Raises RemoteError (one line, naming the host) if the host cannot be reached, refuses
    us, or a path cannot be read (permission, or not a regular file).
    """
    root = local_root(host)
    if root is not None:
        live = read_local(root, paths)
        who = "this user"
        if probe and host.sample_root is None:  # plan run on the host itself
            import subprocess

            out = subprocess.run(["/bin/sh", "-c", probe], capture_output=True, stdin=subprocess.DEVNULL, check=False)
            live.probe = out.stdout.decode("utf-8", "replace")
    else:
        t = resolve(host, ssh_config)
        command = " ".join(shlex.quote(w) for w in (*t.become, "/bin/sh", "-s"))
        script = read_script(list(dict.fromkeys(paths)), probe=probe)
        status, data, err = _exec_ssh(t, command, script.encode())
        if status != 0:
            fix = " (fix: allow it without a password, or connect as root)" if t.become else ""
            raise RemoteError(f"{t.host}: reading files failed (exit {status}): {err or 'no message'}{fix}")
        try:
            live = parse_live(data, paths)
        except ValueError as exc:
            raise RemoteError(f"{t.host}: unreadable reply: {exc}") from None
        who = t.user or "the SSH user"
    if live.unreadable:
        path, why = next(iter(sorted(live.unreadable.items())))
        more = f" and {len(live.unreadable) - 1} more" if len(live.unreadable) > 1 else ""
        fix = (
            "make it a regular file or move it away"
            if why.startswith("not")
            else "connect as root, or set ansible_become: true with passwordless sudo or doas"
        )
        raise RemoteError(f"{host.name}: cannot read {path}{more} as {who}: {why} (fix: {fix})")
    return live


def fetch_files(host: Host, paths: Sequence[str], ssh_config: Path | None = None) -> dict[str, bytes | None]:
    """path → live bytes (None if absent) for PATHS and the previous apply's files; one round."""
    return fetch(host, paths, ssh_config).files


def read_files(host: Host, paths: Sequence[str], sample_root: Path | None = None) -> dict[str, bytes | None]:
    """Every path's bytes (None if absent), plus the files the previous apply listed."""
    if sample_root is not None:
        live = read_local(sample_root, paths)
        if live.unreadable:
            path, why = next(iter(live.unreadable.items()))
            raise RemoteError(f"{host.name}: cannot read {path}: {why}")
        return live.files
    return fetch_files(host, paths)


def run_script(host: Host, script: str) -> str:
    """Run a read-only POSIX sh script on HOST over one connection; its stdout as text."""
    t = resolve(host)
    # On stdin to /bin/sh -s, as the plan read does: a csh login shell never parses it; under
    # the same become as the read and as site.yml (ansible_become), so the probe sees what they see.
    command = " ".join(shlex.quote(w) for w in (*t.become, "/bin/sh", "-s"))
    status, data, err = _exec_ssh(t, command, stdin=script.encode())
    if status != 0:
        fix = " (fix: allow it without a password, or connect as root)" if t.become else ""
        raise RemoteError(f"{t.host}: the probe failed (exit {status}): {err or 'no message'}{fix}")
    return data.decode("utf-8", errors="replace")


# -- SSH -------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _quiet_paramiko() -> None:
    """paramiko logs failures with tracebacks; with no handler they would reach stderr."""
    import logging

    logger = logging.getLogger("paramiko")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def _connect(t: Target, sock: Any = None) -> paramiko.SSHClient:
    import paramiko

    client = paramiko.SSHClient()
    for known in t.known_hosts:
        if Path(known).is_file():
            try:
                client.load_host_keys(known)
            except (OSError, paramiko.SSHException):
                continue
    # Never accept an unknown key (docs/design.md#secrets): StrictHostKeyChecking=no in ssh_config
    # does not change this; the operator verifies the host once with ssh.
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    if sock is None and t.proxy_command:
        sock = paramiko.ProxyCommand(t.proxy_command)
    STATS.add(connections=1)
    client.connect(
        t.hostname,
        port=t.port,
        username=t.user,
        key_filename=list(t.key_files) or None,  # type: ignore[arg-type]  # paramiko accepts a list
        allow_agent=not (t.identities_only and t.key_files),
        look_for_keys=not t.key_files,
        timeout=t.timeout,
        banner_timeout=t.timeout,
        auth_timeout=t.timeout,
        sock=sock,
    )
    return client


def _describe(t: Target, hop: Target, exc: BaseException) -> RemoteError:
    import paramiko

    at = f"{hop.hostname}:{hop.port}"
    login = f"{hop.user + '@' if hop.user else ''}{hop.hostname}"
    via = "" if hop is t else " (jump host)"
    if isinstance(exc, paramiko.BadHostKeyException):
        return RemoteError(
            f"{t.host}: the host key of {at}{via} does not match known_hosts — refusing; it may be an "
            f"attack, or the host was reinstalled (fix: check the fingerprint with the host's console, then "
            f"ssh-keygen -R '[{hop.hostname}]:{hop.port}' and ssh -p {hop.port} {login} once)"
        )
    if isinstance(exc, paramiko.PasswordRequiredException):
        return RemoteError(f"{t.host}: the private key for {login}{via} is encrypted (fix: ssh-add it to your agent)")
    if isinstance(exc, paramiko.AuthenticationException):
        keys = ", ".join(hop.key_files) or "agent and default keys"
        return RemoteError(
            f"{t.host}: {at}{via} refused login as {hop.user or 'the local user'} with {keys} "
            "(fix: ssh-add your key, or set IdentityFile / ansible_ssh_private_key_file and ansible_user)"
        )
    if isinstance(exc, paramiko.SSHException):
        msg = _one_line(str(exc))
        if "not found in known_hosts" in msg:
            return RemoteError(
                f"{t.host}: {at}{via} is not in known_hosts — refusing an unknown host key (fix: ssh -p "
                f"{hop.port} {login} once and check the fingerprint, or ssh-keyscan -p {hop.port} "
                f"{hop.hostname} >> ~/.ssh/known_hosts after verifying it)"
            )
        return RemoteError(f"{t.host}: SSH to {at}{via} failed: {msg}")
    if isinstance(exc, OSError):
        # paramiko's NoValidConnectionsError keeps each address's own error in .errors
        first = next(iter(getattr(exc, "errors", {}).values()), exc)
        why = first.strerror or exc.strerror or _one_line(str(exc)) or type(exc).__name__
        return RemoteError(f"{t.host}: cannot connect to {at}{via}: {why}")
    return RemoteError(f"{t.host}: SSH to {at}{via} failed: {_one_line(str(exc)) or type(exc).__name__}")


def _exec_ssh(t: Target, command: str, stdin: bytes | None = None) -> tuple[int, bytes, str]:
    """One connection (plus one per jump host), one exec channel: (status, stdout, last stderr line)."""
    import paramiko

    _quiet_paramiko()
    chain = [*_jump_targets(t), t]
    clients: list[paramiko.SSHClient] = []
    hop = chain[0]
    try:
        sock: Any = None
        for i, hop in enumerate(chain):
            client = _connect(hop, sock)
            clients.append(client)
            if i + 1 < len(chain):
                nxt = chain[i + 1]
                transport = client.get_transport()
                assert transport is not None
                try:
                    sock = transport.open_channel("direct-tcpip", (nxt.hostname, nxt.port), ("127.0.0.1", 0))
                except paramiko.ChannelException as exc:
                    raise RemoteError(
                        f"{t.host}: jump host {hop.hostname}:{hop.port} could not reach {nxt.hostname}:{nxt.port}: "
                        f"{exc.text} (fix: check the address in ssh_config, and AllowTcpForwarding on the jump host)"
                    ) from None
        STATS.add(channels=1)
        stdin_f, stdout_f, stderr_f = clients[-1].exec_command(command, timeout=120)
        if stdin is not None:
            stdin_f.write(stdin)
            stdin_f.flush()
        stdin_f.channel.shutdown_write()
        data = stdout_f.read()
        status = stdout_f.channel.recv_exit_status()
        err = stderr_f.read().decode(errors="replace").strip().splitlines()
        return status, data, _one_line(err[-1]) if err else ""
    except RemoteError:
        raise
    except Exception as exc:  # paramiko and socket errors, described in one line
        raise _describe(t, hop, exc) from None
    finally:
        for client in reversed(clients):
            client.close()
