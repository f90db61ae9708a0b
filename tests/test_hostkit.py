"""The SSH test host and its FreeBSD doubles, exercised over real SSH as the tools use them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from tests.hostkit.testhost import TestHost

pytestmark = pytest.mark.e2e


def connect(host: TestHost) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(host.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        "127.0.0.1",
        port=host.port,
        username="root",
        key_filename=str(host.client_key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


def run(client: paramiko.SSHClient, command: str) -> tuple[int, str, str]:
    _, out, err = client.exec_command(command)
    status = out.channel.recv_exit_status()
    return status, out.read().decode(), err.read().decode()


def test_ssh_reaches_the_chroot_with_python_and_the_doubles(testhost: TestHost) -> None:
    client = connect(testhost)
    try:
        assert run(client, "python3 -c 'print(1)'")[1] == "1\n"
        assert run(client, "freebsd-version")[1].strip().endswith("-RELEASE")
        assert run(client, "cat /etc/rc.conf")[1].startswith('hostname="testhost')
    finally:
        client.close()
    assert testhost.connection_count() == 1
    assert testhost.calls()[0]["cmd"] == "freebsd-version"


def test_a_wrong_host_key_is_refused(testhost: TestHost, tmp_path: Path) -> None:
    other = tmp_path / "known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    other.write_text(f"[127.0.0.1]:{testhost.port} " + (tmp_path / "k.pub").read_text())
    client = paramiko.SSHClient()
    client.load_host_keys(str(other))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadHostKeyException):
        client.connect(
            "127.0.0.1",
            port=testhost.port,
            username="root",
            key_filename=str(testhost.client_key),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )


def test_sysrc_replaces_the_last_assignment_and_appends_idempotently(testhost: TestHost) -> None:
    (testhost.root / "etc/rc.conf").write_text('a="1"\ncloned_interfaces="lo1"\na="2"\n')
    client = connect(testhost)
    try:
        assert run(client, "sysrc a=3")[1] == "a: 2 -> 3\n"
        run(client, "sysrc cloned_interfaces+=bridge0")
        run(client, "sysrc cloned_interfaces+=bridge0")
        assert run(client, "sysrc -n cloned_interfaces")[1] == "lo1 bridge0\n"
        assert run(client, "sysrc -c a=3")[0] == 0 and run(client, "sysrc -c a=4")[0] == 1
        assert run(client, "sysrc nope")[0] == 1
    finally:
        client.close()
    assert (testhost.root / "etc/rc.conf").read_text() == 'a="1"\ncloned_interfaces="lo1 bridge0"\na="3"\n'


def test_pfctl_checks_section_order_across_includes_and_anchor_files(testhost: TestHost) -> None:
    (testhost.root / "etc/extra.conf").write_text("nat on em0 from any to any -> (em0)\n")
    (testhost.root / "etc/bad.conf").write_text('pass out all\ninclude "/etc/extra.conf"\n')
    (testhost.root / "etc/anchor.conf").write_text("nat on $ext_if from any to any -> ($ext_if)\n")
    (testhost.root / "etc/main.conf").write_text('ext_if = "em0"\nload anchor "w" from "/etc/anchor.conf"\n')
    client = connect(testhost)
    try:
        status, _, err = run(client, "pfctl -nf /etc/bad.conf")
        assert status == 1 and "Rules must be in order: options, ethernet, normalization" in err
        status, _, err = run(client, "pfctl -nf /etc/main.conf")
        assert status == 1 and "macro 'ext_if' not defined" in err  # anchor files do not see main macros
    finally:
        client.close()


def test_ifconfig_creates_and_renames_a_bridge_and_adds_aliases(testhost: TestHost) -> None:
    client = connect(testhost)
    try:
        assert run(client, "ifconfig bridge create")[1] == "bridge0\n"
        assert run(client, "ifconfig bridge0 name warden0")[1] == "warden0\n"
        run(client, "ifconfig warden0 inet 10.0.1.1/24 alias")
        assert "inet 10.0.1.1 netmask 0xffffff00" in run(client, "ifconfig warden0")[1]
        assert run(client, "ifconfig -g bridge")[1] == "warden0\n"
        assert run(client, "ifconfig warden0 name averyveryverylongname")[0] == 1
    finally:
        client.close()


def test_service_status_exit_codes_and_enable_check(testhost: TestHost) -> None:
    script = testhost.root / "usr/local/etc/rc.d/atlas"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    client = connect(testhost)
    try:
        assert run(client, "service atlas status")[0] == 1
        assert run(client, "service atlas start")[0] == 1  # not enabled
        assert run(client, "service atlas enable")[0] == 0
        assert run(client, "service atlas start")[0] == 0
        status, out, _ = run(client, "service atlas status")
        assert status == 0 and out.startswith("atlas is running as pid ")
        assert "already running" in run(client, "service atlas start")[2]
    finally:
        client.close()


def test_bastille_refuses_hyphenated_vnet_names_and_needs_a_bridge(testhost: TestHost) -> None:
    client = connect(testhost)
    try:
        status, _, err = run(client, "bastille create -B atlas-cms 15.0-RELEASE 10.0.1.3/24 warden0")
        assert status == 1 and "VNET jail names may not contain" in err
        assert "not a bridge" in run(client, "bastille create -B atlascms 15.0-RELEASE 10.0.1.3/24 warden0")[2]
        run(client, "ifconfig bridge create name warden0")
        assert run(client, "bastille create -B -M -g 10.0.1.1 atlascms 15.0-RELEASE 10.0.1.3/24 warden0")[0] == 0
        assert run(client, "bastille list")[1] == "atlascms\n"
    finally:
        client.close()
    conf = (testhost.root / "usr/local/bastille/jails/atlascms/jail.conf").read_text()
    assert "vnet.interface = e0b_atlascms;" in conf and "ifconfig warden0 addm e0a_atlascms" in conf
    assert (
        'defaultrouter="10.0.1.1"' in (testhost.root / "usr/local/bastille/jails/atlascms/root/etc/rc.conf").read_text()
    )


def test_a_ruleset_that_blocks_ssh_refuses_new_connections_but_keeps_open_ones(testhost: TestHost) -> None:
    (testhost.root / "etc/lockout.conf").write_text("block in all\npass out all keep state\n")
    (testhost.root / "etc/good.conf").write_text("block in all\npass in proto tcp to port ssh keep state\n")
    first = connect(testhost)
    try:
        assert run(first, "pfctl -f /etc/lockout.conf")[0] == 0
        with pytest.raises((paramiko.AuthenticationException, paramiko.SSHException)):
            connect(testhost)
        assert run(first, "pfctl -f /etc/good.conf")[0] == 0  # the open session still works
    finally:
        first.close()
    connect(testhost).close()
