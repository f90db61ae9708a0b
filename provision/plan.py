"""`invoke plan`: what an apply would change on each host, as unified diffs, read-only.

Render, read every live file we own or edit in one SSH round, and compare.  Edited
files (rc.conf, pf.conf, rctl.conf) are shown as the whole file that would result,
computed by the same functions the Ansible roles use (hostfiles.py).  Exit status as
`terraform plan -detailed-exitcode`: 0 nothing to do, 2 changes pending, 1 error.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .hostfiles import pf_conf_result, rc_conf_result, rctl_conf_result_for
from .manifest import LIVE_MANIFEST_PATH, Manifest
from .models import is_secret_key

RC_CONF = "/etc/rc.conf"
PF_CONF = "/etc/pf.conf"
RCTL_CONF = "/etc/rctl.conf"
MASK = "********"
_ASSIGN = re.compile(r"^(\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*)(.*)$")


@dataclass
class FileChange:
    path: str
    kind: str  # "added", "changed", "removed"
    diff: list[str]


@dataclass
class HostPlan:
    host: str
    changes: list[FileChange] = field(default_factory=list)
    agents_added: list[str] = field(default_factory=list)
    agents_removed: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def pending(self) -> bool:
        return bool(self.changes)


def mask_secrets(text: str) -> str:
    """Replace the values of secret-looking keys (models.is_secret_key) with a mask."""
    out = []
    for line in text.splitlines(keepends=True):
        m = _ASSIGN.match(line.rstrip("\r\n"))
        if m and is_secret_key(m.group(2)) and m.group(3):
            line = m.group(1) + MASK + line[len(line.rstrip("\r\n")) :]
        out.append(line)
    return "".join(out)


def paths_to_read(manifest: Manifest) -> list[str]:
    return [e.path for e in manifest.files] + [RC_CONF, PF_CONF, RCTL_CONF, LIVE_MANIFEST_PATH]


def _decode(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")


def _diff(path: str, old: str | None, new: str | None) -> FileChange | None:
    if old == new:
        return None
    kind = "added" if old is None else "removed" if new is None else "changed"
    lines = list(
        difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            (new or "").splitlines(keepends=True),
            fromfile=f"live:{path}" if old is not None else "/dev/null",
            tofile=f"rendered:{path}" if new is not None else "/dev/null",
        )
    )
    no_eol = "\n\\ No newline at end of file\n"
    return FileChange(path, kind, [ln if ln.endswith("\n") else ln + no_eol for ln in lines])


def plan_host(manifest: Manifest, rendered_dir: Path, live: Mapping[str, bytes | None]) -> HostPlan:
    """Compare one rendered host with its live files (pure: no I/O beyond the build tree)."""
    plan = HostPlan(manifest.host)
    prev_text = _decode(live.get(LIVE_MANIFEST_PATH))
    previous = Manifest.from_json(prev_text) if prev_text else None
    current = {e.path: e for e in manifest.files}
    for path, entry in sorted(current.items()):
        new = (rendered_dir / path.lstrip("/")).read_text(encoding="utf-8")
        old = _decode(live.get(path))
        if entry.secret:
            new, old = mask_secrets(new), None if old is None else mask_secrets(old)
        change = _diff(path, old, new)
        if change:
            plan.changes.append(change)
    if previous is not None:
        for entry in previous.files:
            if entry.path not in current and live.get(entry.path) is not None:
                old = _decode(live[entry.path]) or ""
                change = _diff(entry.path, mask_secrets(old) if entry.secret else old, None)
                if change:
                    plan.changes.append(change)
    edited: list[tuple[str, Callable[[str], str]]] = [
        (RC_CONF, lambda t: rc_conf_result(manifest, t, previous)),
        (PF_CONF, lambda t: pf_conf_result(manifest, t)),
        (RCTL_CONF, lambda t: rctl_conf_result_for(manifest, t)),
    ]
    for path, result in edited:
        old = _decode(live.get(path))
        new = result(old or "")
        if old is None and new == "":
            continue
        change = _diff(path, old, new)
        if change:
            plan.changes.append(change)
    before = set(previous.agents) if previous else set()
    plan.agents_added = sorted(set(manifest.agents) - before)
    plan.agents_removed = sorted(before - set(manifest.agents))
    return plan


def files_list(manifest: Manifest) -> str:
    """The /var/db/warden/files record an apply installs: every path we own, one per line."""
    return "".join(f"{e.path}\n" for e in manifest.files)
