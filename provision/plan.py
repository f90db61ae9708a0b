"""`invoke plan`: what an apply would change on each host, as unified diffs, read-only.

Render, read every live file we own or edit in one SSH round (remote.py), compare.
Edited files are shown as the whole file that would result, computed by the functions
the Ansible roles use (hostfiles.py), so the plan and the apply cannot disagree about a
line: rc.conf with sysrc(8) semantics (docs/freebsd.md#sysrc: last occurrence replaced, list
items merged, the operator's lines kept), pf.conf with the anchor hooks placed in
pfctl's section order (docs/freebsd.md#pf-anchors), rctl.conf with our managed block (docs/freebsd.md#rctl).
Owned files are compared as the apply's `warden_files` module compares them: content, mode, owner and group.

Secrets never reach the output: changes are found on the raw bytes, but every line
is printed through a mask — values of secret-looking keys everywhere, and in files
marked secret (the agents' .env) every value but the tool's own keys, on both sides.

Exit status as `terraform plan -detailed-exitcode`: 0 nothing to do, 2 changes
pending, 1 error (any host could not be planned).
"""

from __future__ import annotations

import difflib
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .hostfiles import EDITED, RC_CONF_LOCAL, edited_results, rc_conf_local_overrides
from .manifest import LIVE_MANIFEST_PATH, FileEntry, Manifest
from .masking import mask_url_credentials
from .models import OWNED, is_secret_key

if TYPE_CHECKING:
    from .models import Host
    from .remote import LiveFiles, Stat

PASSWD = "/etc/passwd"  # read to compare owners by name, as the apply does
GROUP = "/etc/group"
__all__ = ["EDITED", "MASK", "choose_targets", "exit_status", "paths_to_read", "plan_host"]
MASK = "********"

_ASSIGN = re.compile(r"^(\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*)(.*?)(\r?\n?)$", re.S)
_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")


@dataclass
class FileChange:
    path: str
    kind: str  # "added", "changed", "removed"
    diff: list[str]  # unified diff lines, masked, each ending in "\n"
    meta: list[str] = field(default_factory=list)  # "mode 0644 → 0600", "owner root → atlas"
    target: str = ""  # for added files: "0600 atlas:atlas"


@dataclass
class HostPlan:
    host: str
    changes: list[FileChange] = field(default_factory=list)
    agents_added: list[str] = field(default_factory=list)
    agents_removed: list[str] = field(default_factory=list)
    # bhyve guests the last apply did not record: `vm create` from their image (docs/freebsd.md#vm-bhyve)
    guests_added: list[str] = field(default_factory=list)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. /etc/rc.conf.local overriding our lines
    # The commands the apply runs, "concern: describe" (provision/actions.py, as the roles run them);
    # None when the live state was not probed (the bundled sample host).
    actions: list[str] | None = None
    action_warnings: list[str] = field(default_factory=list)  # e.g. a jail whose spec drifted

    @property
    def pending(self) -> bool:
        return bool(self.changes or self.guests_added or self.actions)

    def count(self, kind: str) -> int:
        return sum(c.kind == kind for c in self.changes)


# A path below an agent's home that is, or lies under, a symlink: the read did not follow it
# (remote.py `linked`), and the apply replaces or removes it as the agent (docs/security.md).
LINK_NOTE = "(a symlink below the agent's home: not followed)"


# -- masking ---------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    """Lines split on \\n only (str.splitlines would also split on \\f, \\x1c, ...)."""
    return _LINE.findall(text)


def _mask_line(line: str) -> str:
    line = mask_url_credentials(line)  # a password or a token used as the user
    m = _ASSIGN.match(line)
    if m and is_secret_key(m.group(2)) and m.group(3):
        return m.group(1) + MASK + m.group(4)
    return line


def mask_secrets(text: str) -> str:
    """TEXT with the values of secret-looking keys (models.is_secret_key) masked."""
    return "".join(_mask_line(line) for line in _lines(text))


def _eol(line: str) -> str:
    return line[len(line.rstrip("\r\n")) :]


# A word of a comment is shown only when it reads as prose: letters of any script (at most
# 24, or two short lowercase parts joined by one hyphen, as in `add-agent`), a number of
# at most 4 digits, or punctuation, each optionally wrapped in quotes, backticks, brackets
# or followed by sentence punctuation. Anything else — digits mixed with letters, long or
# several-times-hyphenated runs, `=`, `/`, `:` inside a word — may be a credential and is
# masked (docs/security.md).
_PROSE_WORD = re.compile(
    r"[`'\"(\[{<]*(?:[^\W\d_]{1,24}|[a-z]{1,10}-[a-z]{1,10}|\d{1,4}|[#*\u2022\u2013\u2014-]+)[`'\")\]}>]*[.,:;!?]*[`'\")\]}>]*"
)


def mask_comment(line: str) -> str:
    """A comment line of a secret file with every word that is not plain prose masked."""
    eol = _eol(line)
    words = re.split(r"(\s+)", line[: len(line) - len(eol)])
    return "".join(w if not w or w.isspace() or _PROSE_WORD.fullmatch(w) else MASK for w in words) + eol


def _env_shown(text: str) -> list[str]:
    """The lines of a secret .env as they may be printed: one per line of TEXT.

    Parsed as python-dotenv parses it (a quoted value may span lines).  Only the tool's
    own keys (models.OWNED: names, subnets, ports) keep their value; every other value and
    every continuation line is masked; comments are shown with every word that is not
    plain prose masked (mask_comment).  Blank lines stay blank.
    """
    from dotenv.parser import parse_stream

    lines = _lines(text)
    bindings = list(parse_stream(io.StringIO(text)))
    if "".join(b.original.string for b in bindings) != text:
        return [line if not line.strip() else MASK + _eol(line) for line in lines]
    shown: list[str] = []
    for b in bindings:
        own = _lines(b.original.string)
        body = [i for i, line in enumerate(own) if line.strip()]
        for i, line in enumerate(own):
            if not line.strip():
                shown.append(line)
            elif b.error or (body and i != body[0]):
                shown.append(MASK + _eol(line))
            elif b.key is None and line.lstrip().startswith("#"):
                shown.append(mask_comment(line))
            elif b.key in OWNED and len(body) == 1 and not is_secret_key(b.key):
                shown.append(_mask_line(line))
            elif "=" in line:
                shown.append(line[: line.index("=") + 1] + MASK + _eol(line))
            else:
                shown.append(line)
    return shown


def _shown(text: str, secret: bool) -> list[str]:
    return _env_shown(text) if secret else [_mask_line(line) for line in _lines(text)]


# -- diffs -----------------------------------------------------------------------------


def _range(start: int, stop: int) -> str:
    """A unified diff hunk range, as difflib writes it."""
    beginning, length = start + 1, stop - start
    if length == 1:
        return str(beginning)
    if not length:
        beginning -= 1
    return f"{beginning},{length}"


def unified(old: str | None, new: str | None, path: str, secret: bool = False) -> list[str]:
    """`difflib.unified_diff` of OLD → NEW, matched on the raw lines, printed masked.

    Labels `live:PATH` / `rendered:PATH` (`/dev/null` for a side that does not exist).
    A secret value that changed shows as `-KEY=********` / `+KEY=********`.
    """
    a, b = _lines(old or ""), _lines(new or "")
    shown_a, shown_b = _shown(old or "", secret), _shown(new or "", secret)
    out = [
        f"--- {'live:' + path if old is not None else '/dev/null'}\n",
        f"+++ {'rendered:' + path if new is not None else '/dev/null'}\n",
    ]
    for group in difflib.SequenceMatcher(None, a, b).get_grouped_opcodes(3):
        first, last = group[0], group[-1]
        out.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@\n")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out += [" " + line for line in shown_a[i1:i2]]
                continue
            if tag in ("replace", "delete"):
                out += ["-" + line for line in shown_a[i1:i2]]
            if tag in ("replace", "insert"):
                out += ["+" + line for line in shown_b[j1:j2]]
    return [line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in out]


# -- owners and modes ------------------------------------------------------------------


@dataclass
class Ids:
    """Names ↔ ids from the host's own /etc/passwd and /etc/group."""

    users: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, passwd: bytes | None, group: bytes | None) -> Ids:
        def table(data: bytes | None) -> dict[str, int]:
            out: dict[str, int] = {}
            for line in (data or b"").decode("utf-8", "replace").splitlines():
                parts = line.split(":")
                if len(parts) >= 3 and parts[2].isdigit() and not line.startswith(("#", "+", "-")):
                    out.setdefault(parts[0], int(parts[2]))
            return out

        return cls(table(passwd), table(group))

    def name(self, table: dict[str, int], number: int) -> str:
        return next((k for k, v in table.items() if v == number), str(number))


def _meta(entry: FileEntry, stat: Stat | None, ids: Ids) -> list[str]:
    """How the live file's mode/owner/group differ from what the apply sets.

    An owner or group the host does not know yet is not compared: the apply creates
    the agent's user first (as the module warden.provision.files skips an unknown name in check mode).
    """
    if stat is None:
        return []
    out = []
    want = int(entry.mode, 8)
    if stat.mode != want:
        out.append(f"mode {stat.mode:04o} → {want:04o}")
    uid, gid = ids.users.get(entry.owner), ids.groups.get(entry.group)
    if uid is not None and stat.uid != uid:
        out.append(f"owner {ids.name(ids.users, stat.uid)} → {entry.owner}")
    if gid is not None and stat.gid != gid:
        out.append(f"group {ids.name(ids.groups, stat.gid)} → {entry.group}")
    return out


# -- one host --------------------------------------------------------------------------


def paths_to_read(manifest: Manifest) -> list[str]:
    """Every file we own or edit, the previous apply's manifest, the id tables and the
    markers the actions are decided from (provision/actions.py)."""
    from .actions import marker_paths

    paths = [e.path for e in manifest.files] + [manifest.pf_anchor_file, *EDITED, LIVE_MANIFEST_PATH, PASSWD, GROUP]
    paths.append(RC_CONF_LOCAL)
    paths += marker_paths(manifest)
    return list(dict.fromkeys(paths))


def _decode(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")


def _change(entry: FileEntry, old: bytes | None, new: bytes | None, stat: Stat | None, ids: Ids) -> FileChange | None:
    meta = _meta(entry, stat, ids) if old is not None and new is not None else []
    if old == new and not meta:
        return None
    kind = "added" if old is None else "removed" if new is None else "changed"
    diff = [] if old == new else unified(_decode(old), _decode(new), entry.path, entry.secret)
    target = f"{entry.mode} {entry.owner}:{entry.group}" if kind == "added" else ""
    return FileChange(entry.path, kind, diff, meta, target)


def plan_host(
    manifest: Manifest,
    rendered_dir: Path,
    live: Mapping[str, bytes | None] | LiveFiles,
    stats: Mapping[str, Stat] | None = None,
    packages: Sequence[str] = (),
) -> HostPlan:
    """Compare one rendered host with its live files (pure: no I/O beyond the build tree).

    LIVE is what remote.fetch read (or a plain path → bytes mapping, then without
    mode/owner comparison).  A previous manifest that cannot be read is an error.
    When the read ran the probe, the actions the apply takes are listed too
    (provision/actions.py, the same computation the roles execute).
    """
    links: set[str] = set()
    not_read: dict[str, str] = {}
    probe_text: str | None = None
    if not isinstance(live, Mapping):
        stats, links, probe_text = live.stats, live.symlinks, live.probe
        not_read = live.agent_files
        live = live.files
    stats = stats or {}
    plan = HostPlan(manifest.host)
    prev_text = _decode(live.get(LIVE_MANIFEST_PATH))
    try:
        previous = Manifest.from_record(prev_text) if prev_text else None
    except (ValueError, KeyError, TypeError) as exc:
        plan.error = (
            f"{manifest.host}: {LIVE_MANIFEST_PATH}, the record of the last apply, cannot be read ({exc}) "
            "(fix: restore it from backup, or delete it to plan the host as never applied)"
        )
        return plan
    ids = Ids.parse(live.get(PASSWD), live.get(GROUP))
    current = {e.path: e for e in manifest.files}
    # Files we own (by path), then removed ones, then the operator's files we edit, last
    # so that rc.conf and pf.conf are next to the summary.
    changes: list[FileChange] = []
    for path, entry in sorted(current.items()):
        new = (rendered_dir / path.lstrip("/")).read_bytes()
        change = _change(entry, live.get(path), new, stats.get(path), ids)
        if change:
            changes.append(change)
            if path in links:
                change.meta.append(LINK_NOTE)
            if path in not_read:
                change.meta.append(f"(not read: {not_read[path]})")
    for entry in sorted(previous.files if previous else [], key=lambda e: e.path):
        if entry.path in current or entry.path in EDITED:
            continue
        if entry.path in not_read:
            changes.append(FileChange(entry.path, "removed", [], [f"(not read: {not_read[entry.path]})"]))
        elif entry.path not in live:  # not read (a path the read script could not list): still removed
            changes.append(FileChange(entry.path, "removed", [], ["(content not read)"]))
        elif entry.path in links:
            changes.append(FileChange(entry.path, "removed", [], [LINK_NOTE]))
        elif (change := _change(entry, live[entry.path], None, None, ids)) is not None:
            changes.append(change)
    # surrogateescape: a byte that is not UTF-8 survives the edit instead of showing as a change
    texts = {p: None if (raw := live.get(p)) is None else raw.decode("utf-8", "surrogateescape") for p in EDITED}
    for path, text in edited_results(manifest, texts, previous).items():
        entry = FileEntry(path, EDITED[path], purpose="edited")
        # The operator's file keeps its own mode and owner (we edit lines, not permissions):
        # EDITED's mode only applies to a file we create.
        change = _change(entry, live.get(path), text.encode("utf-8", "surrogateescape"), None, ids)
        if change:
            changes.append(change)
    plan.changes = changes
    plan.warnings = rc_conf_local_overrides(manifest, _decode(live.get(RC_CONF_LOCAL)))
    # One agent's unreadable file is that agent's problem: named against it, never the host's
    # failure, never read as data (docs/security.md#the-facts-read).
    if not_read:
        from .remote import agent_of_path
    for path, why in sorted(not_read.items()):
        user = agent_of_path(path) or "?"
        plan.warnings.append(
            f"agent {user}: {path} was not read: {why} (fix: as {user}, replace it by a regular file "
            f"{user} can read, or remove it: the apply writes it again as {user})"
        )
    before = set(previous.agents) if previous else set()
    plan.agents_added = sorted(set(manifest.agents) - before)
    plan.agents_removed = sorted(before - set(manifest.agents))
    known = {g.name for g in previous.guests} if previous else set()
    plan.guests_added = [
        f"guest {g.name} to be created: image {g.image_file}, disk {g.disk}, memory {g.memory}, "
        f"{g.cpus} cpu(s), address {g.uplink_ip}; started at boot after pf by rc.d/warden_guests"
        for g in manifest.guests
        if g.name not in known
    ]
    if probe_text is not None:
        from .actions import host_actions, listing
        from .probe import parse_probe

        probe = parse_probe(probe_text)
        if not probe.complete:
            plan.error = f"{manifest.host}: the live-state probe's output ended early (fix: run plan again)"
            return plan
        shown = listing(host_actions(manifest, rendered_dir, live, probe, packages=packages))
        plan.actions, plan.action_warnings = shown.lines, shown.warnings
    return plan


# -- the command -----------------------------------------------------------------------


@dataclass
class Targets:
    hosts: list[Host]
    errors: list[HostPlan]  # hosts named but not plannable (a guest without SSH settings)
    notes: list[str]  # guests left out, and why


def choose_targets(
    hosts: Sequence[Host], guests: Mapping[str, str], only: str | None, ssh_config: Path
) -> Targets | str:
    """Which machines to plan; a message instead if ONLY names none of them.

    Inventory hosts always.  A bhyve guest (GUESTS: name → its host) is a host of its
    own (docs/design.md#placement) but is not in hosts.yml: it is planned when ssh_config has a `Host`
    block naming it (typically HostName + ProxyJump through its host); otherwise it is
    listed as not planned, or is an error when asked for by name.
    """
    from .models import Host
    from .remote import has_ssh_settings

    names = [h.name for h in hosts]
    if only is not None and only not in names and only not in guests:
        listed = ", ".join(names) or "none"
        extra = f"; bhyve guests: {', '.join(sorted(guests))}" if guests else ""
        return f"no host {only!r} in the inventory (hosts: {listed}{extra})"
    out = Targets([h for h in hosts if only in (None, h.name)], [], [])
    for name, parent in sorted(guests.items()):
        if only not in (None, name):
            continue
        if has_ssh_settings(name, ssh_config):
            out.hosts.append(Host(name=name))
            continue
        why = f"bhyve guest on {parent}, no `Host {name}` block in {ssh_config}"
        if only == name:
            fix = f"add `Host {name}` with HostName {name}'s address and `ProxyJump {parent}`"
            out.errors.append(HostPlan(name, error=f"{name}: cannot plan a {why} (fix: {fix})"))
        else:
            out.notes.append(f"not planned: {name} ({why})")
    return out


def exit_status(plans: Sequence[HostPlan]) -> int:
    """1 if any host failed, else 2 if any has changes, else 0 (terraform -detailed-exitcode)."""
    if any(hp.error for hp in plans):
        return 1
    return 2 if any(hp.pending for hp in plans) else 0
