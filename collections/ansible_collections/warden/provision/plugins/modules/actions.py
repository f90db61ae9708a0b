#!/usr/bin/python
"""Run one concern's actions, as provision/actions.py computed them from live state."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: actions
short_description: Run a list of commands decided from live state, with check mode and diff
description:
  - Runs each action in order, each command as an argv (no shell), and stops at the first
    failure with the action's one-line description, its exit status and stderr.
  - After an action succeeds, writes its marker (a root-only file under /var/db/warden), so a
    marker exists only when the step and every step before it succeeded
    (docs/convergence.md); the next run reads the markers to finish what a failed run left.
  - An edit action replaces a regular expression in a root-owned file (the MAC in a jail's
    jail.conf), atomically, never through a symlink.
  - A warn action runs nothing; its description is shown as a warning on every run.
  - In check mode nothing runs; the module reports changed when any action would run,
    and the diff lists each action's description, so C(--check --diff) shows every
    command the real run takes, as C(invoke plan) does.
options:
  actions:
    description: >-
      Actions as provision.actions.Action.to_dict gives them
      (concern, describe, argv, env, marker, kind, edit).
    type: list
    elements: dict
    default: []
  concern:
    description: What the actions are for (network, pf, jails, agents, limits), for the diff's header.
    type: str
    default: ""
author: warden-provision maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Run the jails' actions
  warden.provision.actions:
    concern: jails
    actions: "{{ warden_facts_actions | selectattr('concern', 'equalto', 'jails') | list }}"
"""

RETURN = r"""
ran:
  description: The descriptions of the actions that ran (in check mode, that would run).
  type: list
  returned: always
"""

import os
import re
import stat
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

RUNS_ELSEWHERE = {"user": "ansible.builtin.user", "pf-load": "roles/warden_pf/tasks/load.yml"}


def _write(path: str, data: bytes, mode: int) -> None:
    """PATH replaced atomically by DATA (temporary file + rename in the same directory)."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".warden-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _marker_dir(path: str) -> None:
    """The marker's directory: root's, 0700, never a symlink (it holds only root's records)."""
    directory = os.path.dirname(path)
    missing = []
    d = directory
    while d not in ("", "/") and not os.path.lexists(d):
        missing.append(d)
        d = os.path.dirname(d)
    for d in reversed(missing):  # each one 0700 (makedirs would give the parents 0755)
        os.mkdir(d, 0o700)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        raise OSError(f"{directory} is not a directory owned by root")
    os.chmod(directory, 0o700)


def _edit(edit: dict[str, str]) -> str | None:
    """Apply EDIT; an error message, or None."""
    path = edit["path"]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        return f"cannot open {path}: {exc.strerror}"
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        text = fh.read().decode("utf-8", "surrogateescape")
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    new, count = re.subn(edit["pattern"], edit["replacement"], text)
    if count == 0:
        return f"{path} has no line matching {edit['pattern']}"
    if new != text:
        _write(path, new.encode("utf-8", "surrogateescape"), stat.S_IMODE(st.st_mode))
    return None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "actions": {"type": "list", "elements": "dict", "default": []},
            "concern": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    actions: list[dict[str, Any]] = module.params["actions"]
    concern: str = module.params["concern"]
    for a in actions:
        if a.get("kind") == "warn":
            module.warn(a["describe"])
    todo = [a for a in actions if a.get("kind") != "warn"]
    diff = {
        "before_header": f"live: {concern} actions",
        "after_header": f"to run: {concern} actions",
        "before": "",
        "after": "".join(a["describe"] + "\n" for a in todo),
    }
    if module.check_mode or not todo:
        module.exit_json(changed=bool(todo), ran=[a["describe"] for a in todo], diff=diff)
    ran: list[str] = []
    for a in todo:
        kind = a.get("kind", "command")
        if kind in RUNS_ELSEWHERE:
            module.fail_json(
                msg=f"{a['describe']}: a {kind} action is run by {RUNS_ELSEWHERE[kind]}, not here", ran=ran
            )
        if kind == "edit":
            err = _edit(a["edit"])
            if err:
                module.fail_json(msg=f"{a['describe']} failed: {err}", ran=ran)
        else:
            env = {str(k): str(v) for k, v in (a.get("env") or {}).items()}
            rc, _out, stderr = module.run_command(list(a["argv"]), environ_update=env, use_unsafe_shell=False)
            refused = bool(a.get("fail_stderr")) and a["fail_stderr"] in stderr
            if rc != 0 or refused:
                module.fail_json(
                    msg=f"{a['describe']} failed (exit {rc}): {stderr.strip() or 'no message'}",
                    rc=rc,
                    stderr=stderr,
                    ran=ran,
                )
        marker = a.get("marker")
        if marker:
            try:
                _marker_dir(marker["path"])
                _write(marker["path"], marker["content"].encode(), 0o600)
            except OSError as exc:
                module.fail_json(
                    msg=f"{a['describe']} ran, but its marker {marker['path']} could not be written: {exc}", ran=ran
                )
        ran.append(a["describe"])
    module.exit_json(changed=True, ran=ran, diff=diff)


if __name__ == "__main__":
    main()
