"""The files we EDIT rather than own: rc.conf, pf.conf and rctl.conf, as they would become.

Shared by `invoke plan` (to diff) and the Ansible roles (to write), so that the dry-run
and the apply can never disagree about a line.  Pure functions: live text in, text out.
"""

from __future__ import annotations

from .limits import managed_rules, rctl_conf_result
from .manifest import Manifest, RcEdit
from .pfconf import hook
from .rcconf import Append, Delete, Edit, Remove, Set, apply, read_vars


def _to_edit(e: RcEdit) -> Edit:
    if e.op == "set":
        return Set(e.name, e.value)
    if e.op == "append":
        return Append(e.name, e.value)
    if e.op == "remove":
        return Remove(e.name, e.value)
    return Delete(e.name)


def rc_conf_edits(manifest: Manifest, live_rc_conf: str, previous: Manifest | None = None) -> list[Edit]:
    """Edits taking LIVE_RC_CONF to the manifest's state, cleaning up what we set before.

    - every desired edit;
    - a Delete for each variable under an owned prefix that is not desired (stale
      `ifconfig_warden0_aliasN` after an agent is removed: no gap, FREEBSD.md §2.1);
    - for what the PREVIOUS apply set and this one no longer wants (a removed agent's
      `<agent>_enable`, vm_enable when the last guest left): a Delete, and a Remove for
      list items it appended (the bridge in cloned_interfaces).
    """
    desired = [_to_edit(e) for e in manifest.rc_conf]
    wanted_names = {e.name for e in manifest.rc_conf if e.op == "set"}
    wanted_items = {(e.name, e.value) for e in manifest.rc_conf if e.op == "append"}
    live = read_vars(live_rc_conf)
    cleanup: list[Edit] = []
    for name in sorted(live):
        if name not in wanted_names and any(name.startswith(p) for p in manifest.rc_conf_owned_prefixes):
            cleanup.append(Delete(name))
    if previous is not None:
        for e in previous.rc_conf:
            if e.op == "set" and e.name not in wanted_names and e.name in live and Delete(e.name) not in cleanup:
                cleanup.append(Delete(e.name))
            elif e.op == "append" and (e.name, e.value) not in wanted_items:
                cleanup.append(Remove(e.name, e.value))
    return desired + cleanup


def rc_conf_result(manifest: Manifest, live_rc_conf: str, previous: Manifest | None = None) -> str:
    """/etc/rc.conf as sysrc(8) would leave it after our edits."""
    return apply(live_rc_conf, rc_conf_edits(manifest, live_rc_conf, previous))


def pf_conf_result(manifest: Manifest, live_pf_conf: str) -> str:
    """/etc/pf.conf with our anchor hooked in once, in section order (FREEBSD.md §3.5)."""
    return hook(live_pf_conf, manifest.pf_anchor, manifest.pf_anchor_file)


def rctl_conf_result_for(manifest: Manifest, live_rctl_conf: str) -> str:
    """/etc/rctl.conf with our managed block holding the manifest's rules (FREEBSD.md §6)."""
    return rctl_conf_result(live_rctl_conf, manifest.rctl_rules)


def rctl_live_rules(live_rctl_conf: str) -> list[str]:
    return managed_rules(live_rctl_conf)
