"""rctl rules for agents' users and jails, and the managed block in /etc/rctl.conf."""

from __future__ import annotations

from pathlib import Path

from provision.inventory import load_inventory
from provision.limits import (
    BEGIN,
    END,
    agent_rules,
    host_rules,
    kernel_form,
    managed_rules,
    rctl_changes,
    rctl_conf_result,
)
from provision.registry import load_fleet

from .conftest import Registry

OPERATOR = "# my own limits\nuser:www:maxproc:deny=100\n"


def fleet(reg: Registry):  # type: ignore[no-untyped-def]
    hosts, _ = load_inventory(reg.inventory)
    return load_fleet(reg.agents, hosts)


def test_limits_become_rules_for_the_user_and_each_own_jail(registry: Registry) -> None:
    registry.write_env(
        "atlas",
        "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nWARDEN_JAILS='git db'\n"
        "AGENT_MEMORY_LIMIT=4G\nAGENT_MAXPROC=256\nAGENT_PCPU=150\nJAIL_MEMORY_LIMIT=1G\n",
    )
    (atlas,) = fleet(registry).agents
    assert agent_rules(atlas) == [
        "user:atlas:memoryuse:deny=4G",
        "user:atlas:maxproc:deny=256",
        "user:atlas:pcpu:deny=150",
        "jail:atlasgit:memoryuse:deny=1G",
        "jail:atlasdb:memoryuse:deny=1G",
    ]


def test_a_shared_llm_jail_gets_only_its_owners_limits(registry: Registry) -> None:
    registry.write_env(
        "atlas",
        "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nWARDEN_JAILS=ollama\nOLLAMA_JAIL_NAME=llm\nJAIL_MEMORY_LIMIT=8G\n",
    )
    registry.write_env(
        "iris",
        "AGENT_NAME=iris\nAGENT_SUBNET_BASE=10.0.2\nWARDEN_JAILS=ollama\nOLLAMA_JAIL_NAME=llm\n"
        "WARDEN_OLLAMA_IP=10.0.1.4\nJAIL_MEMORY_LIMIT=1G\nCONTROLPLANE_API_PORT=3101\n",
    )
    assert host_rules(fleet(registry).agents) == ["jail:llm:memoryuse:deny=8G"]


def test_no_limits_no_rules(registry: Registry) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    assert host_rules(fleet(registry).agents) == []


def test_managed_block_is_added_replaced_and_removed_leaving_operator_lines() -> None:
    first = rctl_conf_result(OPERATOR, ["user:atlas:maxproc:deny=10"])
    assert first == OPERATOR + f"{BEGIN}\nuser:atlas:maxproc:deny=10\n{END}\n"
    second = rctl_conf_result(first + "jail:x:pcpu:deny=5\n", ["user:iris:maxproc:deny=20"])
    assert second == OPERATOR + f"{BEGIN}\nuser:iris:maxproc:deny=20\n{END}\n" + "jail:x:pcpu:deny=5\n"
    assert rctl_conf_result(second, []) == OPERATOR + "jail:x:pcpu:deny=5\n"
    assert rctl_conf_result(first, ["user:atlas:maxproc:deny=10"]) == first  # idempotent
    assert managed_rules(second) == ["user:iris:maxproc:deny=20"]


def test_file_without_trailing_newline_gets_one_before_the_block() -> None:
    assert rctl_conf_result("user:www:maxproc:deny=1", ["a:b:c:deny=1"]).startswith("user:www:maxproc:deny=1\n# BEGIN")


def test_live_changes_add_new_rules_and_remove_old_filters() -> None:
    added, removed = rctl_changes(
        ["user:atlas:maxproc:deny=10", "user:gone:pcpu:deny=5"],
        ["user:atlas:maxproc:deny=20", "user:iris:pcpu:deny=50"],
    )
    assert added == ["user:atlas:maxproc:deny=20", "user:iris:pcpu:deny=50"]
    assert removed == ["user:atlas:maxproc:deny", "user:gone:pcpu:deny"]


def test_unchanged_rules_need_no_live_change(tmp_path: Path) -> None:
    assert rctl_changes(["u:a:maxproc:deny=1"], ["u:a:maxproc:deny=1"]) == ([], [])


def test_live_rules_listed_as_raw_integers_are_not_added_again(example: Path) -> None:
    """rctl lists amounts as the kernel keeps them (`deny=4294967296` for `4G`, `/per`
    dropped when it is the subject: docs/freebsd.md#rctl); an applied host needs no change."""
    from provision.actions import rctl_actions
    from provision.manifest import Manifest
    from provision.probe import Probe

    build = example / "fbsd1"
    manifest = Manifest.load(build)
    wanted = manifest.rctl_rules
    assert "user:atlas:memoryuse:deny=4G" in wanted
    listed = [r.replace("=4G", "=4294967296").replace("=8G", "=8589934592") for r in wanted]
    live: dict[str, str | None] = {"/etc/rctl.conf": rctl_conf_result("", wanted)}
    assert rctl_actions(manifest, live, Probe(rctl=listed), None) == []
    changed: dict[str, str | None] = {"/etc/rctl.conf": rctl_conf_result("", [r.replace("=4G", "=2G") for r in wanted])}
    listed_old = [r.replace("=4294967296", "=2147483648") for r in listed]
    argvs = [a.argv for a in rctl_actions(manifest, changed, Probe(rctl=listed_old), None)]
    # a changed amount: the old rule removed by its filter, then the new one added
    assert argvs == [("rctl", "-r", "user:atlas:memoryuse:deny"), ("rctl", "-a", "user:atlas:memoryuse:deny=4G")]


def test_amounts_normalise_as_the_kernel_keeps_them() -> None:
    assert kernel_form("user:atlas:memoryuse:deny=4G") == "user:atlas:memoryuse:deny=4294967296"
    assert kernel_form("jail:atlasdb:maxproc:deny=64/jail") == "jail:atlasdb:maxproc:deny=64"
    assert kernel_form("user:atlas:pcpu:deny=50/process") == "user:atlas:pcpu:deny=50/process"
    assert kernel_form("jail:x:memoryuse:deny=512m") == "jail:x:memoryuse:deny=536870912"
