"""add-agent / remove-agent / list / check as a user runs them, and the allocation rules."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from provision.envfile import EnvFile
from provision.inventory import load_inventory
from provision.models import OWNED_KEYS
from provision.registry import AddRequest, RegistryError, add_agent, load_fleet, next_free_subnet

from .conftest import REPO, TWO_HOSTS, Registry


def invoke(reg: Registry, *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **reg.env(), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        stdin=stdin,
        timeout=120,
    )


def add(reg: Registry, name: str, **kw: object) -> Path:
    hosts, _ = load_inventory(reg.inventory)
    agent, _ = add_agent(reg.agents, hosts, AddRequest(name=name, **kw))  # type: ignore[arg-type]
    return agent.source


def test_add_agent_writes_every_key_explicitly_with_mode_0600(registry: Registry) -> None:
    result = invoke(registry, "add-agent", "atlas", "--subnet", "10.0.1")
    assert result.returncode == 0, result.stderr
    path = registry.agents / "atlas" / ".env"
    values = EnvFile.load(path).values()
    assert values["WARDEN_GATEWAY"] == "10.0.1.1"
    assert values["WARDEN_GIT_IP"] == "10.0.1.2" and values["WARDEN_DB_IP"] == "10.0.1.5"
    assert values["CMS_JAIL_NAME"] == "atlascms"
    assert values["CONTROLPLANE_API_PORT"] == "3100"
    assert values["AGENT_HOST"] == "fbsd1"
    assert [k for k in OWNED_KEYS if k in values][:5] == [
        "AGENT_NAME",
        "ASSISTANT_NAME",
        "AGENT_HOST",
        "AGENT_PLACEMENT",
        "AGENT_SUBNET_BASE",
    ]
    assert path.stat().st_mode & 0o777 == 0o600
    assert "WARDEN_GATEWAY" in result.stdout and "10.0.1.1" in result.stdout


def test_add_agent_without_subnet_takes_the_next_free_24_avoiding_host_networks(registry: Registry) -> None:
    registry.write_inventory(
        "warden_hosts:\n  hosts:\n    fbsd1:\n      warden_pool: 192.168.0.0/22\n"
        "      warden_host_networks: [192.168.0.0/24]\n"
    )
    add(registry, "atlas", subnet="192.168.1")
    second = add(registry, "iris")
    assert EnvFile.load(second).values()["AGENT_SUBNET_BASE"] == "192.168.2"
    assert EnvFile.load(second).values()["CONTROLPLANE_API_PORT"] == "3101"


def test_pool_exhaustion_is_a_clear_error_and_writes_nothing(registry: Registry) -> None:
    registry.write_inventory("warden_hosts:\n  hosts:\n    fbsd1:\n      warden_pool: 10.9.0.0/24\n")
    add(registry, "atlas")
    with pytest.raises(RegistryError, match=r"no free /24 left in warden_pool 10\.9\.0\.0/24"):
        add(registry, "iris")
    assert not (registry.agents / "iris").exists()


def test_add_agent_refuses_a_colliding_subnet_and_changes_nothing(registry: Registry) -> None:
    add(registry, "atlas", subnet="10.0.1")
    before = sorted(p.name for p in registry.agents.iterdir())
    result = invoke(registry, "add-agent", "iris", "--subnet", "10.0.1")
    assert result.returncode == 1
    assert "overlaps" in result.stderr and "iris" in result.stderr
    assert sorted(p.name for p in registry.agents.iterdir()) == before


@pytest.mark.parametrize("name", ["atlas-2", "atlas.2", "sshd"])
def test_add_agent_refuses_bad_names_and_writes_nothing(registry: Registry, name: str) -> None:
    result = invoke(registry, "add-agent", name)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert not (registry.agents / name).exists()


def test_add_agent_options_for_locale_host_placement_soul_and_jails(registry: Registry) -> None:
    registry.write_inventory(TWO_HOSTS)
    result = invoke(
        registry,
        "add-agent",
        "atlas",
        "--host",
        "fbsd2",
        "--placement",
        "bhyve",
        "--locale",
        "sl-SI",
        "--system-locale",
        "sl_SI.UTF-8",
        "--soul-repo",
        "/srv/souls/atlas.git",
        "--soul-ref",
        "main",
        "--jails",
        "git cms llamacpp",
        "--set",
        "LLAMA_CPP_JAIL_NAME=atlasllm",
        "--set",
        "MY_APP=1",
    )
    assert result.returncode == 0, result.stderr
    values = EnvFile.load(registry.agents / "atlas" / ".env").values()
    assert values["AGENT_HOST"] == "fbsd2" and values["AGENT_PLACEMENT"] == "bhyve"
    assert values["AGENT_SUBNET_BASE"] == "10.1.0"  # fbsd2's own pool
    assert values["WARDEN_VM_IP"] == "10.255.0.10"
    assert values["DISPLAY_LOCALE"] == values["ASSISTANT_LOCALE"] == "sl-SI"
    assert values["SYSTEM_LOCALE"] == "sl_SI.UTF-8"
    assert values["SOUL_REPO"] == "/srv/souls/atlas.git" and values["SOUL_REF"] == "main"
    assert values["WARDEN_JAILS"] == "git cms llamacpp" and values["LLAMA_CPP_JAIL_NAME"] == "atlasllm"
    assert values["MY_APP"] == "1"


def test_share_llm_points_at_the_other_agents_jail_and_checks_clean(registry: Registry) -> None:
    add(registry, "atlas", subnet="10.0.1")
    result = invoke(registry, "add-agent", "iris", "--share-llm", "atlas")
    assert result.returncode == 0, result.stderr
    values = EnvFile.load(registry.agents / "iris" / ".env").values()
    assert values["OLLAMA_JAIL_NAME"] == "atlasollama" and values["WARDEN_OLLAMA_IP"] == "10.0.1.4"
    assert invoke(registry, "check").returncode == 0


def test_several_hosts_need_host_option(registry: Registry) -> None:
    registry.write_inventory(TWO_HOSTS)
    result = invoke(registry, "add-agent", "atlas")
    assert result.returncode == 1 and "--host" in result.stderr


def _add_in_process(args: tuple[str, str, str]) -> str:
    agents, inventory, name = args
    hosts, _ = load_inventory(Path(inventory))
    agent, _ = add_agent(Path(agents), hosts, AddRequest(name=name))
    return str(agent.subnet)


def test_concurrent_add_agent_never_picks_the_same_subnet_or_loses_an_agent(registry: Registry) -> None:
    names = [f"agent{i}" for i in range(12)]
    with ProcessPoolExecutor(max_workers=6) as pool:
        subnets = list(pool.map(_add_in_process, [(str(registry.agents), str(registry.inventory), n) for n in names]))
    assert len(set(subnets)) == len(names)
    hosts, _ = load_inventory(registry.inventory)
    fleet = load_fleet(registry.agents, hosts)
    assert sorted(a.name for a in fleet.agents) == sorted(names)
    assert len({a.api_port for a in fleet.agents}) == len(names)


def test_remove_agent_refuses_without_yes_when_not_on_a_terminal(registry: Registry) -> None:
    add(registry, "atlas", subnet="10.0.1")
    result = invoke(registry, "remove-agent", "atlas")
    assert result.returncode == 1 and "--yes" in result.stderr
    assert (registry.agents / "atlas" / ".env").exists()
    result = invoke(registry, "remove-agent", "atlas", "--yes")
    assert result.returncode == 0, result.stderr
    assert not (registry.agents / "atlas").exists()


def test_remove_unknown_agent_names_the_known_ones(registry: Registry) -> None:
    add(registry, "atlas", subnet="10.0.1")
    result = invoke(registry, "remove-agent", "iris", "--yes")
    assert result.returncode == 1 and "iris" in result.stderr


def test_list_prints_a_table_of_agents(registry: Registry) -> None:
    add(registry, "atlas", subnet="10.0.1")
    result = invoke(registry, "list")
    assert result.returncode == 0
    for text in ("atlas", "fbsd1", "10.0.1.0/24", "10.0.1.1", "atlascms"):
        assert text in result.stdout


def test_check_exits_nonzero_and_names_file_line_key_and_fix(registry: Registry) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nCMS_JAIL_NAME=atlas-cms\n")
    result = invoke(registry, "check")
    assert result.returncode == 1
    assert f"{registry.agents / 'atlas' / '.env'}:3 CMS_JAIL_NAME" in result.stdout
    assert "fix: set CMS_JAIL_NAME=atlascms" in result.stdout


def test_check_never_prints_secret_values(registry: Registry) -> None:
    registry.write_env(
        "atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nANTHROPIC_API_KEY=sk-live-SECRET123\nCMS_JAIL_NAME=a-b\n"
    )
    result = invoke(registry, "check")
    assert "sk-live-SECRET123" not in result.stdout + result.stderr


def test_edited_env_keeps_comments_order_and_unknown_keys_through_checks(registry: Registry) -> None:
    text = "# mine\nexport AGENT_NAME=atlas\nFOO=bar # keep\nAGENT_SUBNET_BASE=10.0.1\n"
    path = registry.write_env("atlas", text)
    invoke(registry, "check")
    invoke(registry, "list")
    assert path.read_text() == text


def test_next_free_subnet_skips_overlaps_of_any_size() -> None:
    pool = IPv4Network("10.0.0.0/16")
    taken = [IPv4Network("10.0.0.0/23"), IPv4Network("10.0.3.0/24"), IPv4Network("10.0.2.128/25")]
    assert next_free_subnet(pool, taken) == IPv4Network("10.0.4.0/24")


def test_importing_the_cli_does_not_import_heavy_modules() -> None:
    code = (
        "import sys, tasks, provision.cli, provision.checks, provision.registry; "
        "heavy = [m for m in ('ansible', 'paramiko', 'jinja2') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bhyve_agents_on_two_hosts_each_get_their_hosts_first_uplink_address(registry: Registry) -> None:
    """The VM uplink is per host: the allocator and check agree (docs/design.md#placement)."""
    registry.write_inventory(TWO_HOSTS)
    for name, host in (("nova", "fbsd1"), ("vega", "fbsd2")):
        result = invoke(registry, "add-agent", name, "--host", host, "--placement", "bhyve")
        assert result.returncode == 0, result.stderr
        assert EnvFile.load(registry.agents / name / ".env").values()["WARDEN_VM_IP"] == "10.255.0.10"
    assert invoke(registry, "check").returncode == 0
    # On one host the same address twice is refused.
    registry.write_env(
        "lyra",
        "AGENT_NAME=lyra\nAGENT_HOST=fbsd1\nAGENT_PLACEMENT=bhyve\nAGENT_SUBNET_BASE=10.0.9\n"
        "CONTROLPLANE_API_PORT=3109\nWARDEN_VM_IP=10.255.0.10\n",
    )
    result = invoke(registry, "check")
    assert result.returncode == 1 and "WARDEN_VM_IP=10.255.0.10 is used by 2 agents on fbsd1" in result.stdout


def test_add_agent_writes_only_the_keys_of_the_roles_the_agent_has(registry: Registry) -> None:
    result = invoke(registry, "add-agent", "atlas", "--subnet", "10.0.1", "--jails", "git cms")
    assert result.returncode == 0, result.stderr
    values = EnvFile.load(registry.agents / "atlas" / ".env").values()
    assert values["GIT_JAIL_NAME"] == "atlasgit" and values["WARDEN_CMS_IP"] == "10.0.1.3"
    unused = ("OLLAMA_JAIL_NAME", "LLAMA_CPP_JAIL_NAME", "DB_JAIL_NAME", "WARDEN_OLLAMA_IP", "WARDEN_DB_IP")
    assert not set(unused) & set(values)
    assert invoke(registry, "check").returncode == 0
