"""The files we EDIT rather than own: rc.conf, pf.conf and rctl.conf, as they would become.

Shared by `invoke plan` (to diff) and the Ansible roles (to write), so that the dry-run
and the apply can never disagree about a line.  Pure functions: live text in, text out.

- rc.conf: the manifest's desired `RcEdit`s, applied with sysrc(8) semantics by
  `provision.rcconf` (last assignment wins, other lines untouched: docs/freebsd.md#sysrc),
  plus the deletes that clean up what an earlier apply wrote and nobody wants now.
- pf.conf: the operator's file with our three anchor lines hooked in once, in pfctl's
  section order, by `provision.pfconf` (docs/freebsd.md#pf-statement-order, docs/freebsd.md#pf-anchors).
- rctl.conf: our managed block (docs/freebsd.md#rctl).
- sysctl.conf: our managed block of the bridge filtering sysctls (docs/isolation.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from .isolation import sysctl_conf_result
from .limits import rctl_conf_result
from .manifest import Manifest, RcEdit
from .pfconf import hook
from .rcconf import Append, Delete, Edit, Remove, Set, apply, read_vars


def to_rcconf(edit: RcEdit) -> Edit:
    """The provision.rcconf operation for one manifest edit."""
    if edit.op == "set":
        return Set(edit.name, edit.value)
    if edit.op == "append":
        return Append(edit.name, edit.value)
    if edit.op == "remove":
        return Remove(edit.name, edit.value)
    return Delete(edit.name)


def _numbered(name: str, prefixes: Iterable[str]) -> bool:
    """NAME is PREFIX<digits> for one of PREFIXES: `ifconfig_warden0_alias3`, not `…_aliases`."""
    return any(name.startswith(p) and name[len(p) :].isdigit() for p in prefixes)


def rc_conf_edits(manifest: Manifest, live_rc_conf: str, previous: Manifest | None = None) -> list[RcEdit]:
    """Edits taking LIVE_RC_CONF to the manifest's state, cleaning up what we set before.

    - every desired edit, in the manifest's order;
    - a delete for each live `<prefix>N` under an owned prefix (this manifest's or the
      previous one's) that is not desired: stale `ifconfig_warden0_aliasN` after an
      agent left, so no gap and no empty aliasN stays behind (docs/freebsd.md#interface-aliases);
    - for what the PREVIOUS apply set and this one no longer wants (a removed agent's
      `<agent>_enable`, vm_enable when the last guest left): a delete; and a remove
      for list items it appended and this one does not (the bridge clone in
      cloned_interfaces, docs/freebsd.md#the-warden0-bridge), so the operator's own items stay.
    Variables the operator set and we never did are never deleted.
    """
    wanted_names = {e.name for e in manifest.rc_conf if e.op == "set"}
    wanted_items = {(e.name, e.value) for e in manifest.rc_conf if e.op == "append"}
    prefixes = set(manifest.rc_conf_owned_prefixes) | set(previous.rc_conf_owned_prefixes if previous else ())
    live = read_vars(live_rc_conf)
    cleanup: list[RcEdit] = []
    deleted: set[str] = set()
    for name in sorted(live):
        if name not in wanted_names and _numbered(name, prefixes):
            cleanup.append(RcEdit("delete", name))
            deleted.add(name)
    if previous is not None:
        for e in previous.rc_conf:
            if e.op == "set" and e.name not in wanted_names and e.name in live and e.name not in deleted:
                cleanup.append(RcEdit("delete", e.name))
                deleted.add(e.name)
            elif e.op == "append" and (e.name, e.value) not in wanted_items:
                cleanup.append(RcEdit("remove", e.name, e.value))
    return [*manifest.rc_conf, *cleanup]


def rc_conf_result(
    manifest: Manifest, live_rc_conf: str, previous: Manifest | None = None, hold_pf_enable: bool = False
) -> str:
    """/etc/rc.conf as sysrc(8) would leave it after `rc_conf_edits` (docs/freebsd.md#sysrc).

    HOLD_PF_ENABLE: leave `pf_enable` as it is live.  The roles write rc.conf before PF is
    loaded; pf_enable=YES goes in only once the PF role has confirmed the new ruleset over
    a new connection, so a failed run never enables an untested ruleset at the next boot.
    """
    edits = rc_conf_edits(manifest, live_rc_conf, previous)
    if hold_pf_enable:
        edits = [e for e in edits if e.name != "pf_enable"]
    return apply_edits(live_rc_conf, edits)


def apply_edits(rc_conf: str, edits: Sequence[RcEdit]) -> str:
    return apply(rc_conf, [to_rcconf(e) for e in edits])


def pf_conf_result(manifest: Manifest, live_pf_conf: str) -> str:
    """/etc/pf.conf with our anchor hooked in once, in section order (docs/freebsd.md#pf-anchors)."""
    return hook(live_pf_conf, manifest.pf_anchor, manifest.pf_anchor_file)


def rctl_conf_result_for(manifest: Manifest, live_rctl_conf: str) -> str:
    """/etc/rctl.conf with our managed block holding the manifest's rules (docs/freebsd.md#rctl)."""
    return rctl_conf_result(live_rctl_conf, manifest.rctl_rules)


# The host files we edit rather than own, and the mode each gets if we create it; an
# existing one keeps its mode and owner (plan.py, warden_files' keep_mode).
RC_CONF_LOCAL = "/etc/rc.conf.local"


def rc_conf_local_overrides(manifest: Manifest, local_text: str | None) -> list[str]:
    """Our rc.conf edits that /etc/rc.conf.local overrides: rc_conf_files reads it after
    /etc/rc.conf, so its value wins at boot (docs/freebsd.md#where-rcconf-values-come-from)."""
    local = read_vars(local_text or "")
    out: list[str] = []
    for e in manifest.rc_conf:
        if e.name not in local:
            continue
        have = local[e.name]
        if e.op == "set" and have != e.value:
            out.append(f'{e.name}="{have}" (warden writes "{e.value}" to /etc/rc.conf)')
        elif e.op == "append" and e.value not in have.split():
            out.append(f'{e.name}="{have}" (lacks {e.value}, which warden adds in /etc/rc.conf)')
        elif e.op in ("remove", "delete") and (e.op == "delete" or e.value in have.split()):
            out.append(f'{e.name}="{have}" (warden removes it from /etc/rc.conf)')
    return [f"{RC_CONF_LOCAL} overrides {o}: edit {RC_CONF_LOCAL}, it is read after /etc/rc.conf" for o in out]


EDITED: dict[str, str] = {
    "/etc/rc.conf": "0644",
    "/etc/pf.conf": "0600",
    "/etc/rctl.conf": "0644",
    "/etc/sysctl.conf": "0644",
}


def edited_results(
    manifest: Manifest,
    live: Mapping[str, str | None],
    previous: Manifest | None = None,
    hold_pf_enable: bool = False,
) -> dict[str, str]:
    """Each EDITED path -> its text after our edits, given its LIVE text (None: no such file).

    The one place that says how each edited file is computed, for `invoke plan`, the
    Ansible roles (the filters of warden.provision, plugins/filter/warden.py) and the
    benches.  A file that does not exist and would stay empty (no rctl rules, no
    rctl.conf) is left out: nothing to write.
    """
    compute: dict[str, Callable[[str], str]] = {
        "/etc/rc.conf": lambda text: rc_conf_result(manifest, text, previous, hold_pf_enable),
        "/etc/pf.conf": lambda text: pf_conf_result(manifest, text),
        "/etc/rctl.conf": lambda text: rctl_conf_result_for(manifest, text),
        "/etc/sysctl.conf": lambda text: sysctl_conf_result(text, manifest.sysctl),
    }
    out: dict[str, str] = {}
    for path, fn in compute.items():
        old = live.get(path)
        new = fn(old or "")
        if old is not None or new:
            out[path] = new
    return out
