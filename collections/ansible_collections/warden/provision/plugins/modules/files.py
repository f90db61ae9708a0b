#!/usr/bin/python
"""Install a set of whole files in one module call; report and diff only what changes."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: files
short_description: Install many rendered files at once, with check mode and diff
description:
  - Writes each file whose content, mode, owner or group differs, atomically
    (temporary file + rename in the same directory), and removes the listed paths.
  - One call per host whatever the number of agents, so a no-change run costs the
    same for 1 and for 50 agents (SPEC section 10).
  - Files marked secret are never shown in the diff.
  - Files marked keep_mode (the operator's rc.conf, pf.conf, rctl.conf that we edit)
    keep their existing mode, owner and group; the given ones apply only on creation.
  - A file with C(expect) (a list of sha256 hex digests of whole contents, or C(absent))
    is written only when what is there now is one of them, since the content was computed
    from an earlier read and an edit made since would otherwise be reverted silently. On a
    mismatch nothing at all is written and the task fails, saying so.
  - Files, directories and removals owned by a user other than root (an agent's .env,
    its directory) are handled by a child process per such user that drops to the user's
    uid, gid and groups first, so the kernel refuses whatever the user could not do
    itself, through any symlink it planted (docs/security.md). The child refuses a
    directory that is a symlink, and never reads or shows a file through one.
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
    description: Absolute paths to delete if present; a dict {path, owner} is deleted as that owner.
    type: list
    elements: raw
    default: []
  backup_dir:
    description: Directory keeping the previous version of each changed file, by path.
    type: str
author: warden-provision maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Install rendered files
  warden.provision.files:
    files:
      - {path: /etc/pf.warden.conf, content: "...", mode: "0644", owner: root, group: wheel}
"""

RETURN = r"""
changed_paths:
  description: Paths written or removed.
  type: list
  returned: always
"""

import functools
import grp
import hashlib
import json
import os
import pwd
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable
from typing import Any

from ansible.module_utils.basic import AnsibleModule

Result = dict[str, Any]  # {"changed_paths": [...], "diffs": [...]} or {"error": "..."}


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


def _needs(
    path: str, content: bytes, mode: int, uid: int | None, gid: int | None, capped: bool = False
) -> tuple[bool, bytes | None]:
    """Whether PATH must be (re)written, and its bytes; never through a symlink at PATH.

    CAPPED (an agent's file): read at most one byte more than CONTENT, which tells a
    difference just as well, so that a sparse multi-GB file costs nothing.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return True, None  # absent, a symlink (ELOOP), or not readable by this process
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return True, None
        with os.fdopen(os.dup(fd), "rb") as fh:
            before = fh.read(len(content) + 1) if capped else fh.read()
    finally:
        os.close(fd)
    differs = (
        before != content
        or (st.st_mode & 0o7777) != mode
        or (uid is not None and st.st_uid != uid)
        or (gid is not None and st.st_gid != gid)
    )
    return differs, before


def _diff(path: str, before: bytes | None, content: bytes, secret: bool) -> dict[str, str]:
    if secret:
        return {
            "before_header": path,
            "after_header": path,
            "before": "",
            "after": "(secret file changed; not shown)\n",
        }
    return {
        "before_header": path if before is not None else "/dev/null",
        "after_header": path,
        "before": (before or b"").decode("utf-8", "replace"),
        "after": content.decode("utf-8", "replace"),
    }


def _write(path: str, content: bytes, mode: int, uid: int, gid: int) -> None:
    """PATH whole or not at all: a temporary file in its directory, fsync, rename."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".warden.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            st = os.fstat(fh.fileno())
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.fchown(fh.fileno(), uid if st.st_uid != uid else -1, gid if st.st_gid != gid else -1)
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # rename(2) replaces a symlink at PATH, never its target
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


# -- what a dropped child does for one user, with that user's rights only ---------------


def _user_work(
    uid: int,
    gid: int,
    *,
    directories: list[dict[str, Any]],
    files: list[dict[str, Any]],
    remove: list[str],
    check: bool,
) -> Result:
    """As the agent (uid, gid): create DIRECTORIES, write FILES, delete REMOVE; nothing if CHECK."""
    changed: list[str] = []
    diffs: list[dict[str, str]] = []
    for d in directories:
        path, mode = d["path"], int(str(d.get("mode", "0755")), 8)
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            what = f"a symlink to {os.readlink(path)}" if stat.S_ISLNK(st.st_mode) else "not a directory"
            return {"error": f"{path} is {what}, not the agent's directory: move it away and apply again"}
        if st is not None and st.st_uid != uid:
            return {"error": f"{path} is owned by uid {st.st_uid}, not the agent (uid {uid}): fix it by hand"}
        if st is not None and (st.st_mode & 0o7777) == mode and st.st_gid == gid:
            continue
        changed.append(path + "/")
        diffs.append({"before_header": path, "after_header": path, "before": "", "after": f"directory {mode:04o}\n"})
        if check:
            continue
        if st is None:
            os.makedirs(path, mode=0o700)
        os.chmod(path, mode)  # as the agent: a symlink swapped in meanwhile leads only where it may write
        if os.lstat(path).st_gid != gid:
            os.chown(path, -1, gid, follow_symlinks=False)
    for f in files:
        path, content = f["path"], f.get("content", "").encode("utf-8")
        mode = int(str(f.get("mode", "0644")), 8)
        differs, before = _needs(path, content, mode, uid, gid, capped=True)
        if not differs:
            continue
        changed.append(path)
        diffs.append(_diff(path, before, content, bool(f.get("secret"))))
        if not check:
            _write(path, content, mode, uid, gid)
    for path in remove:
        if os.path.lexists(path):
            changed.append(path)
            diffs.append({"before_header": path, "after_header": "/dev/null", "before": "(removed)\n", "after": ""})
            if not check:
                os.unlink(path)
    return {"changed_paths": changed, "diffs": diffs}


def _as_user(user: str, work: Callable[[int, int], Result]) -> Result:
    """WORK(uid, gid) in a child that has dropped to USER's uid, gid and groups for good.

    setgroups, then setgid, then setuid (setuid last: it takes the right to change the
    others away); the child then checks that it cannot get root back.  The result comes
    back as JSON on a pipe; an exception in the child is an error result.
    """
    pw = pwd.getpwnam(user)
    groups = os.getgrouplist(user, pw.pw_gid)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(rfd)
            os.setgroups(groups)
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            try:
                os.setuid(0)
            except PermissionError:
                pass
            else:
                raise RuntimeError("could not drop root")
            os.umask(0o077)
            os.chdir("/")
            result = work(pw.pw_uid, pw.pw_gid)
        except BaseException as exc:  # reported to the parent, which fails the task
            result = {"error": f"{type(exc).__name__}: {exc}"}
            code = 1
        try:
            with os.fdopen(wfd, "w") as fh:
                fh.write(json.dumps(result))
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    try:
        out: Result = json.loads(data)
    except ValueError:
        out = {"error": "the child process gave no result"}
    return out


# -- root's own files --------------------------------------------------------------------


def _root_dirs(
    module: AnsibleModule, dirs: list[dict[str, Any]], changed: list[str], diffs: list[dict[str, str]]
) -> None:
    for d in dirs:
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
        changed.append(path + "/")
        diffs.append(
            {"before_header": path, "after_header": path, "before": "", "after": f"directory {d.get('mode', '0755')}\n"}
        )
        if module.check_mode:
            continue
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
        os.chown(path, uid if uid is not None else -1, gid if gid is not None else -1)


def _pre_image(path: str) -> str:
    """sha256 of PATH's bytes, "absent", or why it cannot be hashed (never through a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file"
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 16):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def _guard(module: AnsibleModule, files: list[dict[str, Any]]) -> None:
    """Fail before any write when a file with `expect` is not as this run read or wrote it."""
    for f in files:
        expect = f.get("expect")
        if expect is None:
            continue
        now = _pre_image(f["path"])
        if now not in expect:
            module.fail_json(
                msg=(
                    f"{f['path']} changed on {socket.gethostname()} since this run read it: its content "
                    f"(sha256 {now}) is neither what the run read nor what it wrote, so writing the text "
                    "computed from the earlier read would revert that edit. Nothing was written. "
                    "Fix: run again; the new run reads the file as it is now and keeps the edit."
                ),
                path=f["path"],
                found=now,
                expected=expect,
            )


def _root_files(
    module: AnsibleModule, files: list[dict[str, Any]], changed: list[str], diffs: list[dict[str, str]]
) -> None:
    for f in files:
        path = f["path"]
        content = f.get("content", "").encode("utf-8")
        mode = int(str(f.get("mode", "0644")), 8)
        owner, group = f.get("owner", "root"), f.get("group", "wheel")
        uid, gid = _ids(owner, group)
        if f.get("keep_mode") and os.path.isfile(path):
            st = os.stat(path)
            mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
        if gid is None and group == "wheel":
            gid = 0  # FreeBSD's root group is wheel; hosts without one fall back to gid 0.
        if gid is None and not module.check_mode:
            module.fail_json(msg=f"{path}: group {group} does not exist on the host")
        differs, before = _needs(path, content, mode, uid, gid)
        if not differs:
            continue
        changed.append(path)
        diffs.append(_diff(path, before, content, bool(f.get("secret"))))
        if module.check_mode:
            continue
        if before is not None and module.params.get("backup_dir"):
            backup = os.path.join(module.params["backup_dir"], path.lstrip("/"))
            os.makedirs(os.path.dirname(backup), exist_ok=True)
            shutil.copy2(path, backup)
        _write(path, content, mode, 0 if uid is None else uid, 0 if gid is None else gid)


def _owner_of(item: dict[str, Any]) -> str:
    return str(item.get("owner", "root"))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "files": {"type": "list", "elements": "dict", "default": [], "no_log": False},
            "directories": {"type": "list", "elements": "dict", "default": []},
            "remove": {"type": "list", "elements": "raw", "default": []},
            "backup_dir": {"type": "str"},
        },
        supports_check_mode=True,
    )
    removals = [r if isinstance(r, dict) else {"path": str(r)} for r in module.params["remove"]]
    dirs, files = module.params["directories"], module.params["files"]
    users = sorted({_owner_of(x) for x in [*dirs, *files, *removals]} - {"root"})
    changed_paths: list[str] = []
    diffs: list[dict[str, str]] = []
    _guard(module, files)
    _root_dirs(module, [d for d in dirs if _owner_of(d) == "root"], changed_paths, diffs)
    _root_files(module, [f for f in files if _owner_of(f) == "root"], changed_paths, diffs)
    for path in (r["path"] for r in removals if _owner_of(r) == "root"):
        if os.path.lexists(path):
            changed_paths.append(path)
            diffs.append({"before_header": path, "after_header": "/dev/null", "before": "(removed)\n", "after": ""})
            if not module.check_mode:
                os.unlink(path)
    # Everything of an agent's user is done as that user (docs/security.md): one forked
    # child per user, no exec, so the call stays one module run per host.  What one agent
    # made of its own tree fails that agent, after every other agent is done
    # (docs/security.md#the-facts-read).
    problems: list[str] = []
    for user in users:
        mine_d = [d for d in dirs if _owner_of(d) == user]
        mine_f = [f for f in files if _owner_of(f) == user]
        mine_r = [str(r["path"]) for r in removals if _owner_of(r) == user]
        try:
            pwd.getpwnam(user)
        except KeyError:
            if not mine_d and not mine_f:
                module.warn(f"user {user} no longer exists: its files were left in place ({', '.join(mine_r)})")
                continue
            if not module.check_mode:
                module.fail_json(msg=f"user {user} does not exist on the host")
            # check mode before the user is created: everything of it would be created
            for x in [*mine_d, *mine_f]:
                changed_paths.append(x["path"] + ("/" if x in mine_d else ""))
            continue
        result = _as_user(
            user,
            functools.partial(_user_work, directories=mine_d, files=mine_f, remove=mine_r, check=module.check_mode),
        )
        if "error" in result:
            problems.append(f"as {user}: {result['error']}")
            continue
        changed_paths += result["changed_paths"]
        diffs += result["diffs"]
    if problems:
        module.fail_json(
            msg="; ".join(problems) + " (the other users' files were applied; fix what is named, then run again)",
            changed=bool(changed_paths),
            changed_paths=changed_paths,
        )
    module.exit_json(changed=bool(changed_paths), changed_paths=changed_paths, diff=diffs)


if __name__ == "__main__":
    main()
