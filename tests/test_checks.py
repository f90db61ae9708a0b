"""Every rule of README.md#what-invoke-check-refuses, each with an input that breaks a naive implementation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provision import checks
from provision.checks import run_checks
from provision.inventory import load_inventory
from provision.models import jail_mac
from provision.problems import Problem
from provision.registry import load_fleet

from .conftest import TWO_HOSTS, Registry


def problems_of(reg: Registry) -> list[Problem]:
    hosts, host_problems = load_inventory(reg.inventory)
    return run_checks(load_fleet(reg.agents, hosts, host_problems))


def rules(reg: Registry) -> list[str]:
    return [p.rule for p in problems_of(reg) if p.is_error]


def warnings(reg: Registry) -> list[str]:
    return [p.rule for p in problems_of(reg) if not p.is_error]


def agent(reg: Registry, name: str, base: str, extra: str = "", dirname: str | None = None) -> Path:
    return reg.write_env(dirname or name, f"AGENT_NAME={name}\nAGENT_SUBNET_BASE={base}\n{extra}")


def test_a_clean_fleet_has_no_problems(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1")
    agent(registry, "iris", "10.0.2", "CONTROLPLANE_API_PORT=3101\n")
    assert problems_of(registry) == []


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["atlas-2", "atlas.2", "Atlas", "2atlas", "atlas_2", "a" * 17])
def test_agent_name_must_be_a_shell_identifier_and_vnet_safe(registry: Registry, bad: str) -> None:
    path = registry.write_env("x", f"AGENT_NAME={bad}\nAGENT_SUBNET_BASE=10.0.1\n")
    found = problems_of(registry)
    assert [p.rule for p in found] == ["value"]
    assert found[0].locations[0].file == path
    assert found[0].locations[0].line == 1
    assert found[0].locations[0].key == "AGENT_NAME"


@pytest.mark.parametrize("name", ["sshd", "pf", "cron", "bastille", "vm"])
def test_names_shadowing_rc_d_services_are_refused(registry: Registry, name: str) -> None:
    agent(registry, name, "10.0.1")
    assert rules(registry) == ["reserved-service"]


def test_reserved_db_prefix_system_is_refused(registry: Registry) -> None:
    agent(registry, "system", "10.0.1")
    assert "reserved-db" in rules(registry)


def test_directory_name_must_match_agent_name(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1", dirname="other")
    assert rules(registry) == ["name-dir"]


def test_two_files_claiming_one_agent_name_collide(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1")
    agent(registry, "atlas", "10.0.2", "CONTROLPLANE_API_PORT=3101\n", dirname="atlascopy")
    found = [p for p in problems_of(registry) if p.rule == "duplicate-name"]
    assert len(found) == 1
    assert {loc.file.parent.name for loc in found[0].locations} == {"atlas", "atlascopy"}


# -- jail names -------------------------------------------------------------------------


def test_clawdie_style_hyphenated_jail_name_is_refused_with_the_fix(registry: Registry) -> None:
    path = agent(registry, "atlas", "10.0.1", "CMS_JAIL_NAME=atlas-cms\n")
    (p,) = [p for p in problems_of(registry) if p.rule == "jail-name"]
    assert p.locations[0].file == path and p.locations[0].line == 3
    assert "CMS_JAIL_NAME=atlascms" in p.fix
    assert "docs/freebsd.md#bastille-create" in p.message


def test_underscore_and_all_digit_jail_names_are_refused(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1", "GIT_JAIL_NAME=atlas_git\nDB_JAIL_NAME=1234\n")
    assert rules(registry).count("jail-name") == 2


def test_long_jail_name_is_a_warning_about_numbered_epairs(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1", "GIT_JAIL_NAME=atlasgitrepo1\n")
    assert rules(registry) == []
    assert "epair-name" in warnings(registry)


def test_same_jail_name_for_two_agents_is_a_collision(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1", "GIT_JAIL_NAME=git\n")
    agent(registry, "iris", "10.0.2", "GIT_JAIL_NAME=git\nCONTROLPLANE_API_PORT=3101\n")
    assert "duplicate-jail" in rules(registry)


# -- shared LLM jail: on purpose vs by accident -----------------------------------------


def test_two_agents_sharing_one_ollama_jail_on_purpose_is_fine(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1", "OLLAMA_JAIL_NAME=ollama\n")
    agent(
        registry, "iris", "10.0.2", "OLLAMA_JAIL_NAME=ollama\nWARDEN_OLLAMA_IP=10.0.1.4\nCONTROLPLANE_API_PORT=3101\n"
    )
    assert rules(registry) == []


def test_same_ollama_name_with_a_different_ip_is_an_accident(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1", "OLLAMA_JAIL_NAME=ollama\n")
    agent(registry, "iris", "10.0.2", "OLLAMA_JAIL_NAME=ollama\nCONTROLPLANE_API_PORT=3101\n")
    assert "duplicate-jail" in rules(registry)


def test_same_ollama_ip_with_a_different_name_is_an_accident(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1")
    agent(registry, "iris", "10.0.2", "WARDEN_OLLAMA_IP=10.0.1.4\nCONTROLPLANE_API_PORT=3101\n")
    found = rules(registry)
    assert "duplicate-ip" in found
    assert "ip-outside" in found  # nobody owns a jail 'hermesollama' at 10.0.1.4


def test_sharing_a_jail_across_hosts_is_not_sharing(registry: Registry) -> None:
    registry.write_inventory(TWO_HOSTS)
    agent(registry, "atlas", "10.0.1", "OLLAMA_JAIL_NAME=ollama\nAGENT_HOST=fbsd1\n")
    agent(registry, "iris", "10.0.2", "OLLAMA_JAIL_NAME=ollama\nWARDEN_OLLAMA_IP=10.0.1.4\nAGENT_HOST=fbsd2\n")
    assert "ip-outside" in rules(registry)


def test_non_llm_jails_cannot_be_shared(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1", "DB_JAIL_NAME=db\n")
    agent(registry, "iris", "10.0.2", "DB_JAIL_NAME=db\nWARDEN_DB_IP=10.0.1.5\nCONTROLPLANE_API_PORT=3101\n")
    found = rules(registry)
    assert "duplicate-jail" in found and "ip-outside" in found


# -- networks ---------------------------------------------------------------------------


def test_overlapping_23_host_network_and_24_agent_is_a_collision(registry: Registry) -> None:
    registry.write_inventory("warden_hosts:\n  hosts:\n    fbsd1:\n      warden_host_networks: [10.0.0.0/23]\n")
    agent(registry, "atlas", "10.0.1")
    found = [p for p in problems_of(registry) if p.rule == "subnet-overlap"]
    assert len(found) == 1
    assert "10.0.0.0/23" in found[0].message


def test_warden_subnet_wider_than_24_is_refused(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.0", "WARDEN_SUBNET=10.0.0.0/23\n")
    assert "value" in rules(registry)


def test_two_agents_on_the_same_24_collide(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1")
    agent(registry, "iris", "10.0.1", "CONTROLPLANE_API_PORT=3101\n")
    found = rules(registry)
    assert "subnet-overlap" in found and "duplicate-ip" in found


def test_agents_on_different_hosts_still_need_distinct_subnets(registry: Registry) -> None:
    registry.write_inventory(TWO_HOSTS)
    agent(registry, "atlas", "10.0.1", "AGENT_HOST=fbsd1\n")
    agent(registry, "iris", "10.0.1", "AGENT_HOST=fbsd2\n")
    assert "subnet-overlap" in rules(registry)


def test_overlap_sweep_finds_a_small_net_inside_an_earlier_wide_one(registry: Registry) -> None:
    """A /16 host network followed by unrelated /24s: the later agent inside it is still found."""
    registry.write_inventory(
        "warden_hosts:\n  hosts:\n    fbsd1:\n      warden_host_networks: [10.0.0.0/16, 10.0.5.0/24]\n"
    )
    agent(registry, "atlas", "10.0.9")
    assert rules(registry).count("subnet-overlap") == 1


@pytest.mark.parametrize(
    "base,kind", [("8.8.8", "public"), ("169.254.1", "reserved"), ("127.0.0", "reserved"), ("100.64.0", "reserved")]
)
def test_non_private_subnets_are_refused(registry: Registry, base: str, kind: str) -> None:
    agent(registry, "atlas", base)
    (p,) = [p for p in problems_of(registry) if p.rule == "subnet-private"]
    assert kind in p.message


def test_malformed_subnet_base_is_an_error_with_the_line(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.256")
    (p,) = problems_of(registry)
    assert (p.locations[0].key, p.locations[0].line) == ("AGENT_SUBNET_BASE", 2)


def test_gateway_must_be_dot_one(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1", "WARDEN_GATEWAY=10.0.1.254\n")
    assert rules(registry) == ["gateway"]


def test_service_ip_outside_subnet_or_on_gateway_is_refused(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1", "WARDEN_GIT_IP=10.0.9.2\nWARDEN_CMS_IP=10.0.1.1\n")
    found = rules(registry)
    assert "ip-outside" in found and "ip-gateway" in found


def test_two_services_on_one_address_within_an_agent_collide(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1", "WARDEN_DB_IP=10.0.1.3\n")
    assert rules(registry) == ["ip-duplicate"]


def test_older_clawdie_slot_map_is_recognised_as_a_warning(registry: Registry) -> None:
    agent(
        registry,
        "atlas",
        "10.0.1",
        "WARDEN_DB_IP=10.0.1.3\nWARDEN_CMS_IP=10.0.1.4\nWARDEN_OLLAMA_IP=10.0.1.5\nWARDEN_GIT_IP=10.0.1.6\n",
    )
    assert rules(registry) == []
    assert warnings(registry) == ["old-slot-map"]


# -- per host: ports, directories, MACs, interfaces -------------------------------------


def test_same_api_port_on_one_host_collides_but_not_across_hosts(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1")
    agent(registry, "iris", "10.0.2")
    assert rules(registry) == ["duplicate-controlplane_api_port"]
    registry.write_inventory(TWO_HOSTS)
    agent(registry, "atlas", "10.0.1", "AGENT_HOST=fbsd1\n")
    agent(registry, "iris", "10.0.2", "AGENT_HOST=fbsd2\n")
    assert rules(registry) == []


def test_same_data_directory_on_one_host_is_refused_as_outside_the_home(registry: Registry) -> None:
    # Two agents can no longer share a directory: each one's is in its own home (docs/security.md).
    agent(registry, "atlas", "10.0.1", "AGENT_DIR=/home/atlas/agent\n")
    path = agent(registry, "iris", "10.0.2", "AGENT_DIR=/home/atlas/agent\nCONTROLPLANE_API_PORT=3101\n")
    (p,) = problems_of(registry)
    assert (p.rule, p.locations[0].file, p.locations[0].key) == ("value", path, "AGENT_DIR")
    assert "outside the home of agent iris" in p.message and "AGENT_DIR=/home/iris/clawdie" in p.fix


def test_derived_mac_collision_is_reported(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "jail_mac", lambda host, jail: "02:00:00:00:00:01")
    agent(registry, "atlas", "10.0.1", "WARDEN_JAILS=git\n")
    agent(registry, "iris", "10.0.2", "WARDEN_JAILS=git\nCONTROLPLANE_API_PORT=3101\n")
    assert rules(registry) == ["duplicate-mac"]


def test_bridge_name_longer_than_15_characters_is_refused(registry: Registry) -> None:
    registry.write_inventory("warden_hosts:\n  hosts:\n    fbsd1:\n      warden_bridge: wardenbridge0123\n")
    assert rules(registry) == ["bridge-name"]


def test_a_host_with_agents_needs_its_uplink_named_one_without_does_not(registry: Registry) -> None:
    registry.write_inventory("warden_hosts:\n  hosts:\n    fbsd1: {}\n    fbsd2:\n      warden_ext_if: igb0\n")
    agent(registry, "atlas", "10.0.1", "AGENT_HOST=fbsd2\n")
    assert rules(registry) == []  # fbsd1 has nothing to NAT
    agent(registry, "hermes", "10.0.2", "AGENT_HOST=fbsd1\n")
    [problem] = [p for p in problems_of(registry) if p.is_error]
    assert problem.rule == "ext-if-missing" and "warden_ext_if" in problem.fix
    assert problem.locations[0].file == registry.inventory and problem.locations[0].key == "fbsd1.warden_ext_if"


def test_unknown_host_is_refused_with_the_known_hosts(registry: Registry) -> None:
    registry.write_inventory(TWO_HOSTS)
    agent(registry, "atlas", "10.0.1", "AGENT_HOST=fbsd9\n")
    (p,) = problems_of(registry)
    assert p.rule == "unknown-host" and "fbsd1, fbsd2" in p.fix


def test_several_hosts_and_no_agent_host_is_an_error_naming_the_hosts(registry: Registry) -> None:
    registry.write_inventory(TWO_HOSTS)
    agent(registry, "atlas", "10.0.1")
    (p,) = problems_of(registry)
    assert p.locations[0].key == "AGENT_HOST" and "fbsd1, fbsd2" in p.fix


# -- locales ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,fix", [("sl_SI.utf8", "sl_SI.UTF-8"), ("en_US.ISO8859-1", "en_US.UTF-8"), ("sl_SI", "sl_SI.UTF-8")]
)
def test_system_locale_must_be_a_freebsd_utf8_name(registry: Registry, value: str, fix: str) -> None:
    agent(registry, "atlas", "10.0.1", f"SYSTEM_LOCALE={value}\n")
    (p,) = problems_of(registry)
    assert p.rule == "locale" and f"SYSTEM_LOCALE={fix}" in p.fix


def test_unknown_locale_name_is_refused(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1", "SYSTEM_LOCALE=xx_QQ.UTF-8\n")
    assert rules(registry) == ["locale"]


def test_bcp47_display_locale_is_validated(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1", "DISPLAY_LOCALE=sl_SI\n")
    assert rules(registry) == ["value"]


# -- all at once ------------------------------------------------------------------------


def test_every_problem_is_reported_in_one_run(registry: Registry) -> None:
    agent(registry, "sshd", "10.0.1", "CMS_JAIL_NAME=sshd-cms\n")
    agent(registry, "iris", "10.0.1", "SYSTEM_LOCALE=en_US.ISO8859-1\n")
    registry.write_env("broken", "AGENT_NAME=broken\nnot an assignment\n")
    found = set(rules(registry))
    assert {
        "reserved-service",
        "jail-name",
        "subnet-overlap",
        "locale",
        "syntax",
        "duplicate-controlplane_api_port",
    } <= found


def test_unknown_keys_are_kept_and_do_not_fail_validation(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1", "SOME_APP_SETTING=x\nANTHROPIC_API_KEY=sk-secret\n")
    assert problems_of(registry) == []


@settings(max_examples=300, deadline=None)
@given(bases=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 255)), min_size=1, max_size=30))
def test_overlap_sweep_agrees_with_a_pairwise_oracle(bases: list[tuple[int, int]]) -> None:
    """Whatever the order, the sweep reports an overlap exactly when some pair overlaps."""
    from ipaddress import IPv4Network

    from provision.problems import Location

    nets = [(IPv4Network(f"10.{a}.{b}.0/24"), Location(Path(f"{i}")), f"n{i}", True) for i, (a, b) in enumerate(bases)]
    pairwise = any(n1[0].overlaps(n2[0]) for i, n1 in enumerate(nets) for n2 in nets[i + 1 :])
    assert bool(checks._overlaps(nets)) == pairwise


# -- start-up order and limits (issue 7) ------------------------------------------------


def test_a_three_agent_requires_loop_is_refused_and_named(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1", "AGENT_REQUIRES=iris\n")
    agent(registry, "iris", "10.0.2", "AGENT_REQUIRES=nova\nCONTROLPLANE_API_PORT=3101\n")
    agent(registry, "nova", "10.0.3", "AGENT_REQUIRES=atlas\nCONTROLPLANE_API_PORT=3102\n")
    (p,) = [p for p in problems_of(registry) if p.rule == "requires-cycle"]
    assert "atlas → iris → nova → atlas" in p.message
    assert len(p.locations) == 3


def test_requires_without_a_cycle_is_fine_and_unknown_names_are_refused(registry: Registry) -> None:
    agent(registry, "atlas", "10.0.1")
    agent(registry, "iris", "10.0.2", "AGENT_REQUIRES=atlas\nCONTROLPLANE_API_PORT=3101\n")
    assert rules(registry) == []
    agent(registry, "iris", "10.0.2", "AGENT_REQUIRES='atlas nova'\nCONTROLPLANE_API_PORT=3101\n")
    assert rules(registry) == ["requires-unknown"]


@pytest.mark.parametrize("line", ["AGENT_MEMORY_LIMIT=lots", "AGENT_MAXPROC=0", "JAIL_MEMORY_LIMIT=2GB"])
def test_malformed_resource_limits_are_refused(registry: Registry, line: str) -> None:
    agent(registry, "atlas", "10.0.1", line + "\n")
    (p,) = problems_of(registry)
    assert p.locations[0].key == line.split("=")[0]


def test_a_jail_mac_equal_to_the_bridges_pinned_mac_is_reported(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the jails' gateway entries name the bridge's pinned MAC (docs/isolation.md "Layer 2")
    monkeypatch.setattr(checks, "bridge_mac", lambda host, bridge: jail_mac(host, "atlasgit"))
    agent(registry, "atlas", "10.0.1", "WARDEN_JAILS=git\n")
    (p,) = problems_of(registry)
    assert p.rule == "duplicate-mac" and "bridge collides with a jail's" in p.message
