"""remote.py without a network: the read script run by a real /bin/sh, its framing, SSH settings."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provision.manifest import FileEntry, Manifest
from provision.models import Host
from provision.remote import (
    START,
    LiveFiles,
    RemoteError,
    Stat,
    _mode_bits,
    fetch,
    fetch_files,
    has_ssh_settings,
    parse_frames,
    parse_live,
    read_local,
    read_script,
    resolve,
)
from tests.hostkit.testhost import TestHost

SHELLS = [sh for sh in ("/bin/sh", "/bin/dash", "/bin/bash") if Path(sh).exists()]


def run_script(
    paths: list[str], manifest: str = "/nonexistent/manifest.json", shell: str = "/bin/sh", user: str | None = None
) -> LiveFiles:
    """What fetch sends over SSH, run by a local shell: `/bin/sh -s` with the script on stdin."""
    script = read_script(paths, manifest=manifest).encode()
    proc = subprocess.run([shell, "-s"], input=script, capture_output=True, check=True, user=user)
    return parse_live(proc.stdout)


# Names as a file system takes them: anything but "/" and NUL, newlines and the frame
# markers included.
names = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
markers = st.sampled_from([b"E\n", b"WARDEN-FRAMES 1\n", b"F 3 -rw-r--r-- 0 0 1\n", b"M 1\n", b"\n", b""])
bodies = st.lists(st.one_of(st.binary(max_size=40), markers), max_size=4).map(b"".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.dictionaries(names, st.one_of(st.none(), bodies), max_size=5), shell=st.sampled_from(SHELLS))
def test_the_read_script_round_trips_arbitrary_names_and_bytes(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes | None], shell: str
) -> None:
    root = tmp_path_factory.mktemp("t")
    paths = []
    for name, data in files.items():
        p = root / name
        if data is not None:
            p.write_bytes(data)
        paths.append(str(p))
    live = run_script(paths, shell=shell)
    assert live.files == {str(root / n): d for n, d in files.items()}
    assert live.unreadable == {}
    assert set(live.stats) == {str(root / n) for n, d in files.items() if d is not None}


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory other users can enter (pytest's tmp_path lives under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="warden-remote-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_the_script_tells_missing_unreadable_and_not_regular_apart(open_dir: Path) -> None:
    tmp_path = open_dir
    (tmp_path / "secret").write_text("TOKEN=x\n")
    (tmp_path / "secret").chmod(0o600)
    (tmp_path / "dir").mkdir()
    (tmp_path / "target").write_text("via link\n")
    (tmp_path / "link").symlink_to("target")
    paths = [str(tmp_path / n) for n in ("secret", "dir", "link", "nope")]
    live = run_script(paths, user="nobody")  # subprocess as an unprivileged user (tests run as root)
    assert live.unreadable == {paths[0]: "permission denied", paths[1]: "not a regular file"}
    assert live.files == {paths[2]: b"via link\n", paths[3]: None}  # a symlink is followed
    assert live.stats[paths[2]].mode == 0o644  # of the target, not of the link (ls -L)


def test_mode_owner_and_group_come_back_as_numbers(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    os.chown(f, 1234, 4321)
    f.chmod(0o4750)
    assert run_script([str(f)]).stats[str(f)] == Stat(0o4750, 1234, 4321)


def test_the_previous_manifests_files_are_read_in_the_same_round_once(tmp_path: Path) -> None:
    gone, kept = tmp_path / "rc.d/iris", tmp_path / "rc.d/atlas"
    gone.parent.mkdir()
    gone.write_text("iris\n")
    kept.write_text("atlas\n")
    previous = Manifest("fbsd1", "warden0", files=[FileEntry(str(gone), "0755"), FileEntry(str(kept), "0755")])
    manifest = tmp_path / "manifest.json"
    manifest.write_text(previous.to_json())
    script = read_script([str(kept), str(manifest)], manifest=str(manifest))
    out = subprocess.run(["/bin/sh", "-s"], input=script.encode(), capture_output=True, check=True).stdout
    assert out.count(f"K {len(str(kept))}\n{kept}".encode()) == 1  # listed by both, sent once
    live = parse_live(out)
    assert live.files[str(gone)] == b"iris\n" and live.files[str(kept)] == b"atlas\n"
    # and reading a tree directly (the sample host) gives the same answer as the script
    assert read_local(Path("/"), [str(kept), str(manifest)], manifest=str(manifest)) == live


def test_the_script_also_runs_as_sh_c_with_paths_as_arguments(tmp_path: Path) -> None:
    (tmp_path / "a b").write_text("1\n")
    out = subprocess.run(
        ["sh", "-c", read_script(), "sh", str(tmp_path / "a b")], capture_output=True, check=True
    ).stdout
    assert parse_frames(out) == {str(tmp_path / "a b"): b"1\n"}


def test_a_login_shells_chatter_before_the_frames_is_skipped() -> None:
    out = b"Welcome to FreeBSD!\nE\n" + START + b"M 4\n/etcE\n"
    assert parse_frames(out) == {"/etc": None}


LS_A = b"L 34\n-rw-r--r-- 1 0 0 3 Nov 24 05:40 /a\n"  # a batch's listing: /a has 3 bytes


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "no start line"),
        (START + b"F 4 -rw-r--r-- 0 0 9\n/etcabc", "output ended inside /etc"),
        (START + b"F 4 -rw-r--r-- 0 0 2\n/etcabc\nE\n", "changed while it was read"),
        (START + b"K 2\n/a" + LS_A + b"C\nab\nE\n", "changed while it was read"),
        (START + b"K 2\n/aK 2\n/b" + LS_A + b"C\n", "did not list every file"),
        (START + b"K 2\n/a" + LS_A.replace(b"/a", b"/x") + b"C\n", "unexpected ls line"),
        (START + b"K 2\n/aE\n", "listed but not sent"),
        (START + b"M 4\n/etc", "ended before the end marker"),
        (START + b"X 1\n/\nE\n", "bad frame header"),
        (START + b"M 40\n/etc\nE\n", "ended inside a path"),
    ],
)
def test_malformed_output_is_refused_not_guessed(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_live(data)


def test_parse_frames_refuses_an_unreadable_file() -> None:
    with pytest.raises(ValueError, match=r"/etc/pf\.conf: permission denied"):
        parse_frames(START + b"U 12\n/etc/pf.confE\n")


@pytest.mark.parametrize(
    "text, mode",
    [
        ("-rw-r--r--", 0o644),
        ("-rw-------+", 0o600),
        ("-rwsr-x---", 0o4750),
        ("-rwSr-----", 0o4640),
        ("-rwxr-s--x", 0o2751),
        ("-rwxrwxrwt", 0o1777),
        ("-rw-r--r-T.", 0o1644),
    ],
)
def test_ls_mode_strings_become_permission_bits(text: str, mode: int) -> None:
    assert _mode_bits(text) == mode


# -- where to connect --------------------------------------------------------------------


def host(name: str = "fbsd1", **ansible: object) -> Host:
    return Host(name=name, ansible_vars=ansible)


@pytest.fixture
def ssh_config(tmp_path: Path) -> Path:
    path = tmp_path / "config"
    path.write_text(
        "Host fbsd1\n  HostName 192.0.2.10\n  Port 2222\n  User admin\n  IdentityFile ~/.ssh/fbsd1\n"
        "  UserKnownHostsFile /tmp/kh1 /tmp/kh2\n  IdentitiesOnly yes\n"
        "Host atlasvm\n  HostName 10.255.0.10\n  ProxyJump root@fbsd1:22\n"
        "Host *.example.org\n  User ops\n"
        "Host *\n  ConnectTimeout 7\n"
    )
    return path


def test_ssh_config_supplies_hostname_port_user_keys_and_known_hosts(ssh_config: Path) -> None:
    t = resolve(host(), ssh_config)
    assert (t.hostname, t.port, t.user) == ("192.0.2.10", 2222, "admin")
    assert t.key_files == (os.path.expanduser("~/.ssh/fbsd1"),)
    assert t.known_hosts[:2] == ("/tmp/kh1", "/tmp/kh2") and "/etc/ssh/ssh_known_hosts" in t.known_hosts
    assert t.identities_only and t.timeout == 7


def test_inventory_variables_win_over_ssh_config_as_in_ansible(ssh_config: Path) -> None:
    t = resolve(host(ansible_port=22, ansible_user="root", ansible_ssh_private_key_file="/k"), ssh_config)
    assert (t.hostname, t.port, t.user) == ("192.0.2.10", 22, "root")
    assert t.key_files[0] == "/k"


def test_ssh_config_is_matched_against_ansible_host_like_ssh_does(ssh_config: Path) -> None:
    t = resolve(host("web", ansible_host="www.example.org"), ssh_config)
    assert (t.hostname, t.user, t.port) == ("www.example.org", "ops", 22)


def test_ansible_ssh_args_options_are_honoured(ssh_config: Path, tmp_path: Path) -> None:
    args = f"-o UserKnownHostsFile={tmp_path}/kh -o StrictHostKeyChecking=yes -J jump@bastion:2200 -i /id"
    t = resolve(host(ansible_ssh_common_args=args), ssh_config)
    assert t.known_hosts[0] == f"{tmp_path}/kh" and t.proxy_jump == "jump@bastion:2200"
    assert "/id" in t.key_files


def test_a_guests_proxyjump_comes_from_ssh_config(ssh_config: Path) -> None:
    t = resolve(Host(name="atlasvm"), ssh_config)
    assert (t.hostname, t.proxy_jump) == ("10.255.0.10", "root@fbsd1:22")


def test_become_runs_the_read_under_sudo_or_doas_and_refuses_su(ssh_config: Path) -> None:
    assert resolve(host(ansible_become=True), ssh_config).become == ("sudo", "-n", "-u", "root")
    doas = resolve(host(ansible_become="yes", ansible_become_method="doas"), ssh_config)
    assert doas.become == ("doas", "-n", "-u", "root")
    assert resolve(host(ansible_become=True, ansible_user="root"), ssh_config).become == ()
    with pytest.raises(RemoteError, match=r"^fbsd1: ansible_become_method su"):
        resolve(host(ansible_become=True, ansible_become_method="su"), ssh_config)


def test_only_named_hosts_count_as_having_ssh_settings(ssh_config: Path) -> None:
    assert has_ssh_settings("atlasvm", ssh_config) and has_ssh_settings("x.example.org", ssh_config)
    assert not has_ssh_settings("novavm", ssh_config)  # `Host *` alone does not count


def test_a_sample_root_host_is_read_from_disk_without_ssh(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/rc.conf").write_text('sshd_enable="YES"\n')
    sample = Host(name="example", sample_root=str(tmp_path), ansible_vars={"ansible_connection": "local"})
    assert fetch_files(sample, ["/etc/rc.conf", "/etc/pf.conf"]) == {
        "/etc/rc.conf": b'sshd_enable="YES"\n',
        "/etc/pf.conf": None,
    }
    (tmp_path / "etc/pf.conf").mkdir()
    with pytest.raises(RemoteError, match=r"^example: cannot read /etc/pf.conf as this user: not a regular file"):
        fetch(sample, ["/etc/pf.conf"])


def test_importing_the_plan_does_not_import_paramiko() -> None:
    modules = "provision.cli, provision.plan, provision.remote, provision.diffview"
    code = f"import sys, {modules}; print('paramiko' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_many_files_are_read_in_batches_of_a_few_processes(tmp_path: Path) -> None:
    paths = []
    for i in range(1234):
        (tmp_path / f"f{i}").write_text(f"{i}\n")
        paths.append(str(tmp_path / f"f{i}"))
    script = read_script(paths)
    assert script.count('batch "$@"') == 4  # 3 batches of at most 500, then the previous manifest's
    live = run_script(paths)
    assert [live.files[p] for p in paths] == [f"{i}\n".encode() for i in range(1234)]


@pytest.mark.parametrize("indent", [None, 2, "to_json"])
def test_the_previous_manifests_paths_are_found_in_any_json_layout(tmp_path: Path, indent: int | str | None) -> None:
    files = [FileEntry(str(tmp_path / n), "0644", purpose='has "quotes", {braces}') for n in ("a", "b c", "d")]
    for entry in files:
        Path(entry.path).write_text(entry.path)
    previous = Manifest("fbsd1", "warden0", files=files)
    text = previous.to_json() if indent == "to_json" else json.dumps(dataclasses.asdict(previous), indent=indent)
    (tmp_path / "m.json").write_text(text)
    live = run_script([], manifest=str(tmp_path / "m.json"))
    assert live.files == {e.path: e.path.encode() for e in files}


def test_below_an_agents_home_a_symlink_is_reported_never_read(tmp_path: Path) -> None:
    """A link the agent planted at or above a file in its home: `S`, and its target stays unread.

    The script sees TMP/home as /home in a private mount namespace (unshare(1), as root).
    """
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    (home / "atlas/clawdie").mkdir(parents=True)
    elsewhere.mkdir()
    (tmp_path / "master.passwd").write_text("root:SECRET-HASH\n")
    (elsewhere / ".env").write_text("SECRET-ELSEWHERE\n")
    (home / "atlas/clawdie/.env").symlink_to(tmp_path / "master.passwd")
    (home / "atlas/linked").symlink_to(elsewhere)
    (home / "atlas/clawdie/kept").write_text("kept\n")
    paths = ["/home/atlas/clawdie/.env", "/home/atlas/linked/.env", "/home/atlas/clawdie/kept"]
    script = read_script(paths, manifest="/nonexistent/manifest.json")
    out = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            'mount --bind "$1" /home && exec /bin/sh -s',
            "sh",
            str(home),
        ],
        input=script.encode(),
        capture_output=True,
        check=True,
    ).stdout
    assert b"SECRET" not in out
    live = parse_live(out)
    assert live.symlinks == set(paths[:2]) and live.files[paths[0]] is None and live.files[paths[1]] is None
    assert live.files[paths[2]] == b"kept\n"
    local = read_local(tmp_path, paths, manifest="/nonexistent/manifest.json")  # the sample host's reader
    assert local.symlinks == live.symlinks and local.files == live.files


@pytest.mark.e2e
def test_below_an_agents_home_files_are_read_with_the_agents_rights(testhost: TestHost) -> None:
    """A hard link to a root-only file is no symlink: `[ -h ]` cannot see it.

    FreeBSD lets a user hard-link a file it does not own (security.bsd.hardlink_check_uid=0
    by default), and an agent can swap a path after any check. So the read script reads
    every file below an agent's home as the home's owner (chroot(8) -u -g -G), and the
    kernel refuses what the agent could not read itself (docs/security.md).
    """
    root = testhost.root
    subprocess.run(["chroot", str(root), "useradd", "-m", "atlas"], check=True)
    (root / "home/atlas/clawdie").mkdir()
    secret = root / "root/secret.env"
    secret.write_text("AGENT_NAME=leakedrootsecret\n")
    secret.chmod(0o600)
    os.link(secret, root / "home/atlas/clawdie/.env")  # what `ln /root/secret.env ~/clawdie/.env` makes
    (root / "home/atlas/clawdie/notes").write_text("the agent's own\n")
    subprocess.run(
        ["chroot", str(root), "chown", "-h", "atlas:atlas", "/home/atlas/clawdie", "/home/atlas/clawdie/notes"],
        check=True,
    )
    paths = ["/home/atlas/clawdie/.env", "/home/atlas/clawdie/notes", "/etc/hostname"]
    out = subprocess.run(
        ["chroot", str(root), "/bin/sh", "-c", read_script(), "sh", *paths], capture_output=True, check=True
    ).stdout
    assert b"leakedrootsecret" not in out
    live = parse_live(out)
    assert live.agent_files[paths[0]] == "permission denied" and live.files.get(paths[0]) is None
    assert live.files[paths[1]] == b"the agent's own\n"
    assert live.files[paths[2]] is not None  # root's own files are read as before
    uid = (root / "home/atlas").stat().st_uid
    assert any(c["cmd"] == "chroot" and c["argv"][:2] == ["-u", str(uid)] for c in testhost.calls())


def test_the_probe_rides_in_the_same_round_as_one_frame(tmp_path: Path) -> None:
    """provision/probe.py's output comes back whole, its byte length checked, after the files."""
    from provision.probe import parse_probe, probe_script

    (tmp_path / "f").write_text("x\n")
    probe = 'printf "=== interfaces ===\\nvtnet0 w\\303\\244rden0\\n\\n"\n' + probe_script(Manifest("h", "warden0"))
    for dash in (["/bin/sh", "-s"], ["dash", "-s"]):
        out = subprocess.run(
            dash, input=read_script([str(tmp_path / "f")], probe=probe).encode(), capture_output=True, check=True
        ).stdout
        live = parse_live(out)
        assert live.files == {str(tmp_path / "f"): b"x\n"} and live.probe is not None
        assert live.probe.startswith("=== interfaces ===\nvtnet0 w\u00e4rden0\n")
        assert parse_probe(live.probe).complete  # the whole probe, to its last section
    # no probe asked for: no frame
    out = subprocess.run(["/bin/sh", "-s"], input=read_script([]).encode(), capture_output=True, check=True).stdout
    assert parse_live(out).probe is None
    with pytest.raises(ValueError):
        parse_live(START + b"P 9\nshort\nE\n")
