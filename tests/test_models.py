"""What the models accept: every key that reaches a rendered file, by full match.

Each reproduction from issue 11 is a named test here; the escaping filters that stand
behind these validators are tested on their own in tests/test_escape.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from provision.checks import run_checks
from provision.envfile import quote
from provision.inventory import load_inventory
from provision.problems import Problem
from provision.registry import load_fleet
from provision.render import render_fleet

from .conftest import COLLECTION, Registry
from .hostile import HOSTILE, run_outputs
from .test_registry import invoke


def check(reg: Registry) -> list[Problem]:
    hosts, host_problems = load_inventory(reg.inventory)
    return [p for p in run_checks(load_fleet(reg.agents, hosts, host_problems)) if p.is_error]


def atlas(reg: Registry, key: str, value: str) -> Path:
    return reg.write_env("atlas", f"AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n{key}={quote(value)}\n")


def refused_once(reg: Registry, key: str) -> Problem:
    problems = check(reg)
    assert len(problems) == 1, problems
    (p,) = problems
    assert p.locations[0].key == key and p.locations[0].line == 3
    assert p.message.startswith(key) and p.fix
    return p


# -- the reproductions of issue 11 ---------------------------------------------------------


def test_assistant_name_with_command_substitution_is_refused_by_add_agent(registry: Registry) -> None:
    canary = registry.root / "pwned"
    for value in (f"Atlas $(touch {canary})", f"Atlas `touch {canary}`", f'Atlas"; touch {canary}; "'):
        result = invoke(registry, "add-agent", "atlas", "--set", f"ASSISTANT_NAME={value}")
        assert result.returncode == 1 and "ASSISTANT_NAME" in result.stderr and "quotes, $" in result.stderr
        assert not (registry.agents / "atlas").exists() and not canary.exists()


def test_assistant_name_with_command_substitution_is_refused_by_check(registry: Registry) -> None:
    atlas(registry, "ASSISTANT_NAME", f"Atlas $(touch {registry.root / 'pwned'})")
    p = refused_once(registry, "ASSISTANT_NAME")
    assert "no quotes, $, backquote, backslash or control characters" in p.message
    assert "ASSISTANT_NAME=" in p.fix


def test_assistant_name_of_200_kb_is_refused(registry: Registry) -> None:
    atlas(registry, "ASSISTANT_NAME", "A" * 200_000)
    assert "at most 64 characters" in refused_once(registry, "ASSISTANT_NAME").message


@pytest.mark.parametrize("name", ["Živa", "Špela Čuk", "Anže (test)", "Nova-2", "日本", "Ñandú!", "Zoë"])
def test_display_names_in_any_script_pass(registry: Registry, name: str) -> None:
    atlas(registry, "ASSISTANT_NAME", name)
    assert check(registry) == []


def test_agent_dir_with_a_trailing_newline_is_refused(registry: Registry) -> None:
    registry.write_env("t1", 'AGENT_NAME=t1\nAGENT_SUBNET_BASE=10.0.1\nAGENT_DIR="/home/t1\n"\n')
    (p,) = check(registry)
    assert p.locations[0].key == "AGENT_DIR" and p.message.startswith("AGENT_DIR must be an absolute path")


def test_git_jail_name_with_a_trailing_newline_is_refused_and_no_file_is_named_after_it(registry: Registry) -> None:
    registry.write_env("t1", 'AGENT_NAME=t1\nAGENT_SUBNET_BASE=10.0.1\nGIT_JAIL_NAME="t1git\n"\n')
    (p,) = check(registry)
    assert p.locations[0].key == "GIT_JAIL_NAME" and "letters and digits" in p.fix
    hosts, _ = load_inventory(registry.inventory)
    render_fleet(load_fleet(registry.agents, hosts), registry.build)  # the refused agent is not rendered
    assert not [f for f in registry.build.rglob("*") if "\n" in f.name]


def test_system_locale_with_a_trailing_newline_is_refused(registry: Registry) -> None:
    atlas(registry, "SYSTEM_LOCALE", "en_US.UTF-8\n")
    refused_once(registry, "SYSTEM_LOCALE")


def test_agent_memory_limit_with_a_trailing_newline_is_refused(registry: Registry) -> None:
    atlas(registry, "AGENT_MEMORY_LIMIT", "4G\n")
    refused_once(registry, "AGENT_MEMORY_LIMIT")


def test_warden_release_with_shell_code_is_refused(registry: Registry) -> None:
    registry.write_inventory(
        "warden_hosts:\n  hosts:\n    fbsd1:\n      warden_ext_if: vtnet0\n"
        "      warden_release: '15.0-RELEASE\"; touch /tmp/x; \"'\n"
    )
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    problems = check(registry)
    release = [p for p in problems if p.rule == "release"]
    assert len(release) == 1 and release[0].locations[0].key == "fbsd1.warden_release"
    assert "15.0-RELEASE" in release[0].fix


@pytest.mark.parametrize("value", ["15.0-RELEASE", "14.3-RELEASE-p2", "15.0-BETA3", "15.0-RC1", "16.0-CURRENT"])
def test_release_names_bastille_bootstraps_pass(registry: Registry, value: str) -> None:
    registry.write_inventory(
        f"warden_hosts:\n  hosts:\n    fbsd1:\n      warden_ext_if: vtnet0\n      warden_release: {value}\n"
    )
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    assert check(registry) == []


# -- every key, every hostile value ----------------------------------------------------------

AGENT_KEYS = (
    "AGENT_NAME",
    "ASSISTANT_NAME",
    "AGENT_HOST",
    "AGENT_SUBNET_BASE",
    "WARDEN_SUBNET",
    "WARDEN_GATEWAY",
    "WARDEN_JAILS",
    "WARDEN_GIT_IP",
    "GIT_JAIL_NAME",
    "CMS_JAIL_NAME",
    "DB_JAIL_NAME",
    "OLLAMA_JAIL_NAME",
    "CONTROLPLANE_API_PORT",
    "AGENT_DIR",
    "AGENT_COMMAND",
    "DISPLAY_LOCALE",
    "SYSTEM_LOCALE",
    "SOUL_REPO",
    "SOUL_REF",
    "AGENT_REQUIRES",
    "AGENT_MEMORY_LIMIT",
    "JAIL_MEMORY_LIMIT",
    "WARDEN_VM_MEMORY",
    "WARDEN_VM_DISK",
)
HOST_VARS = ("warden_ext_if", "warden_bridge", "warden_bridge_clone", "warden_release", "warden_vm_dir")


@pytest.mark.parametrize("key", AGENT_KEYS)
def test_every_agent_key_refuses_hostile_values_or_renders_them_inert(
    registry: Registry, tmp_path: Path, key: str
) -> None:
    canary = tmp_path / "pwned"
    for n, raw in enumerate(HOSTILE):
        value = raw.format(c=canary)
        atlas(registry, key, value)
        problems = check(registry)
        if problems:
            assert any(p.locations[0].key == key for p in problems), (key, value[:40], problems)
            assert all(len(p.message) < 2000 for p in problems)  # the value is not echoed back whole
            continue
        assert key == "AGENT_COMMAND", (key, value[:40])  # the only key that is code by design
        hosts, _ = load_inventory(registry.inventory)
        render_fleet(load_fleet(registry.agents, hosts), registry.build)
        files = [
            ("/" + str(p.relative_to(registry.build / "fbsd1")), p.read_text())
            for p in (registry.build / "fbsd1").rglob("*")
            if p.is_file() and ".warden" not in p.parts
        ]
        work = tmp_path / f"run{n}"
        work.mkdir()
        run_outputs(files, work)
        assert not canary.exists(), (key, value[:40])


@pytest.mark.parametrize("var", HOST_VARS)
def test_every_inventory_value_refuses_hostile_values(registry: Registry, var: str) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    for raw in HOSTILE:
        value = raw.format(c="/tmp/c")
        host = {"warden_ext_if": "vtnet0", var: value}
        registry.write_inventory(yaml.safe_dump({"warden_hosts": {"hosts": {"fbsd1": host}}}))
        problems = check(registry)
        assert any(p.locations[0].key == f"fbsd1.{var}" for p in problems), (var, value[:40], problems)


def test_a_hostile_inventory_host_name_is_refused(registry: Registry) -> None:
    registry.write_inventory('warden_hosts:\n  hosts:\n    "fbsd1\\n touch /tmp/x":\n      warden_ext_if: vtnet0\n')
    problems = check(registry)
    assert [p.rule for p in problems] == ["host-name"] and "rename the host" in problems[0].fix


# -- AGENT_DIR: the agent's own home ----------------------------------------------------------


@pytest.mark.parametrize("value", ["/", "/etc", "/root", "/usr/local/etc/rc.d", "/home/hermes", "/home", "/srv/x"])
def test_agent_dir_outside_the_agents_home_is_refused_with_the_fix(registry: Registry, value: str) -> None:
    atlas(registry, "AGENT_DIR", value)
    registry.write_env("hermes", "AGENT_NAME=hermes\nAGENT_SUBNET_BASE=10.0.2\nCONTROLPLANE_API_PORT=3101\n")
    p = refused_once(registry, "AGENT_DIR")
    assert "outside the home of agent atlas" in p.message
    assert p.fix.startswith("set AGENT_DIR=/home/atlas/clawdie")


@pytest.mark.parametrize("value", ["/home/atlas/../hermes", "/home/atlas/./x", "/home/atlas/a b", "/home/atlas\n"])
def test_agent_dir_with_dot_parts_blanks_or_newlines_is_refused(registry: Registry, value: str) -> None:
    atlas(registry, "AGENT_DIR", value)
    assert "absolute path" in refused_once(registry, "AGENT_DIR").message


@pytest.mark.parametrize("value", ["/home/atlas", "/home/atlas/clawdie/", "/usr/home/atlas/app"])
def test_agent_dir_in_its_own_home_is_rendered_with_the_wrapper_and_env(registry: Registry, value: str) -> None:
    atlas(registry, "AGENT_DIR", value)
    assert check(registry) == []
    hosts, _ = load_inventory(registry.inventory)
    (host,) = render_fleet(load_fleet(registry.agents, hosts), registry.build)
    directory = value.rstrip("/")
    paths = {e.path for e in host.manifest.files if e.agent == "atlas"}
    # The wrapper daemon(8) runs is root's, outside the agent's directory (docs/security.md).
    assert {"/usr/local/libexec/warden/run-atlas.sh", f"{directory}/.env", "/usr/local/etc/rc.d/atlas"} <= paths
    # ... and the agents role installs them: its path filter (Ansible's `match`, re.match)
    # used to drop a wrapper and .env outside /home while still creating the directory.
    role_vars = yaml.safe_load((COLLECTION / "roles/warden_agents/vars/main.yml").read_text())
    pattern = re.search(r"selectattr\('path', 'match', '([^']+)'\)", role_vars["warden_agents_owned"])
    assert pattern is not None
    assert all(re.match(pattern.group(1), path) for path in paths if "/warden/jails/" not in path)


def test_default_jail_names_fit_the_epair_limit_for_every_valid_agent_name(registry: Registry) -> None:
    """e0a_<jail> must fit 15 characters (docs/freebsd.md#interface-name-length): the defaults
    keep every name that already fitted, shorten the rest, and long names sharing a prefix
    do not collide."""
    from provision.models import JAIL_ROLES, default_jail_name

    assert default_jail_name("atlas", "ollama") == "atlasollama"  # as written before: existing jails keep theirs
    assert default_jail_name("hermes", "ollama") == "hermesllm"
    assert default_jail_name("hermes", "llamacpp") == "hermesllm"
    names = ["a", "atlas", "hermes", "abcdefgh", "abcdefghi", "assistant1", "assistant2", "a234567890123456"]
    for name in names:
        for role in JAIL_ROLES:
            jail = default_jail_name(name, role)
            assert len(f"e0a_{jail}") <= 15 and re.fullmatch(r"[a-z][a-z0-9]*", jail), (name, role, jail)
    assert default_jail_name("assistant1", "git") != default_jail_name("assistant2", "git")
    for i, name in enumerate(("assistant1", "assistant2", "hermes"), start=1):
        registry.write_env(name, f"AGENT_NAME={name}\nAGENT_SUBNET_BASE=10.0.{i}\nWARDEN_JAILS='git cms ollama db'\n")
    hosts, _ = load_inventory(registry.inventory)
    problems = run_checks(load_fleet(registry.agents, hosts))
    assert [p for p in problems if p.rule in ("epair-name", "duplicate-jail")] == []
