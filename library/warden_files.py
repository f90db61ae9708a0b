#!/usr/bin/python
"""Install a set of whole files in one module call; report and diff only what changes."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: warden_files
short_description: Install many rendered files at once, with check mode and diff
description:
  - Writes each file whose content, mode, owner or group differs, atomically
    (temporary file + rename in the same directory), and removes the listed paths.
  - One call per host whatever the number of agents, so a no-change run costs the
    same for 1 and for 50 agents (SPEC section 10).
  - Files marked secret are never shown in the diff.
  - Files marked keep_mode (the operator's rc.conf, pf.conf, rctl.conf that we edit)
    keep their existing mode, owner and group; the given ones apply only on creation.
options:
  files:
    description: Files to install.
    type: list
    elements: dict
    default: []
  directories:
    description: Directories to create first (path, owner, group, mode); existing ones get owner and mode fixed.
    type: list
    elements: dict
    default: []
  remove:
    description: Absolute paths to delete if present.
    type: list
    elements: str
    default: []
  backup_dir:
    description: Directory keeping the previous version of each changed file, by path.
    type: str
author: warden-provision
"""

EXAMPLES = r"""
- name: Install rendered files
  warden_files:
    files:
      - {path: /etc/pf.warden.conf, content: "...", mode: "0644", owner: root, group: wheel}
"""

RETURN = r"""
changed_paths:
  description: Paths written or removed.
  type: list
  returned: always
"""

import grp
import os
import pwd
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule


def _ids(owner: str, group: str) -> tuple[int | None, int | None]:
    try:
        uid = pwd.getpwnam(owner).pw_uid
    except KeyError:
        uid = None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = None
    return uid, gid


def _needs(path: str, content: bytes, mode: int, uid: int | None, gid: int | None) -> tuple[bool, bytes | None]:
    if not os.path.isfile(path):
        return True, None
    with open(path, "rb") as fh:
        before = fh.read()
    st = os.stat(path)
    differs = (
        before != content
        or (st.st_mode & 0o7777) != mode
        or (uid is not None and st.st_uid != uid)
        or (gid is not None and st.st_gid != gid)
    )
    return differs, before


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "files": {"type": "list", "elements": "dict", "default": [], "no_log": False},
            "directories": {"type": "list", "elements": "dict", "default": []},
            "remove": {"type": "list", "elements": "str", "default": []},
            "backup_dir": {"type": "str"},
        },
        supports_check_mode=True,
    )
    changed_paths: list[str] = []
    diffs: list[dict[str, str]] = []
    for d in module.params["directories"]:
        path, mode = d["path"], int(str(d.get("mode", "0755")), 8)
        uid, gid = _ids(d.get("owner", "root"), d.get("group", "wheel"))
        if os.path.isdir(path):
            st = os.stat(path)
            if (
                (st.st_mode & 0o7777) == mode
                and (uid is None or st.st_uid == uid)
                and (gid is None or st.st_gid == gid)
            ):
                continue
        changed_paths.append(path + "/")
        diffs.append(
            {"before_header": path, "after_header": path, "before": "", "after": f"directory {d.get('mode', '0755')}\n"}
        )
        if module.check_mode:
            continue
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
        os.chown(path, uid if uid is not None else -1, gid if gid is not None else -1)
    for f in module.params["files"]:
        path = f["path"]
        content = f.get("content", "").encode("utf-8")
        mode = int(str(f.get("mode", "0644")), 8)
        owner, group = f.get("owner", "root"), f.get("group", "wheel")
        uid, gid = _ids(owner, group)
        if f.get("keep_mode") and os.path.isfile(path):
            st = os.stat(path)
            mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
        if uid is None and not module.check_mode:
            module.fail_json(msg=f"{path}: user {owner} does not exist on the host")
        if gid is None and not module.check_mode:
            # FreeBSD's root group is wheel; hosts without one fall back to gid 0.
            gid = 0 if group == "wheel" else None
            if gid is None:
                module.fail_json(msg=f"{path}: group {group} does not exist on the host")
        differs, before = _needs(path, content, mode, uid, gid)
        if not differs:
            continue
        changed_paths.append(path)
        if f.get("secret"):
            diffs.append(
                {
                    "before_header": path,
                    "after_header": path,
                    "before": "",
                    "after": "(secret file changed; not shown)\n",
                }
            )
        else:
            diffs.append(
                {
                    "before_header": path if before is not None else "/dev/null",
                    "after_header": path,
                    "before": (before or b"").decode("utf-8", "replace"),
                    "after": content.decode("utf-8", "replace"),
                }
            )
        if module.check_mode:
            continue
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        if before is not None and module.params.get("backup_dir"):
            backup = os.path.join(module.params["backup_dir"], path.lstrip("/"))
            os.makedirs(os.path.dirname(backup), exist_ok=True)
            shutil.copy2(path, backup)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".warden.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
            os.chmod(tmp, mode)
            os.chown(tmp, uid if uid is not None else -1, gid if gid is not None else -1)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    for path in module.params["remove"]:
        if os.path.lexists(path):
            changed_paths.append(path)
            diffs.append({"before_header": path, "after_header": "/dev/null", "before": "(removed)\n", "after": ""})
            if not module.check_mode:
                os.unlink(path)
    module.exit_json(changed=bool(changed_paths), changed_paths=changed_paths, diff=diffs)


if __name__ == "__main__":
    main()
