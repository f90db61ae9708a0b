"""`invoke plan` against a real sshd on loopback, read with real paramiko."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provision.hostfiles import pf_conf_result, rc_conf_result, rctl_conf_result_for
from provision.manifest import LIVE_MANIFEST_PATH, Manifest
from provision.plan import files_list, mask_secrets
from provision.remote import PREVIOUS_FILES_LIST, parse_frames
from tests.hostkit.testhost import TestHost

from .conftest import REPO, Registry

OPERATOR_RC = 'hostname="fbsd1.home.arpa"\n# my own comment\ncloned_interfaces="lo1"\nsshd_enable="YES"\n'


def setup(reg: Registry, host: TestHost, names: tuple[str, ...] = ("atlas",), extra_hosts: str = "") -> None:
    ssh_config = reg.root / "ssh_config"
    host.write_ssh_config(ssh_config, "fbsd1")
    reg.write_inventory(f"all:\n  hosts:\n    fbsd1:\n      warden_ext_if: vtnet0\n{extra_hosts}")
    for i, name in enumerate(names, start=1):
        reg.write_env(
            name,
            f"AGENT_NAME={name}\nAGENT_SUBNET_BASE=10.0.{i}\nAGENT_HOST=fbsd1\n"
            f"CONTROLPLANE_API_PORT={3099 + i}\nANTHROPIC_API_KEY=sk-ant-SECRET-{name}-0123456789\n",
        )
    (host.root / "etc/rc.conf").write_text(OPERATOR_RC)


def plan(reg: Registry, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **reg.env(), "PROVISION_SSH_CONFIG": str(reg.root / "ssh_config"), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "invoke", "plan", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def apply_like_ansible(reg: Registry, host: TestHost, name: str = "fbsd1") -> None:
    """What an apply leaves on the host: the rendered files, the edited files, the records."""
    rendered = reg.build / name
    manifest = Manifest.load(rendered)
    live_root = host.root
    for entry in manifest.files:
        target = live_root / entry.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(rendered / entry.path.lstrip("/"), target)
    for path, fn in (
        ("etc/rc.conf", lambda t: rc_conf_result(manifest, t)),
        ("etc/pf.conf", lambda t: pf_conf_result(manifest, t)),
        ("etc/rctl.conf", lambda t: rctl_conf_result_for(manifest, t)),
    ):
        f = live_root / path
        new = fn(f.read_text() if f.exists() else "")
        if new:
            f.write_text(new)
    (live_root / LIVE_MANIFEST_PATH.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (live_root / LIVE_MANIFEST_PATH.lstrip("/")).write_text(manifest.to_json())
    (live_root / PREVIOUS_FILES_LIST.lstrip("/")).write_text(files_list(manifest))


pytestmark = pytest.mark.e2e


def test_fresh_host_shows_everything_added_and_exits_2(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost)
    result = plan(registry, "--host", "fbsd1")
    assert result.returncode == 2, result.stderr
    assert "added: /usr/local/etc/rc.d/atlas" in result.stdout
    assert "changed: /etc/rc.conf" in result.stdout and '+atlas_enable="YES"' in result.stdout
    assert '+cloned_interfaces="lo1 bridge0"' in result.stdout and '-cloned_interfaces="lo1"' in result.stdout
    assert '+nat-anchor "warden"' in result.stdout
    assert testhost.connection_count() == 1


def test_provisioned_host_has_no_diff_and_exits_0(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost)
    assert plan(registry).returncode == 2
    apply_like_ansible(registry, testhost)
    result = plan(registry)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no changes" in result.stdout


def test_one_more_agent_shows_exactly_that_agents_lines(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost)
    plan(registry)
    apply_like_ansible(registry, testhost)
    registry.write_env(
        "iris", "AGENT_NAME=iris\nAGENT_SUBNET_BASE=10.0.2\nAGENT_HOST=fbsd1\nCONTROLPLANE_API_PORT=3101\n"
    )
    result = plan(registry)
    assert result.returncode == 2
    changed = [line for line in result.stdout.splitlines() if line.startswith(("added:", "changed:", "removed:"))]
    iris_files = {
        f"added: {p}"
        for p in (
            "/home/iris/clawdie/.env",
            "/home/iris/clawdie/run-iris.sh",
            "/usr/local/etc/rc.d/iris",
            "/usr/local/etc/warden/jails/iriscms.conf",
            "/usr/local/etc/warden/jails/irisdb.conf",
            "/usr/local/etc/warden/jails/irisgit.conf",
            "/usr/local/etc/warden/jails/irisollama.conf",
        )
    }
    assert set(changed) == iris_files | {"changed: /etc/pf.warden.conf", "changed: /etc/rc.conf"}
    plus = [ln for ln in result.stdout.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    rc_lines = [ln for ln in plus if ln.startswith(("+ifconfig_", "+iris_enable", "+atlas_enable"))]
    assert rc_lines == ['+ifconfig_warden0_alias0="inet 10.0.2.1/24"', '+iris_enable="YES"']
    assert "iris" in result.stdout.split("agents added")[-1]


def test_removed_agent_shows_its_files_removed_and_enable_line_dropped(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost, names=("atlas", "iris"))
    plan(registry)
    apply_like_ansible(registry, testhost)
    shutil.rmtree(registry.agents / "iris")
    result = plan(registry)
    assert result.returncode == 2
    assert "removed: /usr/local/etc/rc.d/iris" in result.stdout
    assert '-iris_enable="YES"' in result.stdout and '-ifconfig_warden0_alias0="inet 10.0.2.1/24"' in result.stdout


def test_hand_edited_rc_conf_keeps_the_operators_lines(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost)
    plan(registry)
    apply_like_ansible(registry, testhost)
    rc = testhost.root / "etc/rc.conf"
    rc.write_text(rc.read_text().replace("# my own comment\n", '# my own comment\nntpd_enable="YES"\n'))
    result = plan(registry)
    assert result.returncode == 0, result.stdout  # the operator's new line is theirs: nothing to change
    rc.write_text(rc.read_text().replace('atlas_enable="YES"', 'atlas_enable="NO"'))
    result = plan(registry)
    assert result.returncode == 2
    assert '-atlas_enable="NO"' in result.stdout and '+atlas_enable="YES"' in result.stdout
    assert '-ntpd_enable="YES"' not in result.stdout


def test_secrets_never_appear_in_the_diff(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost)
    result = plan(registry)
    assert "sk-ant-SECRET" not in result.stdout + result.stderr
    assert "ANTHROPIC_API_KEY=********" in result.stdout


def test_a_wrong_host_key_is_refused_with_one_line_naming_the_host(
    registry: Registry, testhost: TestHost, tmp_path: Path
) -> None:
    setup(registry, testhost)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    testhost.known_hosts.write_text(f"[127.0.0.1]:{testhost.port} " + (tmp_path / "k.pub").read_text())
    result = plan(registry)
    assert result.returncode == 1
    assert "fbsd1: the host key of 127.0.0.1" in result.stderr and "refusing" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_host_key_is_refused_not_accepted(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost)
    testhost.known_hosts.write_text("")
    result = plan(registry)
    assert result.returncode == 1 and "not in known_hosts" in result.stderr
    assert testhost.known_hosts.read_text() == ""


def test_an_unreachable_host_is_one_line_and_others_are_still_planned(registry: Registry, testhost: TestHost) -> None:
    dead = "    fbsd9:\n      warden_ext_if: vtnet0\n      ansible_host: 127.0.0.1\n      ansible_port: 1\n"
    setup(registry, testhost, extra_hosts=dead)
    result = plan(registry)
    assert result.returncode == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "fbsd9: cannot connect to 127.0.0.1:1" in errors[0]
    assert "added: /usr/local/etc/rc.d/atlas" in result.stdout  # fbsd1 was planned


def test_unknown_host_option_is_an_error(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost)
    result = plan(registry, "--host", "nosuch")
    assert result.returncode == 1 and "fbsd1" in result.stderr


def test_secret_masking_keeps_key_names_and_non_secret_values() -> None:
    text = "AGENT_NAME=atlas\nexport OPENAI_API_KEY='sk-x'\nDB_PASSWORD=hunter2\nPLAIN=1\n"
    assert mask_secrets(text) == "AGENT_NAME=atlas\nexport OPENAI_API_KEY=********\nDB_PASSWORD=********\nPLAIN=1\n"


@settings(max_examples=300, deadline=None)
@given(
    files=st.lists(
        st.tuples(
            st.from_regex(r"/[a-z]{1,8}(/[a-z .]{1,8}){0,2}", fullmatch=True),
            st.one_of(st.none(), st.binary(max_size=64)),
        ),
        max_size=6,
        unique_by=lambda t: t[0],
    )
)
def test_framing_round_trips_arbitrary_bytes(files: list[tuple[str, bytes | None]]) -> None:
    out = b""
    for path, data in files:
        out += (f"F {len(data)} {path}\n".encode() + data) if data is not None else f"M 0 {path}\n".encode()
    out += b"E 0 end\n"
    assert parse_frames(out) == dict(files)
