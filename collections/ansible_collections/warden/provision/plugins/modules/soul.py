#!/usr/bin/python
"""Check out each agent's soul repo at its pinned commit, running git as the agent."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: soul
short_description: Move each soul checkout to its pinned commit, as the agent's own user
description:
  - For each soul, reads the commit its checkout is at and, when it differs, clones
    it from the bundle (once), fetches the bundle's tags and checks the pinned commit
    out detached; files the harness wrote in the checkout are kept.
  - Every git command runs as the agent's user (its uid, gid and groups, HOME set to
    its home, no environment of root's), never as root, because git runs hooks and
    configuration from the repository (core.fsmonitor, .git/hooks), which the agent
    can write (docs/security.md). No safe.directory exception is ever set.
  - One call per host for all souls; check mode reports what would move.
options:
  souls:
    description: "Each soul: name, user, group, dir (the agent's directory), bundle (path on the host), commit."
    type: list
    elements: dict
    default: []
author: warden-provision maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Place the souls
  warden.provision.soul:
    souls:
      - {name: atlas, user: atlas, group: atlas, dir: /home/atlas/clawdie,
         bundle: /var/db/warden-soul/atlas.bundle, commit: 0123456789abcdef0123456789abcdef01234567}
"""

RETURN = r"""
moved:
  description: Names of the souls checked out at a new commit (or that would be, in check mode).
  type: list
  returned: always
"""

import os
import pwd
import subprocess
from typing import Any

from ansible.module_utils.basic import AnsibleModule

GIT_TIMEOUT = 300  # seconds per git command: a stuck command fails the task instead of hanging the play


class SoulError(Exception):
    pass


def _git(pw: Any, *args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """git ARGS as the agent: subprocess drops to its uid, gid and groups before exec."""
    env = {
        "HOME": pw.pw_dir,
        "USER": pw.pw_name,
        "LOGNAME": pw.pw_name,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LC_ALL": "C",
    }
    return subprocess.run(
        ["git", *args],
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=os.getgrouplist(pw.pw_name, pw.pw_gid),
        umask=0o027,
        env=env,
        cwd=cwd or pw.pw_dir,
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT,
        check=False,
    )


def _head(pw: Any, soul: str) -> str | None:
    result = _git(pw, "-C", soul, "rev-parse", "--verify", "-q", "HEAD")
    return result.stdout.strip() if result.returncode == 0 else None


def _checkout(pw: Any, soul: str, bundle: str, commit: str) -> None:
    steps: list[tuple[str, ...]] = []
    if _git(pw, "-C", soul, "rev-parse", "--git-dir").returncode != 0:
        steps.append(("clone", "-q", "--no-checkout", bundle, soul))
    steps += [
        ("-C", soul, "fetch", "-q", bundle, "+refs/tags/*:refs/tags/*"),
        ("-C", soul, "checkout", "-q", "--detach", commit),
    ]
    for step in steps:
        result = _git(pw, *step)
        if result.returncode != 0:
            raise SoulError(f"git {' '.join(step[:3])} … as {pw.pw_name}: {result.stderr.strip()[-500:]}")
    # 0750 like the agent's directory; chmod as the agent (the checkout is the agent's).
    subprocess.run(["chmod", "0750", soul], user=pw.pw_uid, group=pw.pw_gid, check=True, timeout=GIT_TIMEOUT)


def main() -> None:
    module = AnsibleModule(
        argument_spec={"souls": {"type": "list", "elements": "dict", "default": []}},
        supports_check_mode=True,
    )
    moved: list[str] = []
    for s in module.params["souls"]:
        name, commit = str(s["name"]), str(s["commit"])
        soul = f"{s['dir']}/soul"
        try:
            pw = pwd.getpwnam(str(s["user"]))
        except KeyError:
            if module.check_mode:  # the agents role creates the user first
                moved.append(name)
                continue
            module.fail_json(msg=f"soul {name}: user {s['user']} does not exist on the host")
        if pw.pw_uid == 0:
            module.fail_json(msg=f"soul {name}: refusing to run git as root for user {s['user']}")
        if _head(pw, soul) == commit:
            continue
        moved.append(name)
        if module.check_mode:
            continue
        try:
            _checkout(pw, soul, str(s["bundle"]), commit)
        except (SoulError, subprocess.SubprocessError, OSError) as exc:
            module.fail_json(msg=f"soul {name}: {exc}", moved=moved)
    module.exit_json(changed=bool(moved), moved=moved)


if __name__ == "__main__":
    main()
