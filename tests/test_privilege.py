"""A hostile agent user against root (issue 11, items 2-4; docs/security.md).

Each attack runs as the agent's real, unprivileged user inside the SSH test host
(`setpriv` in its chroot), then the real `ansible-playbook`, `invoke plan` or the real
rendered rc.d script (under the rc.subr, daemon(8) and install(1) doubles) runs as root,
and the test looks at the host's files.  One host per module (per xdist worker) carries
the applied fleet; each test attacks it, checks, and puts the agent's files back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provision.soul import init as soul_init
from tests.hostkit.testhost import TestHost

from .conftest import REPO, Registry
from .test_ansible import playbook, recap

pytestmark = pytest.mark.e2e

CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
SERVICE_PATH = "/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin"  # what service(8) sets
MARKER = "root-only-SECRET-7f3a"  # in the test host's /etc/master.passwd: must never be shown
KEYS = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKeyOnlyXXXXXXXXXXXXXXXXXXXXXXXXXXXX operator\n"

# tmux for the test host: no session exists, and new-session runs the command in the
# foreground, so the agent's output reaches daemon(8)'s pipe (the wrapper then exits 1).
TMUX = """#!/bin/sh
case "$1" in
has-session) exit 1 ;;
new-session)
	shift
	while [ $# -gt 0 ]; do
		case "$1" in
		-d) shift ;;
		-s) shift 2 ;;
		-c) cd "$2" || exit 1; shift 2 ;;
		*) break ;;
		esac
	done
	"$@"
	exit 0 ;;
esac
exit 0
"""


@dataclass
class Fleet:
    registry: Registry
    host: TestHost
    soul: Path
    commits: list[str]

    @property
    def root(self) -> Path:
        return self.host.root

    def ids(self, user: str = "atlas") -> tuple[int, int]:
        for line in (self.root / "etc/passwd").read_text().splitlines():
            parts = line.split(":")
            if parts[0] == user:
                return int(parts[2]), int(parts[3])
        raise KeyError(user)

    def uid(self, user: str = "atlas") -> int:
        return self.ids(user)[0]

    def as_agent(self, script: str, user: str = "atlas") -> subprocess.CompletedProcess[str]:
        """SCRIPT under /bin/sh as USER (its uid, gid and groups) inside the test host."""
        uid, gid = self.ids(user)
        return subprocess.run(
            [
                CHROOT,
                str(self.root),
                "setpriv",
                f"--reuid={uid}",
                f"--regid={gid}",
                "--init-groups",
                "sh",
                "-ec",
                script,
            ],
            env={"HOME": f"/home/{user}", "PATH": "/usr/bin:/bin", "LC_ALL": "C"},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def as_root(self, *argv: str) -> tuple[int, str]:
        """ARGV as root in the test host, with the environment service(8) gives rc.d scripts.

        Its output goes through a file: daemon(8) keeps the descriptors it was given.
        """
        out = self.host.workdir / "as_root.out"
        with out.open("wb") as fh:
            code = subprocess.run(
                [CHROOT, str(self.root), "/usr/bin/env", "-i", "HOME=/", "TERM=dumb", f"PATH={SERVICE_PATH}", *argv],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=60,
            ).returncode
        return code, out.read_text(errors="replace")

    def play(self, *args: str) -> subprocess.CompletedProcess[str]:
        return playbook(self.registry, *args)

    def plan(self) -> subprocess.CompletedProcess[str]:
        ssh_config = self.registry.root / "ssh_config"
        if not ssh_config.exists():
            self.host.write_ssh_config(ssh_config, "fbsd1")
        env = {**os.environ, **self.registry.env(), "COLUMNS": "200", "PROVISION_SSH_CONFIG": str(ssh_config)}
        return subprocess.run(
            [sys.executable, "-m", "invoke", "plan"], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
        )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """atlas (one cms jail, a soul) applied to a fresh test host; the host's secrets planted."""
    base = tmp_path_factory.mktemp("privilege")
    reg = Registry(root=base, agents=base / "agents", inventory=base / "hosts.yml", build=base / "build")
    reg.agents.mkdir()
    host = TestHost(base / "testhost")
    try:
        soul = base / "soul"
        first = soul_init(soul, "atlas", "Atlas", "en-US", "ops")
        (soul / "SOUL.md").write_text("# Atlas, revised\n")
        subprocess.run(
            ["git", "-C", str(soul), "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qam", "two"],
            check=True,
        )
        second = subprocess.run(
            ["git", "-C", str(soul), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        from .test_ansible import setup

        setup(reg, host, names=("atlas",), jails="cms")
        env = reg.agents / "atlas/.env"
        env.write_text(env.read_text() + f"AGENT_COMMAND=./agent-probe\nSOUL_REPO={soul}\nSOUL_REF={first}\n")
        f = Fleet(reg, host, soul, [first, second])
        master = f.root / "etc/master.passwd"
        master.write_text(f"root:$6${MARKER}:0:0::0:0:Charlie &:/root:/bin/sh\n")
        master.chmod(0o600)
        (f.root / "root/.ssh").mkdir(mode=0o700, parents=True, exist_ok=True)
        (f.root / "root/.ssh/authorized_keys").write_text(KEYS)
        tmux = f.root / "usr/local/bin/tmux"
        tmux.write_text(TMUX)
        tmux.chmod(0o755)
        # periodic(8) runs what is in here daily as root; empty, like on most hosts.
        (f.root / "usr/local/etc/periodic/daily").mkdir(parents=True, exist_ok=True)
        result = f.play()
        assert result.returncode == 0, result.stdout[-4000:]
        yield f
    finally:
        host.stop()


def _stat(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


def _roots_files_untouched(f: Fleet, before: dict[str, tuple[int, int, int]]) -> None:
    for rel, was in before.items():
        assert _stat(f.root / rel) == was, rel
    rc_d = f.root / "usr/local/etc/rc.d"
    assert all(p.lstat().st_uid == 0 for p in rc_d.iterdir()), "an agent-owned file in rc.d"


ROOTS = ("etc", "usr/local/etc/rc.d", "etc/master.passwd", "root/.ssh/authorized_keys")


@pytest.mark.parametrize(
    ("victim", "target"),
    [
        ("clawdie", "/etc"),  # AGENT_DIR itself
        ("clawdie/logs", "/etc"),
        ("clawdie/logs", "/usr/local/etc/rc.d"),
    ],
)
def test_agent_directory_replaced_by_a_symlink_never_makes_root_chown_through_it(
    fleet: Fleet, victim: str, target: str
) -> None:
    f = fleet
    before = {rel: _stat(f.root / rel) for rel in ROOTS}
    moved = f.as_agent(f"mv ~/{victim} ~/{victim}.real && ln -s {target} ~/{victim}")
    assert moved.returncode == 0, moved.stderr
    try:
        result = f.play("--tags", "agents")
        # Root's directory keeps its owner and mode, and the apply refuses, naming the link.
        _roots_files_untouched(f, before)
        assert not (f.root / target.lstrip("/") / ".env").exists()
        assert result.returncode != 0, result.stdout[-3000:]
        assert f"/home/atlas/{victim} is a symlink to {target}" in result.stdout
    finally:
        f.as_agent(f"rm ~/{victim} && mv ~/{victim}.real ~/{victim}")


def test_soul_directory_replaced_by_a_symlink_never_gives_the_agent_a_root_directory(fleet: Fleet) -> None:
    """soul -> /usr/local/etc/periodic/daily (run daily as root): nothing is cloned or chowned there."""
    f = fleet
    daily = f.root / "usr/local/etc/periodic/daily"
    before = {rel: _stat(f.root / rel) for rel in (*ROOTS, "usr/local/etc/periodic/daily")}
    moved = f.as_agent("mv ~/clawdie/soul ~/clawdie/soul.real && ln -s /usr/local/etc/periodic/daily ~/clawdie/soul")
    assert moved.returncode == 0, moved.stderr
    try:
        f.play("--tags", "soul")  # git, as atlas, cannot write there: the task fails or finds nothing
        _roots_files_untouched(f, before)
        assert list(daily.iterdir()) == []
    finally:
        f.as_agent("rm ~/clawdie/soul && mv ~/clawdie/soul.real ~/clawdie/soul")


def test_wrapper_path_symlinked_to_master_passwd_is_never_shown_by_plan_or_check_diff(fleet: Fleet) -> None:
    """`ln -s /etc/master.passwd ~/clawdie/run-atlas.sh` (and .env): not read, not shown.

    The wrapper is root's now (/usr/local/libexec/warden); a host applied before that still
    lists ~/clawdie/run-atlas.sh in its record, so the record is made to say so here.
    """
    f = fleet
    record = f.root / "var/db/warden/manifest.json"
    saved = record.read_text()
    data = json.loads(saved)
    data["files"].append(
        {
            "agent": "atlas",
            "group": "atlas",
            "mode": "0755",
            "owner": "atlas",
            "path": "/home/atlas/clawdie/run-atlas.sh",
            "purpose": "daemon(8) child (as applied before the wrapper moved)",
            "secret": False,
        }
    )
    record.write_text(json.dumps(data))
    linked = f.as_agent(
        "ln -sf /etc/master.passwd ~/clawdie/run-atlas.sh && mv ~/clawdie/.env ~/env.real"
        " && ln -s /etc/master.passwd ~/clawdie/.env"
    )
    assert linked.returncode == 0, linked.stderr
    try:
        dry = f.play("--check", "--diff", "--tags", "agents")
        assert dry.returncode == 0, dry.stdout[-3000:]
        assert MARKER not in dry.stdout + dry.stderr
        plan = f.plan()
        assert plan.returncode == 2, plan.stdout[-3000:] + plan.stderr[-2000:]
        assert MARKER not in plan.stdout + plan.stderr
        assert "removed: /home/atlas/clawdie/run-atlas.sh" in plan.stdout
        assert plan.stdout.count("(a symlink below the agent's home: not followed)") == 2
        # The apply removes and replaces the links as atlas: master.passwd stays root's, unread.
        before = _stat(f.root / "etc/master.passwd")
        applied = f.play("--tags", "agents")
        assert applied.returncode == 0, applied.stdout[-3000:]
        assert MARKER not in applied.stdout
        assert _stat(f.root / "etc/master.passwd") == before
        assert MARKER in (f.root / "etc/master.passwd").read_text()
        env = f.root / "home/atlas/clawdie/.env"
        assert not env.is_symlink() and _stat(env) == (f.uid(), f.uid(), 0o600)
        assert not (f.root / "home/atlas/clawdie/run-atlas.sh").exists()
    finally:
        f.as_agent(
            "rm -f ~/clawdie/run-atlas.sh; if [ -L ~/clawdie/.env ]; then rm ~/clawdie/.env;"
            " mv ~/env.real ~/clawdie/.env; fi; rm -f ~/env.real"
        )
        record.write_text(saved)  # what this build's apply records


def test_log_symlinked_to_root_authorized_keys_gets_no_agent_output(fleet: Fleet) -> None:
    """The rc.d script's start, run for real: prestart (install), then daemon -o -u."""
    f = fleet
    planted = f.as_agent(
        "mkdir -p ~/clawdie/logs && ln -sf /root/.ssh/authorized_keys ~/clawdie/logs/atlas.log"
        " && printf '#!/bin/sh\\necho agent-output uid=$(id -u)\\nid -u > probe-ran\\n' > ~/clawdie/agent-probe"
        " && chmod 0755 ~/clawdie/agent-probe"
    )
    assert planted.returncode == 0, planted.stderr
    log = f.root / "var/log/warden/atlas/atlas.log"
    ran = f.root / "home/atlas/clawdie/probe-ran"
    ran.unlink(missing_ok=True)
    try:
        code, output = f.as_root("/bin/sh", "/usr/local/etc/rc.d/atlas", "onestart")
        assert code == 0, output
        deadline = time.monotonic() + 20
        while not ran.exists():
            assert time.monotonic() < deadline, f"the agent did not run; start said: {output}"
            time.sleep(0.2)
        assert ran.read_text().strip() == str(f.uid())  # the wrapper and the agent ran as atlas
        keys = f.root / "root/.ssh/authorized_keys"
        deadline = time.monotonic() + 10  # until the supervisor has copied the output somewhere
        while not ((log.exists() and "agent-output" in log.read_text()) or keys.read_text() != KEYS):
            assert time.monotonic() < deadline, "the agent's output reached neither the log nor a planted target"
            time.sleep(0.2)
    finally:
        f.as_root("/bin/sh", "/usr/local/etc/rc.d/atlas", "onestop")
    assert (f.root / "root/.ssh/authorized_keys").read_text() == KEYS
    # Nor can the agent plant a link where the log is now: /var/log/warden/atlas is root's.
    assert f.as_agent("ln -sf /root/.ssh/authorized_keys /var/log/warden/atlas/atlas.log").returncode != 0
    assert f.as_agent("rm -f /var/log/warden/atlas/atlas.log").returncode != 0
    assert f"agent-output uid={f.uid()}" in log.read_text()  # the wrapper ran as atlas
    assert _stat(log)[:2] == (0, f.uid()) and _stat(log.parent) == (0, f.uid(), 0o750)
    assert _stat(f.root / "usr/local/libexec/warden/run-atlas.sh") == (0, 0, 0o755)


def test_soul_git_hooks_and_fsmonitor_run_as_the_agent_never_as_root(fleet: Fleet) -> None:
    f = fleet
    hooked = f.as_agent(
        "cd ~/clawdie/soul && printf '#!/bin/sh\\nid -u >> /tmp/warden-hook-uids\\n' > .git/hooks/post-checkout"
        " && chmod 0755 .git/hooks/post-checkout"
        " && printf '#!/bin/sh\\nid -u >> /tmp/warden-hook-uids\\nexit 1\\n' > ~/fsmonitor"
        " && chmod 0755 ~/fsmonitor && git config core.fsmonitor ~/fsmonitor"
    )
    assert hooked.returncode == 0, hooked.stderr
    env = f.registry.agents / "atlas/.env"
    text = env.read_text()
    uids = f.root / "tmp/warden-hook-uids"
    try:
        env.write_text(text.replace(f.commits[0], f.commits[1]))  # move HEAD: fetch and checkout run
        result = f.play("--tags", "soul")
        assert result.returncode == 0, result.stdout[-3000:]
        # the checkout moved (to the snapshot of the new commit that the bundle ships)
        assert (f.root / "home/atlas/clawdie/soul/SOUL.md").read_text() == "# Atlas, revised\n"
        ran = uids.read_text().split() if uids.exists() else []
        assert ran and set(ran) == {str(f.uid())}, ran  # the agent's code ran, as the agent only
        assert recap(f.play("--tags", "soul"))["changed"] == 0
    finally:
        env.write_text(text)
        uids.unlink(missing_ok=True)
        f.as_agent(
            "cd ~/clawdie/soul && rm -f .git/hooks/post-checkout ~/fsmonitor && git config --unset core.fsmonitor"
        )
