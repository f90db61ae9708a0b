"""An operator's own Ansible repository adopts warden-provision (README.md#use-it-from-your-own-ansible-repository):
the wheel and the collection are built from a copy of this repository, installed outside it,
and `ansible-playbook warden.provision.site` runs from an unrelated directory with its own
inventory (hosts in `warden_hosts`, variables in group_vars/) and agents/ against the SSH
test host — it converges, then a second run changes nothing.

Nothing of the clone is on the way: no ANSIBLE_CONFIG, no PROVISION_*, no environment value
naming the clone, the current directory outside it, ANSIBLE_COLLECTIONS_PATH the temporary
install only.  Only the third-party libraries (ansible-core's own dependencies, pydantic,
jinja2 …) are shared with the test virtualenv, through a plain path in a .pth file: a plain
path is not a site directory, so the editable install of `provision` there stays inactive,
and the test checks that `provision` and ansible-core are the ones installed in the
temporary virtualenv.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from tests.hostkit.testhost import TestHost

from .conftest import REPO

pytestmark = pytest.mark.e2e


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{argv}:\n{result.stdout[-4000:]}\n{result.stderr[-3000:]}"
    return result


def copy_of_the_repository(dest: Path) -> Path:
    """What a clone holds: the tracked files and the new ones not ignored (as the work tree is)."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO).stdout
    for name in filter(None, listed.split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
            (dest / name).chmod(src.stat().st_mode & 0o777)
    return dest


def recap(result: subprocess.CompletedProcess[str], host: str) -> dict[str, int]:
    m = re.search(rf"^{host}\s+:\s+(.*)$", result.stdout, re.M)
    assert m, result.stdout[-3000:] + result.stderr[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def test_site_from_an_operators_own_repository_with_the_built_wheel_and_collection(
    tmp_path: Path, testhost: TestHost
) -> None:
    src = copy_of_the_repository(tmp_path / "src")
    dist = tmp_path / "dist"
    python = sys.executable
    run([python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)], tmp_path)
    ansible_galaxy = str(Path(python).with_name("ansible-galaxy"))
    run(
        [
            ansible_galaxy,
            "collection",
            "build",
            "--output-path",
            str(dist),
            "collections/ansible_collections/warden/provision",
        ],
        src,
    )
    (wheel,) = dist.glob("warden_provision-*.whl")
    (collection,) = dist.glob("warden-provision-*.tar.gz")

    # The installs: a virtualenv with the wheel and ansible-core (their console scripts),
    # the collection under collections/.
    venv = tmp_path / "venv"
    run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)  # type: ignore[attr-defined]
    shown = re.search(r"^Version: (\S+)", run([python, "-m", "pip", "show", "ansible-core"], tmp_path).stdout, re.M)
    assert shown
    core = f"ansible-core=={shown.group(1)}"
    run(
        [python, "-m", "pip", "--python", str(venv / "bin/python"), "install", "-q", "--no-deps", str(wheel), core],
        tmp_path,
    )
    purelib = run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path)
    Path(purelib.stdout.strip(), "warden-test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    collections = tmp_path / "collections"
    run([ansible_galaxy, "collection", "install", "-p", str(collections), str(collection)], tmp_path)

    # The operator's repository: its inventory, group_vars and agents.
    project = tmp_path / "ops"
    (project / "inventory/group_vars").mkdir(parents=True)
    (project / "inventory/hosts.yml").write_text(yaml.safe_dump({"warden_hosts": {"hosts": {"fbsd1": None}}}))
    (project / "inventory/group_vars/warden_hosts.yml").write_text(
        yaml.safe_dump({"warden_ext_if": "vtnet0", **testhost.ansible_vars()})
    )
    env_file = project / "agents/atlas/.env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text(
        "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nCONTROLPLANE_API_PORT=3100\n"
        "API_TOKEN=tok-SECRET-atlas-0123456789\nWARDEN_JAILS=cms\n"
    )
    # The operator's own ansible.cfg, as this repository's: pipelining (the test host, like
    # many sshd configurations, allocates no PTY for the non-pipelined module transfer).
    (project / "ansible.cfg").write_text("[ssh_connection]\npipelining = True\n")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / ".ssh/id_ed25519")], tmp_path)

    env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        # only the collections installed above (not the ones a Python package may carry)
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
    }
    assert not any(str(REPO) in value for value in env.values()), env
    assert not str(project.resolve()).startswith(str(REPO.resolve()))
    where = run(
        [
            str(venv / "bin/python"),
            "-c",
            "import ansible, provision; print(provision.__file__); print(ansible.__file__)",
        ],
        project,
        env,
    ).stdout.split()
    assert all(path.startswith(str(venv)) for path in where), where
    listed = run(["ansible-galaxy", "collection", "list", "warden.provision"], project, env).stdout
    assert str(collections) in listed, listed

    # the wheel's `warden`, from the operator's directory: its agents/ and inventory/, the
    # package's templates (render writes build/ here)
    checked = run(["warden", "render"], project, env)
    assert "fbsd1" in checked.stdout + checked.stderr
    assert (project / "build/fbsd1/usr/local/etc/rc.d/atlas").is_file()

    site = ["ansible-playbook", "-i", "inventory/hosts.yml", "warden.provision.site"]
    first = run(site, project, env)
    assert recap(first, "fbsd1")["changed"] > 0
    assert (project / "build/fbsd1/usr/local/etc/rc.d/atlas").is_file()  # build/ is the operator's
    assert (testhost.root / "usr/local/etc/rc.d/atlas").read_bytes() == (
        project / "build/fbsd1/usr/local/etc/rc.d/atlas"
    ).read_bytes()
    second = run(site, project, env)
    assert recap(second, "fbsd1")["changed"] == 0, second.stdout[-4000:]
