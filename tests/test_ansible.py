"""`ansible-playbook site.yml` against the SSH test host: converge, idempotence, check/diff,
removal, PF confirm-or-rollback, tags and one-agent runs — real Ansible over real SSH."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provision.rcconf import read_vars
from tests.hostkit.testhost import TestHost

from .conftest import COLLECTION, REPO, Registry

pytestmark = pytest.mark.e2e


def setup(reg: Registry, host: TestHost, names: tuple[str, ...] = ("atlas", "iris"), jails: str | None = None) -> None:
    """An inventory for HOST and agents NAMES; JAILS (e.g. "cms") trims each agent's jails
    where a test is not about them: every new jail costs five commands on the host."""
    inventory = {"warden_hosts": {"hosts": {"fbsd1": {"warden_ext_if": "vtnet0", **host.ansible_vars()}}}}
    reg.inventory.write_text(yaml.safe_dump(inventory))
    for i, name in enumerate(names, start=1):
        add(reg, name, i, jails)


def add(reg: Registry, name: str, i: int, jails: str | None = None) -> None:
    reg.write_env(
        name,
        f"AGENT_NAME={name}\nAGENT_SUBNET_BASE=10.0.{i}\nCONTROLPLANE_API_PORT={3099 + i}\n"
        f"API_TOKEN=tok-SECRET-{name}-0123456789\n" + (f"WARDEN_JAILS='{jails}'\n" if jails else ""),
    )


def playbook(reg: Registry, *args: str) -> subprocess.CompletedProcess[str]:
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        **reg.env(),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        [
            shutil.which("ansible-playbook", path=env["PATH"]) or "ansible-playbook",
            "-i",
            str(reg.inventory),
            "site.yml",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def recap(result: subprocess.CompletedProcess[str], host: str = "fbsd1") -> dict[str, int]:
    m = re.search(rf"^{host}\s+:\s+(.*)$", result.stdout, re.M)
    assert m, result.stdout[-3000:] + result.stderr[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for rel in ("etc", "usr/local", "home", "var/db/warden"):
        base = root / rel
        for p in sorted(base.rglob("*")) if base.exists() else []:
            if p.is_file() and "warden-doubles" not in str(p):
                h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def mutating(calls: list[dict[str, object]]) -> list[tuple[object, tuple[str, ...]]]:
    """Calls that change state: anything but the read-only probes (facts and doctor)."""
    out: list[tuple[object, tuple[str, ...]]] = []
    for c in calls:
        cmd, argv = c["cmd"], tuple(str(a) for a in c["argv"])  # type: ignore[attr-defined]
        read_only = (
            cmd in ("freebsd-version", "kldstat", "jls", "nc", "ps")
            or (cmd == "ifconfig" and (len(argv) <= 1 or argv[1:] == ("addr",)))
            or (cmd == "arp" and argv[:1] == ("-an",))
            or (cmd in ("sysctl", "sysrc") and "-n" in argv)
            or (cmd == "pfctl" and ("-n" in argv or "-s" in argv))
            or (cmd == "vm" and argv in (("list",), ("switch", "list")))
            or (cmd == "rctl" and argv == ())
            or (cmd == "chroot" and argv[:1] == ("-u",) and argv[6:8] == ("/", "/bin/sh"))  # the read as the agent
            or (cmd == "pkg" and argv[:1] in (("query",), ("info",)))
            or argv[-1:] == ("status",)
        )
        if not read_only:
            out.append((cmd, argv))
    return out


def test_converge_then_idempotent_then_check_diff_changes_nothing(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost)
    (testhost.root / "etc/pf.conf").chmod(0o640)  # the operator's choice: we edit lines, not modes
    first = playbook(registry)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert recap(first)["changed"] > 0
    root = testhost.root

    # files, modes, owners
    rc_d = root / "usr/local/etc/rc.d/atlas"
    assert rc_d.read_bytes() == (registry.build / "fbsd1/usr/local/etc/rc.d/atlas").read_bytes()
    assert rc_d.stat().st_mode & 0o777 == 0o755
    env = root / "home/atlas/clawdie/.env"
    import pwd

    atlas_uid = int((root / "etc/passwd").read_text().split("\natlas:")[1].split(":")[1])
    assert env.stat().st_mode & 0o777 == 0o600 and env.stat().st_uid == atlas_uid
    assert (root / "home/atlas/clawdie").stat().st_uid == atlas_uid
    assert pwd  # (the host's own passwd database is not the test host's)
    values = read_vars((root / "etc/rc.conf").read_text())
    assert values["hostname"] == "testhost.home.arpa"  # the operator's line kept
    assert values["cloned_interfaces"] == "bridge0" and values["ifconfig_bridge0_name"] == "warden0"
    assert (
        values["ifconfig_warden0"] == "inet 10.0.1.1/24 up" and values["ifconfig_warden0_alias0"] == "inet 10.0.2.1/24"
    )
    assert values["atlas_enable"] == values["iris_enable"] == "YES"
    assert 'load anchor "warden" from "/etc/pf.warden.conf"' in (root / "etc/pf.conf").read_text()
    assert (root / "etc/pf.conf").stat().st_mode & 0o777 == 0o640
    assert "tok-SECRET" not in first.stdout + first.stderr

    # the logged command sequence
    calls = [(c["cmd"], c["argv"]) for c in testhost.calls()]
    check = calls.index(("pfctl", ["-n", "-f", "/etc/pf.conf"]))
    first_load = next(i for i, c in enumerate(calls) if c[0] == "service" and c[1][:1] == ["pf"])
    assert check < first_load
    creates = [c[1] for c in calls if c[0] == "bastille" and c[1][0] == "create"]
    ns = ["-n", "9.9.9.9,149.112.112.112"]  # warden_jail_nameservers' default
    cms = ["create", "-B", "-M", "-g", "10.0.1.1", *ns, "atlascms", "14.3-RELEASE", "10.0.1.3/24", "warden0"]
    assert cms in creates
    assert [
        *("create", "-B", "-T", "-M", "-g", "10.0.2.1", *ns),
        *("irisdb", "14.3-RELEASE", "10.0.2.5/24", "warden0"),
    ] in creates
    assert calls.index(("ifconfig", ["bridge", "create", "name", "warden0"])) < calls.index(("bastille", creates[0]))
    mac = next(
        j["mac"]
        for j in json.loads((registry.build / "fbsd1/.warden/manifest.json").read_text())["jails"]
        if j["name"] == "atlascms"
    )
    assert f'ifconfig e0b_atlascms ether {mac}";' in (root / "usr/local/bastille/jails/atlascms/jail.conf").read_text()
    state = testhost.state()
    assert state["interfaces"]["warden0"]["inet"] == ["10.0.1.1/24", "10.0.2.1/24"]
    assert state["services"]["atlas"]["running"] and state["pf"]["enabled"]
    # layer 2 (docs/isolation.md): the jail's address pinned at boot (rc.d/static_arp) and now
    # (arp -S), its MAC static on its epair now and at every start (exec.prestart)
    assert "warden_atlascms" in values["static_arp_pairs"].split()
    assert values["static_arp_warden_atlascms"] == f"10.0.1.3 {mac}"
    assert state["arp"]["10.0.1.3"] == {"mac": mac, "iface": "warden0", "permanent": True}
    assert state["interfaces"]["warden0"]["fdb"][mac] == {"member": "e0a_atlascms", "static": True}
    conf = (root / "usr/local/bastille/jails/atlascms/jail.conf").read_text()
    assert f'exec.prestart += "ifconfig warden0 static e0a_atlascms {mac}";' in conf
    assert conf.index("addm e0a_atlascms") < conf.index("static e0a_atlascms")
    # the bridge's own MAC is pinned, and each jail's own ARP table holds its gateway (that MAC)
    # and its /24's jails as permanent entries: set now (jexec), and at every start (exec.start)
    ether = values["ifconfig_warden0_aliases"].removeprefix("ether ")
    assert state["interfaces"]["warden0"]["ether"] == ether
    spec = next(
        j
        for j in json.loads((registry.build / "fbsd1/.warden/manifest.json").read_text())["jails"]
        if j["name"] == "atlascms"
    )
    assert spec["arp"][0] == f"10.0.1.1 {ether}"
    pinned = {p.split()[0]: {"mac": p.split()[1], "iface": "vnet0", "permanent": True} for p in spec["arp"]}
    assert state["jails"]["atlascms"]["arp"] == pinned
    lines = [f'  exec.start += "/usr/sbin/arp -S {p}";' for p in spec["arp"]]
    assert conf.splitlines()[conf.splitlines().index("  exec.start = '/bin/sh /etc/rc';") + 1 :][: len(lines)] == lines

    # second run, verbose: nothing to do, and -v prints no secret, though the record of the
    # first run now lists every .env (docs/security.md#the-facts-read)
    before = len(testhost.calls())
    second = playbook(registry, "-v")
    assert second.returncode == 0 and recap(second)["changed"] == 0, second.stdout[-3000:]
    assert "tok-SECRET" not in second.stdout + second.stderr
    assert mutating(testhost.calls()[before:]) == []
    # a restart (boot, `bastille restart`) gives the jail a new stack: jail.conf pins it again
    restart = ["chroot", str(root), "/usr/local/bin/bastille", "restart", "atlascms"]
    subprocess.run(restart, check=True, capture_output=True)
    assert testhost.state()["jails"]["atlascms"]["arp"] == pinned

    # a registry change, then --check --diff: shown, not done
    add(registry, "nova", 3)
    digest = tree_digest(root)
    before = len(testhost.calls())
    dry = playbook(registry, "--check", "--diff")
    assert dry.returncode == 0, dry.stdout[-3000:]
    assert tree_digest(root) == digest
    assert mutating(testhost.calls()[before:]) == []
    assert '+ifconfig_warden0_alias1="inet 10.0.3.1/24"' in dry.stdout and '+nova_enable="YES"' in dry.stdout
    # the same rc.conf lines as `invoke plan`
    env_vars = {**os.environ, **registry.env(), "COLUMNS": "200"}
    ssh_config = registry.root / "ssh_config"
    testhost.write_ssh_config(ssh_config, "fbsd1")
    plan = subprocess.run(
        [sys.executable, "-m", "invoke", "plan"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**env_vars, "PROVISION_SSH_CONFIG": str(ssh_config)},
    )
    assert plan.returncode == 2
    rc_plus = [
        ln
        for ln in plan.stdout.split("changed: /etc/rc.conf")[1].splitlines()
        if ln.startswith("+") and "+++" not in ln
    ]
    assert rc_plus and all(ln in dry.stdout for ln in rc_plus)


def test_removing_an_agent_removes_what_the_tool_put_there(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost, names=("atlas", "iris", "nova"), jails="cms")
    iris_env = registry.agents / "iris/.env"
    iris_env.write_text(iris_env.read_text() + "AGENT_MAXPROC=64\n")
    assert playbook(registry).returncode == 0
    assert testhost.state()["rctl"] == ["user:iris:maxproc:deny=64"]  # applied live (docs/freebsd.md#rctl)
    assert testhost.state()["arp"]["10.0.2.3"]["permanent"]  # iriscms pinned (docs/isolation.md)
    assert "user:iris:maxproc:deny=64" in (testhost.root / "etc/rctl.conf").read_text()
    shutil.rmtree(registry.agents / "iris")
    guarded = playbook(registry, "-e", "warden_max_removals=0")  # 1 removal > 0: the guard stops it
    assert guarded.returncode != 0 and "would remove 1 of the 3 agent(s) on fbsd1 (iris)" in guarded.stdout
    assert (testhost.root / "usr/local/etc/rc.d/iris").exists()
    result = playbook(registry)
    assert result.returncode == 0, result.stdout[-4000:]
    root = testhost.root
    assert not (root / "usr/local/etc/rc.d/iris").exists() and not (root / "home/iris/clawdie/.env").exists()
    values = read_vars((root / "etc/rc.conf").read_text())
    assert "iris_enable" not in values
    assert values["ifconfig_warden0_alias0"] == "inet 10.0.3.1/24" and "ifconfig_warden0_alias1" not in values
    assert "10.0.2.0/24" not in (root / "etc/pf.warden.conf").read_text()
    state = testhost.state()
    assert state["interfaces"]["warden0"]["inet"] == ["10.0.1.1/24", "10.0.3.1/24"]
    assert not state["services"]["iris"]["running"]
    assert state["rctl"] == [] and "iris" not in (testhost.root / "etc/rctl.conf").read_text()
    assert state["jails"]["iriscms"]["running"] is False  # stopped, kept
    assert "10.0.2.3" not in state["arp"] and "static_arp_warden_iriscms" not in values  # unpinned
    assert (
        "warden_iriscms" not in values["static_arp_pairs"].split() and "warden_atlascms" in values["static_arp_pairs"]
    )
    assert not any(e["member"] == "e0a_iriscms" for e in state["interfaces"]["warden0"].get("fdb", {}).values())
    shutil.rmtree(registry.agents / "nova")
    assert playbook(registry, "-e", "warden_destroy_jails=true").returncode == 0
    assert "novacms" not in testhost.state()["jails"]
    assert recap(playbook(registry))["changed"] == 0
    # The last agent: a registry that suddenly has none for this host is refused, then allowed.
    shutil.rmtree(registry.agents / "atlas")
    guarded = playbook(registry)
    assert guarded.returncode != 0 and "would remove 1 of the 1 agent(s) on fbsd1 (atlas)" in guarded.stdout
    assert "warden_allow_removal=true" in guarded.stdout and (root / "usr/local/etc/rc.d/atlas").exists()
    assert playbook(registry, "-e", "warden_allow_removal=true").returncode == 0
    assert not (root / "usr/local/etc/rc.d/atlas").exists()


def test_a_pf_load_that_cuts_ssh_is_rolled_back_and_the_play_says_so(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost, names=("atlas",), jails="cms")
    assert playbook(registry).returncode == 0
    add(registry, "iris", 2, jails="cms")
    testhost.cut_ssh_on_next_pf_load()
    result = playbook(registry, "-e", "warden_pf_rollback_seconds=3")
    assert result.returncode != 0
    assert "cut new SSH connections" in result.stdout and "rollback ran and restored" in result.stdout
    calls = [(c["cmd"], c["argv"]) for c in testhost.calls()]
    reload = calls.index(("service", ["pf", "reload"]))
    assert ("pfctl", ["-f", "/etc/pf.conf"]) in calls[reload:]  # the rollback's load after the reload
    assert "10.0.2.0/24" not in testhost.state()["pf"]["anchors"]["warden"]  # the previous anchor is live again
    assert (testhost.root / "var/db/warden/pf-rollback.ran").exists()


def test_the_first_pf_start_is_armed_and_a_cut_rolls_it_back_and_pf_enable_stays_out(
    registry: Registry, testhost: TestHost
) -> None:
    setup(registry, testhost, names=("atlas",), jails="cms")
    assert not testhost.state().get("pf", {}).get("enabled")  # a fresh host: this run enables PF
    testhost.cut_ssh_on_next_pf_load()
    # the rollback fires after the confirmation tried (warden_pf_start_seconds, 3)
    result = playbook(registry, "-e", "warden_pf_rollback_seconds=8")
    assert result.returncode != 0
    assert "cut new SSH connections" in result.stdout and "rollback ran and restored" in result.stdout
    assert "turned PF off" in result.stdout and "/var/db/warden/rejected" in result.stdout
    assert not testhost.state()["pf"]["enabled"]  # the rollback turned PF off again
    assert (testhost.root / "var/db/warden/pf-rollback.ran").exists()
    assert (testhost.root / "var/db/warden/rejected/etc/pf.warden.conf").exists()  # kept for inspection
    # an untested ruleset is never enabled for the next boot
    assert read_vars((testhost.root / "etc/rc.conf").read_text()).get("pf_enable") != "YES"
    assert playbook(registry).returncode == 0  # fixed (no cut): enabled, then written to rc.conf
    assert testhost.state()["pf"]["enabled"]
    assert read_vars((testhost.root / "etc/rc.conf").read_text())["pf_enable"] == "YES"


def test_a_confirmation_after_the_rollback_fired_fails_loudly(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost, names=("atlas",), jails="cms")
    assert playbook(registry).returncode == 0
    add(registry, "iris", 2, jails="cms")
    result = playbook(registry, "-e", "warden_pf_rollback_seconds=0")  # the rollback wins the race
    assert result.returncode != 0, result.stdout[-3000:]
    assert "The confirmation came after warden_pf_rollback_seconds" in result.stdout
    assert "rollback ran and restored" in result.stdout
    assert "previous files came from /var/db/warden/backup" in result.stdout
    assert "10.0.2.0/24" not in testhost.state()["pf"]["anchors"]["warden"]  # the previous anchor is live again


def test_tags_and_one_agent_runs(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost)
    # The operator's own inventory may use `agent` and `destroy_jails`: they must not collide.
    inventory = yaml.safe_load(registry.inventory.read_text())
    inventory["warden_hosts"]["hosts"]["fbsd1"].update({"agent": "atlas", "destroy_jails": True})
    registry.inventory.write_text(yaml.safe_dump(inventory))
    only_pf = playbook(registry, "--tags", "pf")
    assert only_pf.returncode == 0, only_pf.stdout[-3000:]
    assert (testhost.root / "etc/pf.warden.conf").exists()
    # rc.d/pf does nothing on `start` without pf_enable: the role starts it (onestart), checks
    # that it runs, and writes pf_enable only then
    assert testhost.state()["pf"]["enabled"]
    assert read_vars((testhost.root / "etc/rc.conf").read_text())["pf_enable"] == "YES"
    assert not (testhost.root / "usr/local/etc/rc.d/atlas").exists()
    assert not any(c["cmd"] == "bastille" for c in testhost.calls())
    one = playbook(registry, "--tags", "agents", "-e", "warden_agent=atlas")
    assert one.returncode == 0, one.stdout[-3000:]
    assert (testhost.root / "usr/local/etc/rc.d/atlas").exists()
    assert not (testhost.root / "usr/local/etc/rc.d/iris").exists()
    every = playbook(registry, "--tags", "agents")  # the inventory's `agent: atlas` restricts nothing
    assert every.returncode == 0, every.stdout[-3000:]
    assert (testhost.root / "usr/local/etc/rc.d/iris").exists()
    limited = playbook(registry, "--limit", "nosuchhost")
    assert "no hosts matched" in limited.stdout or limited.returncode != 0


SAMPLE_TAGS = [(), ("--tags", "pf"), ("--tags", "jails"), ("--tags", "agents,network")]


@pytest.mark.parametrize("tags", [*SAMPLE_TAGS, ("--skip-tags", "always")])
def test_site_yml_never_targets_the_bundled_sample_host(registry: Registry, tags: tuple[str, ...]) -> None:
    """The bundled inventory's sample host is outside warden_hosts: no play of site.yml has it,
    whatever the tags (even with the always-tagged guards skipped)."""
    registry.inventory.write_text(
        (REPO / "inventory/hosts.yml").read_text().replace("examples/host", str(REPO / "examples/host"))
    )
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nAGENT_HOST=example\n")
    assert "example" in invoke_list(registry)  # provision still reads it (invoke plan --host example)
    result = playbook(registry, "--check", *tags)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "[example]" not in result.stdout and not re.search(r"^example\s+:", result.stdout, re.M)


@pytest.mark.parametrize("tags", SAMPLE_TAGS)
def test_a_sample_host_listed_in_warden_hosts_is_never_applied(registry: Registry, tags: tuple[str, ...]) -> None:
    """A sample host an operator put in warden_hosts (ansible_connection: local would be the
    controller itself) is ended before any task, under any tag."""
    registry.inventory.write_text(
        "warden_hosts:\n  hosts:\n    example:\n      ansible_connection: local\n"
        f"      warden_sample_root: {REPO / 'examples/host'}\n      warden_ext_if: vtnet0\n"
    )
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    result = playbook(registry, "--check", *tags)
    assert result.returncode == 0, result.stdout[-3000:]
    ran = re.findall(r"^(ok|changed|fatal|failed): \[example\]", result.stdout, re.M)
    assert ran == [], result.stdout[-3000:]
    counts = recap(result, "example")
    assert counts["ok"] == counts["changed"] == counts["failed"] == counts["unreachable"] == 0


def invoke_list(reg: Registry) -> str:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "list"],
        cwd=REPO,
        env={**os.environ, **reg.env()},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def test_a_registry_with_errors_stops_before_any_host_is_touched(registry: Registry, testhost: TestHost) -> None:
    setup(registry, testhost)
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nCMS_JAIL_NAME=atlas-cms\n")
    result = playbook(registry)
    assert result.returncode != 0
    assert "CMS_JAIL_NAME=atlascms" in result.stdout
    assert testhost.calls() == [] and testhost.connection_count() == 0


def test_every_playbook_passes_syntax_check_and_ansible_lint_production() -> None:
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    syntax = subprocess.run(
        ["ansible-playbook", "--syntax-check", "site.yml"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert syntax.returncode == 0, syntax.stderr
    lint = subprocess.run(
        ["ansible-lint", "--offline", "--profile", "production", "site.yml", "playbooks", str(COLLECTION)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert lint.returncode == 0, lint.stdout[-4000:] + lint.stderr[-2000:]


def copied(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The souls whose bundle the run copied to the host (items of the soul role's copy task)."""
    m = re.search(r"^TASK \[warden\.provision\.warden_soul : Copy .*?\n(.*?)(?=^TASK \[)", result.stdout, re.M | re.S)
    assert m, result.stdout[-3000:]
    return re.findall(r"^(?:ok|changed): \[fbsd1\] => \(item=(\w+)\)", m.group(1), re.M)


def test_soul_repo_is_cloned_at_the_pinned_commit_updated_and_left_alone(
    registry: Registry, testhost: TestHost, tmp_path: Path
) -> None:
    from provision.soul import init

    setup(registry, testhost, names=("atlas",), jails="cms")
    soul = tmp_path / "soul"
    first = init(soul, "atlas", "Atlas", "en-US", "ops")
    env = registry.agents / "atlas/.env"
    env.write_text(env.read_text() + f"SOUL_REPO={soul}\nSOUL_REF={first}\n")
    result = playbook(registry)
    assert result.returncode == 0, result.stdout[-4000:]
    placed = testhost.root / "home/atlas/clawdie/soul"

    def in_repo(repo: Path, *args: str) -> str:
        return subprocess.run(
            ["git", "-c", "safe.directory=*", "-C", str(repo), *args], capture_output=True, text=True
        ).stdout.strip()

    # The host gets a one-commit snapshot of exactly the checked tree (docs/security.md).
    assert in_repo(placed, "rev-parse", "HEAD^{tree}") == in_repo(soul, "rev-parse", f"{first}^{{tree}}")
    assert in_repo(placed, "rev-list", "--count", "HEAD") == "1"
    atlas_uid = int((testhost.root / "etc/passwd").read_text().split("\natlas:")[1].split(":")[1])
    assert placed.stat().st_uid == atlas_uid and placed.stat().st_mode & 0o007 == 0
    assert copied(result) == ["atlas"]
    (placed / "runtime-note.txt").write_text("written by the harness\n")
    again = playbook(registry)
    assert recap(again)["changed"] == 0
    assert copied(again) == []  # the checkout is at the pin: no bundle is copied
    (soul / "SOUL.md").write_text("# Atlas, revised\n")
    subprocess.run(
        ["git", "-C", str(soul), "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qam", "revise"],
        check=True,
    )
    second = subprocess.run(
        ["git", "-C", str(soul), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    env.write_text(env.read_text().replace(first, second))
    moved = playbook(registry)
    assert moved.returncode == 0
    assert copied(moved) == ["atlas"]
    assert (placed / "SOUL.md").read_text() == "# Atlas, revised\n"
    assert (placed / "runtime-note.txt").read_text() == "written by the harness\n"


def test_a_fresh_host_provisions_in_one_run_and_the_second_changes_nothing(
    registry: Registry, testhost: TestHost
) -> None:
    """FreeBSD as installed: no /etc/pf.conf, an empty package database, a 14.3 kernel,
    local_unbound's resolv.conf (127.0.0.1). One agent with one jail and a memory limit."""
    root = testhost.root
    (root / "etc/pf.conf").unlink()
    (root / "etc/resolv.conf").write_text("nameserver 127.0.0.1\n")
    (root / "var/db/warden-doubles/state.json").write_text(json.dumps({"packages": []}))
    setup(registry, testhost, names=("atlas",), jails="db")
    env = registry.agents / "atlas/.env"
    env.write_text(env.read_text() + "AGENT_MEMORY_LIMIT=4G\n")

    first = playbook(registry)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    state = testhost.state()
    assert {"tmux", "node", "git"} <= set(state["packages"])
    assert state["pf"]["enabled"] and state["services"]["atlas"]["running"]
    db = state["jails"]["atlasdb"]
    assert db["release"] == "14.3-RELEASE" and db["services"]["postgresql"]["running"]
    assert state["rctl"] == ["user:atlas:memoryuse:deny=4294967296"]
    assert read_vars((root / "etc/rc.conf").read_text())["bastille_enable"] == "YES"
    assert (root / "etc/pf.conf").stat().st_mode & 0o777 == 0o600

    before = len(testhost.calls())
    second = playbook(registry)
    assert second.returncode == 0 and recap(second)["changed"] == 0, second.stdout[-3000:]
    assert mutating(testhost.calls()[before:]) == []
