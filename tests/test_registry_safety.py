"""Registry commands touch nothing outside the registry, lose no work, and never read a typo as "no agents".

Each test reproduces a defect of ea46a99 (issue 15, items 1 to 3): there `remove-agent /tmp/x --yes`
deleted /tmp/x, `remove-agent zed` deleted a soul repo's only copy, and a mistyped
PROVISION_AGENTS_DIR read as an empty registry.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from provision.registry import RegistryError, agent_dir, remove_agent

from .conftest import Registry
from .test_registry import add, invoke


def _victim(tmp_path: Path, name: str) -> Path:
    victim = tmp_path / name
    victim.mkdir()
    (victim / ".env").write_text("AGENT_NAME=atlas\n", encoding="utf-8")
    (victim / "precious").write_text("data\n", encoding="utf-8")
    return victim


@pytest.mark.parametrize("name", ["ABSOLUTE", "../outside", "atlas/../../outside", "atlas\n", ".", ""])
def test_remove_agent_refuses_a_name_that_is_not_an_agent_name(registry: Registry, tmp_path: Path, name: str) -> None:
    victim = _victim(tmp_path, "outside")
    add(registry, "atlas", subnet="10.0.1")
    name = str(victim) if name == "ABSOLUTE" else name
    with pytest.raises(RegistryError, match="is not an agent name"):
        remove_agent(registry.agents, name, force=True)
    assert (victim / "precious").exists() and (registry.agents / "atlas" / ".env").exists()


def test_invoke_remove_agent_with_a_path_deletes_nothing(registry: Registry, tmp_path: Path) -> None:
    victim = _victim(tmp_path, "myapp")
    for name in (str(victim), "../myapp"):
        result = invoke(registry, "remove-agent", name, "--yes")
        assert result.returncode == 1
        assert "is not an agent name" in result.stderr
        assert (victim / "precious").exists()


def test_an_agent_directory_that_links_out_of_the_registry_is_refused(registry: Registry, tmp_path: Path) -> None:
    victim = _victim(tmp_path, "elsewhere")
    (registry.agents / "zed").symlink_to(victim)
    with pytest.raises(RegistryError, match="is a symlink"):
        agent_dir(registry.agents, "zed")
    result = invoke(registry, "remove-agent", "zed", "--yes", "--force")
    assert result.returncode == 1 and "symlink" in result.stderr
    assert (victim / "precious").exists()


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
        check=True,
        capture_output=True,
    )


def test_remove_agent_refuses_to_delete_a_soul_repo_with_unpushed_work(registry: Registry) -> None:
    add(registry, "zed", subnet="10.0.7")
    soul = registry.agents / "zed" / "soul"
    soul.mkdir()
    _git(soul, "init", "-q")
    (soul / "SOUL.md").write_text("who I am\n", encoding="utf-8")
    _git(soul, "add", "SOUL.md")
    _git(soul, "commit", "-q", "-m", "first")
    (soul / "SOUL.md").write_text("who I am, edited\n", encoding="utf-8")

    dry = invoke(registry, "remove-agent", "zed", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert (
        "soul/" in dry.stdout and "1 uncommitted change(s)" in dry.stdout and "1 commit(s) on no remote" in dry.stdout
    )
    assert "nothing removed" in dry.stdout and soul.exists()

    refused = invoke(registry, "remove-agent", "zed", "--yes")
    assert refused.returncode == 1
    assert "not removing zed" in refused.stderr and "--force" in refused.stderr
    assert (soul / "SOUL.md").read_text(encoding="utf-8") == "who I am, edited\n"

    forced = invoke(registry, "remove-agent", "zed", "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (registry.agents / "zed").exists()


def test_remove_agent_names_the_agents_that_share_its_jail_or_require_it(registry: Registry) -> None:
    assert invoke(registry, "add-agent", "atlas", "--subnet", "10.0.1").returncode == 0
    assert invoke(registry, "add-agent", "iris", "--share-llm", "atlas").returncode == 0
    assert invoke(registry, "add-agent", "hermes", "--set", "AGENT_REQUIRES=atlas").returncode == 0
    result = invoke(registry, "remove-agent", "atlas", "--yes")
    assert result.returncode == 1
    assert "iris shares atlas's ollama jail atlasollama (10.0.1.4)" in result.stderr
    assert "hermes requires atlas" in result.stderr
    assert (registry.agents / "atlas" / ".env").exists()
    # An agent nobody depends on, with only its .env, goes with --yes alone.
    result = invoke(registry, "remove-agent", "hermes", "--yes")
    assert result.returncode == 0, result.stderr
    assert not (registry.agents / "hermes").exists()


@pytest.mark.parametrize("command", [["check"], ["list"], ["render"], ["plan", "--host", "fbsd1"], ["graph"]])
def test_read_commands_refuse_a_missing_agents_directory(registry: Registry, command: list[str]) -> None:
    registry.agents.rmdir()
    env_typo = {**registry.env(), "PROVISION_AGENTS_DIR": str(registry.root / "agnets")}
    result = _invoke_env(env_typo, *command)
    assert result.returncode == 1
    assert f"the agents directory {registry.root / 'agnets'} does not exist" in result.stderr
    assert "PROVISION_AGENTS_DIR" in result.stderr
    assert "0 agent(s)" not in result.stdout and "Traceback" not in result.stderr


def test_an_agents_directory_that_is_a_file_is_a_clean_error(registry: Registry) -> None:
    registry.agents.rmdir()
    registry.agents.write_text("not a directory\n", encoding="utf-8")
    for command in (["check"], ["add-agent", "atlas"]):
        result = _invoke_env(registry.env(), *command)
        assert result.returncode == 1
        assert "is not a directory" in result.stderr and "Traceback" not in result.stderr


def test_add_agent_creates_the_agents_directory_when_its_parent_exists(registry: Registry) -> None:
    registry.agents.rmdir()
    result = invoke(registry, "add-agent", "atlas", "--subnet", "10.0.1")
    assert result.returncode == 0, result.stderr
    assert f"created the agents directory {registry.agents}" in result.stdout
    assert (registry.agents / "atlas" / ".env").is_file()
    deep = {**registry.env(), "PROVISION_AGENTS_DIR": str(registry.root / "typo" / "agents")}
    result = _invoke_env(deep, "add-agent", "iris")
    assert result.returncode == 1 and "nor does its parent" in result.stderr
    assert not (registry.root / "typo").exists()


def _invoke_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    from .conftest import REPO

    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        env={**os.environ, **env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
