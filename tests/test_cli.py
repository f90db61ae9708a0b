"""The command line as an operator meets it: inputs, messages, help (issue 15, items 4-9)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from provision.envfile import EnvFile

from .conftest import REPO, TWO_HOSTS, Registry

TASKS = [
    "add-agent",
    "remove-agent",
    "list",
    "check",
    "demo",
    "graph",
    "render",
    "plan",
    "soul-check",
    "soul-pin",
    "soul-init",
    "doctor",
    "status",
]


def invoke(reg: Registry, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        env={**os.environ, **reg.env(), "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def values(reg: Registry, name: str) -> dict[str, str]:
    return EnvFile.load(reg.agents / name / ".env").values()


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error")]


# -- item 4: subnets and owned keys ---------------------------------------------------


@pytest.mark.parametrize(
    ("given", "base"),
    [("192.168.0", "192.168.0"), ("172.16.0", "172.16.0"), ("10.254.0", "10.254.0"), ("192.168.0.0/24", "192.168.0")],
)
def test_add_agent_accepts_the_common_private_24s(registry: Registry, given: str, base: str) -> None:
    result = invoke(registry, "add-agent", "atlas", "--subnet", given)
    assert result.returncode == 0, result.stderr
    assert values(registry, "atlas")["AGENT_SUBNET_BASE"] == base
    assert values(registry, "atlas")["WARDEN_SUBNET"] == f"{base}.0/24"


@pytest.mark.parametrize("given", ["10.0.9.0/16", "10.0.0.0/16", "10.0.9.0/25"])
def test_add_agent_refuses_a_network_that_is_not_a_24(registry: Registry, given: str) -> None:
    result = invoke(registry, "add-agent", "atlas", "--subnet", given)
    assert result.returncode == 1
    assert f"--subnet {given} is a /{given.rsplit('/', 1)[1]}, not a /24" in result.stderr
    assert "--subnet 10.0." in result.stderr.split("fix:", 1)[1]
    assert not (registry.agents / "atlas").exists()


def test_set_subnet_base_is_kept_not_replaced_by_an_allocated_one(registry: Registry) -> None:
    result = invoke(registry, "add-agent", "atlas", "--set", "AGENT_SUBNET_BASE=192.168.0")
    assert result.returncode == 0, result.stderr
    assert values(registry, "atlas")["AGENT_SUBNET_BASE"] == "192.168.0"


def test_set_agent_host_is_kept_as_the_host(registry: Registry) -> None:
    registry.write_inventory(TWO_HOSTS)
    result = invoke(registry, "add-agent", "atlas", "--set", "AGENT_HOST=fbsd2")
    assert result.returncode == 0, result.stderr
    got = values(registry, "atlas")
    assert got["AGENT_HOST"] == "fbsd2"
    assert got["AGENT_SUBNET_BASE"].startswith("10.1.")  # fbsd2's warden_pool, not fbsd1's


@pytest.mark.parametrize(
    "args",
    [
        ["--subnet", "10.0.5", "--set", "AGENT_SUBNET_BASE=10.0.6"],
        ["--port", "3300", "--set", "CONTROLPLANE_API_PORT=3301"],
        ["--set", "AGENT_NAME=hermes"],
    ],
)
def test_an_option_and_a_set_that_disagree_are_refused(registry: Registry, args: list[str]) -> None:
    result = invoke(registry, "add-agent", "atlas", *args)
    assert result.returncode == 1
    assert "disagree" in result.stderr
    assert not (registry.agents / "atlas").exists()


# -- item 5: typos and keys given twice -----------------------------------------------


def test_check_warns_about_a_key_that_looks_like_an_owned_one_and_a_key_set_twice(registry: Registry) -> None:
    registry.write_env(
        "atlas",
        """\
        AGENT_NAME=atlas
        AGENT_SUBNET_BASE=10.0.1
        AGENT_PLACMENT=bhyve
        WARDEN_JAIL=git
        OPENAI_API_KEY=sk-not-a-typo
        SOUL_REF=main
        SOUL_REF=v2
        """,
    )
    result = invoke(registry, "check")
    assert result.returncode == 0, result.stdout
    assert "AGENT_PLACMENT is not a key this tool reads; did you mean AGENT_PLACEMENT?" in result.stdout
    assert "did you mean WARDEN_JAILS?" in result.stdout
    assert "OPENAI_API_KEY" not in result.stdout
    assert "SOUL_REF is set twice (lines 6 and 7); the last one counts" in result.stdout


def test_add_agent_warns_about_a_typod_set_key_and_a_key_set_twice(registry: Registry) -> None:
    result = invoke(registry, "add-agent", "atlas", "--set", "AGENT_PLACMENT=bhyve", "--set", "X=1", "--set", "X=2")
    assert result.returncode == 0, result.stderr
    assert "did you mean AGENT_PLACEMENT?" in result.stderr
    assert "--set X is given twice" in result.stderr


# -- item 6: one message per cause, in the user's terms ---------------------------------


def test_a_taken_subnet_is_one_short_message_with_the_cause_first(registry: Registry) -> None:
    assert invoke(registry, "add-agent", "atlas", "--subnet", "10.0.1").returncode == 0
    result = invoke(registry, "add-agent", "hermes", "--subnet", "10.0.1")
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and len(lines[0]) < 400, result.stderr
    assert lines[0].startswith("error: --subnet 10.0.1: agent hermes's subnet 10.0.1.0/24 overlaps agent atlas's")
    assert lines[0].count("fix:") == 1
    assert "is used 2 times" not in lines[0]  # the addresses follow from the subnet: not repeated
    assert "omit --subnet to take the next free /24 (10.0.0.0/24)" in lines[0]


def test_a_taken_port_suggests_a_free_one_with_the_option_typed(registry: Registry) -> None:
    assert invoke(registry, "add-agent", "atlas").returncode == 0
    assert invoke(registry, "add-agent", "hermes").returncode == 0  # 3101
    result = invoke(registry, "add-agent", "iris", "--port", "3100")
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: --port 3100 is used by 2 agents on fbsd1")
    assert "fix: use --port 3102" in line and line.count("fix:") == 1
    assert "CONTROLPLANE_API_PORT=" not in line.split("fix:", 1)[1]


def test_a_missing_inventory_is_one_error_naming_its_cause(registry: Registry) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nAGENT_HOST=fbsd1\n")
    missing = registry.root / "typo.yml"
    for command in (["check"], ["list"], ["add-agent", "hermes"]):
        result = invoke(registry, *command, env={"PROVISION_INVENTORY": str(missing)})
        assert result.returncode == 1
        out = result.stdout + result.stderr
        assert "AGENT_HOST" not in out, command
        (line,) = error_lines(out)
        assert line.startswith(f"error: {missing}: inventory file not found"), command


# -- item 7: messages, not tracebacks -------------------------------------------------


def test_graph_without_graphviz_dot_says_what_to_install(registry: Registry, tmp_path: Path) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    bare = tmp_path / "bin"
    bare.mkdir()
    result = invoke(registry, "graph", env={"PATH": str(bare)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Graphviz's `dot` is not installed" in result.stderr and "pkg install graphviz" in result.stderr


def test_render_into_a_build_dir_that_cannot_be_written_is_a_message(registry: Registry) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    blocker = registry.root / "afile"
    blocker.write_text("")
    result = invoke(registry, "render", env={"PROVISION_BUILD_DIR": str(blocker / "build")})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "cannot write" in line and str(blocker) in line


def test_status_of_an_unknown_agent_is_an_error_with_the_closest_name(registry: Registry) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    result = invoke(registry, "status", "--agent", "atlsa")
    assert result.returncode == 1
    assert "no agent 'atlsa'" in result.stderr and "did you mean atlas?" in result.stderr
    assert "┏" not in result.stdout  # no empty table


def test_status_shows_every_agent_unknown_when_its_machine_is_not_reached(registry: Registry) -> None:
    registry.write_inventory("all:\n  hosts:\n    fbsd1:\n      ansible_host: 127.0.0.1\n      ansible_port: 1\n")
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    registry.write_env("hermes", "AGENT_NAME=hermes\nAGENT_SUBNET_BASE=10.0.2\nCONTROLPLANE_API_PORT=3101\n")
    registry.write_env(
        "zed", "AGENT_NAME=zed\nAGENT_SUBNET_BASE=10.0.3\nAGENT_PLACEMENT=bhyve\nWARDEN_VM_IP=10.255.0.10\n"
    )
    (registry.root / "ssh_config").write_text("")
    env = {"PROVISION_SSH_CONFIG": str(registry.root / "ssh_config")}
    result = invoke(registry, "status", env=env)
    assert result.returncode == 1
    rows = {m.group(1): m.group(2) for m in re.finditer(r"│ \S+\s+│ (\w+)\s+│ (unknown[^│]*)│", result.stdout)}
    assert set(rows) == {"atlas", "hermes", "zed"}, result.stdout
    assert "host unreachable" in rows["atlas"] and "bhyve guest zedvm" in rows["zed"]
    only = invoke(registry, "status", "--agent", "zed", env=env)
    assert only.returncode == 1 and "zed" in only.stdout and "unknown" in only.stdout


# -- item 8: invoke tasks behave ------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_invoke_task_prints_its_help(registry: Registry, flag: str) -> None:
    for task in TASKS:
        result = invoke(registry, task, flag)
        assert result.returncode == 0, (task, result.stderr)
        assert f"Usage: inv[oke] [--core-opts] {task}" in result.stdout, task
        # long options only: invoke would otherwise make -h mean --host, -p --placement…
        assert not re.search(r"^\s+-[a-z][ ,=]", result.stdout, re.M), (task, result.stdout)
    assert not (registry.agents / "--help").exists()
