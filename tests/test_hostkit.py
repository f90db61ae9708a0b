"""The SSH test host and its FreeBSD doubles, exercised over real SSH as the tools use them."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import paramiko
import pytest

from provision.manifest import Manifest
from provision.probe import parse_probe, probe_script
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


# An rc.d script of the rendered agents' shape (provision/templates/usr/local/etc/rc.d/agent.j2):
# daemon(8) supervising a wrapper, the supervisor's pid in `pidfile`.
AGENT_RC_D = (
    '#!/bin/sh\n. /etc/rc.subr\nname=atlas\nrcvar=atlas_enable\nload_rc_config "$name"\n'
    'pidfile=/var/run/atlas.pid\ncommand="/usr/sbin/daemon"\n'
    "command_args='-r -R 5 -P /var/run/atlas.pid -p /var/run/atlas.child.pid -t atlas -u atlas "
    "/usr/local/libexec/warden/run-atlas.sh'\n"
    'run_rc_command "$1"\n'
)


def install_agent_script(host: TestHost) -> None:
    script = host.root / "usr/local/etc/rc.d/atlas"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(AGENT_RC_D)
    script.chmod(0o755)
    wrapper = host.root / "usr/local/libexec/warden/run-atlas.sh"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text("#!/bin/sh\nexec sleep 86400\n")
    wrapper.chmod(0o755)


def test_service_status_exit_codes_and_enable_check(testhost: TestHost) -> None:
    install_agent_script(testhost)
    client = connect(testhost)
    try:
        assert run(client, "service atlas status")[0] == 1
        # rc.subr run_rc_command: not enabled → the message on stdout, exit 0, nothing started
        status, out, _ = run(client, "service atlas start")
        assert status == 0 and "Cannot 'start' atlas. Set atlas_enable to YES" in out
        assert run(client, "service atlas status")[0] == 1
        assert run(client, "service atlas enable")[0] == 0
        assert run(client, "service atlas start")[0] == 0
        status, out, _ = run(client, "service atlas status")
        assert status == 0 and out.startswith("atlas is running as pid ")
        assert "already running" in run(client, "service atlas start")[2]
    finally:
        client.close()


def _probe_running(client: paramiko.SSHClient) -> list[str]:
    script = probe_script(Manifest(host="fbsd1", bridge="warden0", agents=["atlas"]))
    status, out, err = run(client, f"sh -c {shlex.quote(script)}")
    assert status == 0, err
    probe = parse_probe(out)
    assert probe.complete, out
    return probe.running_services


def test_the_probe_reads_the_pidfile_daemon_writes_and_a_stale_one_as_not_running(testhost: TestHost) -> None:
    """The probe decides "running" as rc.subr's status does (check_pidfile: the pidfile's pid is
    a live daemon(8)), with one ps for every agent: a pidfile left by a killed supervisor is
    stale and reads as stopped, by the probe and by `service status` alike."""
    install_agent_script(testhost)
    var_run = testhost.root / "var/run"  # Debian's tree links /var/run to /run
    link = os.readlink(var_run) if var_run.is_symlink() else ""
    run_dir = (testhost.root / link.lstrip("/") if link.startswith("/") else var_run.parent / link) if link else var_run
    pidfile = run_dir / "atlas.pid"
    client = connect(testhost)
    try:
        assert _probe_running(client) == []  # no pidfile
        assert run(client, "service atlas enable")[0] == 0
        assert run(client, "service atlas start")[0] == 0
        pid = int(pidfile.read_text())  # daemon -P: the supervisor's pid, "%u" and no newline
        assert (run_dir / "atlas.child.pid").read_text() == str(pid + 1)
        status, out, _ = run(client, f"ps -ww -o pid= -o jid= -o command= -p {pid},99999")
        assert status == 0 and out.split()[:3] == [str(pid), "0", "daemon:"]
        assert _probe_running(client) == ["atlas"]

        testhost.kill(pid)  # SIGKILL: the supervisor cannot remove its pidfile
        assert pidfile.read_text() == str(pid)
        assert _probe_running(client) == []
        assert run(client, "service atlas status")[:2] == (1, "atlas is not running.\n")
        assert run(client, f"ps -o pid= -p {pid}")[:2] == (1, "")

        assert run(client, "service atlas start")[0] == 0  # rc.subr starts over a stale pidfile
        assert int(pidfile.read_text()) != pid and _probe_running(client) == ["atlas"]
        assert run(client, "service atlas stop")[0] == 0  # daemon removes its pidfiles on SIGTERM
        assert not pidfile.exists() and _probe_running(client) == []
    finally:
        client.close()


def test_bastille_refuses_hyphenated_vnet_names_and_needs_a_bridge(testhost: TestHost) -> None:
    client = connect(testhost)
    try:
        status, _, err = run(client, "bastille create -B atlas-cms 14.3-RELEASE 10.0.1.3/24 warden0")
        assert status == 1 and "VNET jail names may not contain" in err
        assert "not a bridge" in run(client, "bastille create -B atlascms 14.3-RELEASE 10.0.1.3/24 warden0")[2]
        run(client, "ifconfig bridge create name warden0")
        assert run(client, "bastille create -B -M -g 10.0.1.1 atlascms 14.3-RELEASE 10.0.1.3/24 warden0")[0] == 0
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


def test_service_pf_start_without_pf_enable_does_nothing_and_exits_0(testhost: TestHost) -> None:
    client = connect(testhost)
    try:
        status, out, _ = run(client, "service pf start")
        assert status == 0 and "Set pf_enable to YES" in out  # libexec/rc/rc.d/pf via rc.subr
        assert "Disabled" in run(client, "pfctl -s info")[1]
        run(client, "sysrc pf_enable=YES")
        (testhost.root / "etc/pf.conf").unlink()
        status, _, err = run(client, "service pf start")
        assert status == 1 and "/etc/pf.conf is not readable" in err  # required_files
    finally:
        client.close()


def _jail(client: paramiko.SSHClient, name: str = "atlascms") -> None:
    run(client, "ifconfig bridge create name warden0")
    assert run(client, f"bastille create -B -M -g 10.0.1.1 -n 10.0.1.1 {name} 14.3-RELEASE 10.0.1.3/24 warden0")[0] == 0


def test_bastille_template_evals_each_line_and_service_wants_three_arguments(testhost: TestHost) -> None:
    tdir = testhost.root / "usr/local/bastille/templates/t"
    for name, body in {
        "quoted": "PKG nginx\nSYSRC nginx_enable=YES\nSERVICE 'nginx start'\n",
        "plain": "# a comment\n\nPKG nginx\nSYSRC nginx_enable=YES\nSERVICE nginx start\n",
    }.items():
        (tdir / name).mkdir(parents=True)
        (tdir / name / "Bastillefile").write_text(body)
    client = connect(testhost)
    try:
        _jail(client)
        status, _, err = run(client, "bastille template atlascms t/quoted")
        assert status == 1 and "Failed to execute command: service" in err  # template.sh eval keeps the quotes
        assert "Usage: bastille service" in err  # service.sh: [ $# -ne 3 ]
        assert run(client, "bastille service atlascms 'nginx start'")[0] == 1
        assert run(client, "bastille template atlascms t/plain")[0] == 0
        assert run(client, "bastille template atlascms t/missing")[0] == 1
    finally:
        client.close()
    jail = testhost.state()["jails"]["atlascms"]
    assert jail["packages"] == ["nginx"] and jail["services"]["nginx"]["running"]
    calls = [c["argv"] for c in testhost.calls() if c["cmd"] == "bastille"]
    assert ["service", "atlascms", "nginx", "start"] in calls and ["pkg", "-y", "atlascms", "install", "nginx"] in calls


def test_bastille_pkg_in_a_jail_needs_a_resolver_the_jail_can_reach(testhost: TestHost) -> None:
    (testhost.root / "etc/resolv.conf").write_text("nameserver 127.0.0.1\n")  # local_unbound on the host
    client = connect(testhost)
    try:
        run(client, "ifconfig bridge create name warden0")
        run(client, "bastille create -B atlascms 14.3-RELEASE 10.0.1.3/24 warden0")
        status, _, err = run(client, "bastille pkg -y atlascms install nginx")
        assert status == 1 and "No address record" in err
        run(client, "bastille create -B -n 10.0.1.1 atlasgit 14.3-RELEASE 10.0.1.2/24 warden0")
        assert run(client, "bastille pkg -y atlasgit install git")[0] == 0
        assert run(client, "bastille pkg -y atlasgit install nosuchpackage")[0] == 1
    finally:
        client.close()
    resolv = (testhost.root / "usr/local/bastille/jails/atlasgit/root/etc/resolv.conf").read_text()
    assert resolv == "nameserver 10.0.1.1\n"  # create.sh -n replaces every nameserver line


def test_postgresql_initdb_needs_sysvshm_from_jail_conf_after_a_restart(testhost: TestHost) -> None:
    client = connect(testhost)
    try:
        _jail(client, "atlasdb")
        run(client, "bastille pkg -y atlasdb install postgresql17-server")
        status, _, err = run(client, "bastille cmd atlasdb sh -c 'service postgresql initdb'")
        assert status == 1 and "could not create shared memory segment" in err
        assert run(client, "bastille config atlasdb set sysvshm new")[0] == 0
        assert run(client, "bastille cmd atlasdb service postgresql initdb")[0] == 1  # not restarted yet
        run(client, "bastille restart atlasdb")
        assert run(client, "bastille cmd atlasdb service postgresql initdb")[0] == 0
    finally:
        client.close()
    assert "  sysvshm = new;" in (testhost.root / "usr/local/bastille/jails/atlasdb/jail.conf").read_text()


def test_bastille_destroy_prompts_without_y_and_skips_a_running_jail_without_a(testhost: TestHost) -> None:
    client = connect(testhost)
    try:
        _jail(client)
        status, _, err = run(client, "bastille destroy -f -y atlascms")
        assert status == 0 and "Jail is running." in err and "[-a|--auto]" in err  # error_continue
        status, out, err = run(client, "bastille destroy -a atlascms </dev/null")
        assert status == 1 and "Are you sure" in out and "Invalid input" in err  # read at EOF
        assert "atlascms" in testhost.state()["jails"]
        assert run(client, "bastille destroy -a -y atlascms")[0] == 0
    finally:
        client.close()
    assert "atlascms" not in testhost.state()["jails"]


def test_rctl_lists_raw_integer_amounts_and_a_deny_replaces_its_amount(testhost: TestHost) -> None:
    client = connect(testhost)
    try:
        run(client, "rctl -a user:atlas:memoryuse:deny=4G jail:atlasdb:maxproc:deny=64/jail")
        assert run(client, "rctl")[1] == "user:atlas:memoryuse:deny=4294967296\njail:atlasdb:maxproc:deny=64\n"
        run(client, "rctl -a user:atlas:memoryuse:deny=2g")
        assert run(client, "rctl user:atlas")[1] == "user:atlas:memoryuse:deny=2147483648\n"
        assert run(client, "rctl -h user:atlas")[1] == "user:atlas:memoryuse:deny=2G\n"
        run(client, "rctl -r user:atlas")
        assert run(client, "rctl")[1] == "jail:atlasdb:maxproc:deny=64\n"
    finally:
        client.close()


def test_pkg_and_freebsd_version_answer_as_freebsd_does(testhost: TestHost) -> None:
    client = connect(testhost)
    try:
        assert run(client, "pkg info -e nosuch")[0] == 1
        status, _, err = run(client, "pkg info nosuch")
        assert status == 70 and "No package(s) matching nosuch" in err
        assert run(client, "pkg install -y nosuchpackage")[0] == 1
        assert run(client, "pkg install -y node")[0] == 0 and run(client, "pkg info -e node")[0] == 0
        assert run(client, "freebsd-version -k")[1] == "14.3-RELEASE\n"
        assert run(client, "freebsd-version -ku")[1] == "14.3-RELEASE\n14.3-RELEASE\n"
    finally:
        client.close()


def test_every_rendered_bastillefile_applies_to_a_new_jail_of_its_role(testhost: TestHost, example: Path) -> None:
    """The example fleet's Bastillefiles (db needs SysV IPC first: the play's job, see test_ansible)."""
    import json
    import shutil

    shutil.copytree(
        example / "fbsd1/usr/local/bastille/templates/warden", testhost.root / "usr/local/bastille/templates/warden"
    )
    jails = json.loads((example / "fbsd1/.warden/manifest.json").read_text())["jails"]
    client = connect(testhost)
    try:
        run(client, "ifconfig bridge create name warden0")
        for jail in (j for j in jails if j["role"] != "db"):
            run(client, f"bastille bootstrap {jail['release']}")  # the example fleet pins its release
            assert run(client, "bastille " + " ".join(jail["create_args"]))[0] == 0
            status, out, err = run(client, f"bastille template {jail['name']} {jail['template']}")
            assert status == 0, (jail["name"], out, err)
    finally:
        client.close()
    state = testhost.state()["jails"]
    assert state["atlascms"]["services"]["nginx"]["running"] and state["atlasgit"]["services"]["sshd"]["running"]


def test_pf_start_flushes_states_so_an_open_session_needs_a_rule_without_syn(testhost: TestHost) -> None:
    # rc.d/pf pf_start runs `pfctl -F all`: the open session has no state left, and a
    # stateful pass rule matches only SYNs (flags S/SA, sbin/pfctl/parse.y)
    conf = testhost.root / "etc/pf.conf"
    conf.write_text("block in all\npass in proto tcp to port ssh flags any keep state\npass out all keep state\n")
    first = connect(testhost)
    try:
        assert run(first, "service pf onestart")[0] == 0
        assert run(first, "echo still here")[1] == "still here\n"  # flags any: the session goes on
    finally:
        first.close()
    conf.write_text("block in all\npass in proto tcp to port ssh keep state\npass out all keep state\n")
    second = connect(testhost)
    try:
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            run(second, "service pf onestart")
            run(second, "echo still here")
    finally:
        second.close()
    connect(testhost).close()  # a new connection starts with a SYN: the stateful rule passes it
