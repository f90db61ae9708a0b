"""provision/actions.py: every action decided from the rendered state and the live one (pure)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from provision.actions import (
    PF_MARKER,
    Action,
    agent_hash,
    bridge_ether,
    host_actions,
    jail_arp_hash,
    jail_arp_marker_path,
    jail_marker_path,
    jail_spec_hash,
    listing,
    marker_paths,
    pending,
    started_marker_path,
    wanted_addresses,
)
from provision.hostfiles import edited_results
from provision.isolation import static_arp_pins, sysctl_changes
from provision.limits import kernel_form
from provision.manifest import LIVE_MANIFEST_PATH, Manifest
from provision.probe import Probe, parse_probe, probe_script, running_services


@pytest.fixture
def host(example: Path) -> tuple[Manifest, Path]:
    build = example / "fbsd1"
    return Manifest.load(build), build


def converged(m: Manifest, build: Path) -> tuple[dict[str, str | None], Probe]:
    """The live files and probe of a host an uninterrupted apply left."""
    edited = ("/etc/rc.conf", "/etc/pf.conf", "/etc/rctl.conf", "/etc/sysctl.conf")
    live: dict[str, str | None] = dict.fromkeys(edited)
    live.update(edited_results(m, live, None))
    live[LIVE_MANIFEST_PATH] = m.to_json()
    for j in m.jails:
        live[jail_marker_path(j.name)] = jail_spec_hash(j, build)
        live[jail_arp_marker_path(j.name)] = jail_arp_hash(j)
    for a in m.agents:
        live[started_marker_path(a)] = agent_hash(m, build, a)
    from provision.actions import pf_hash

    live[PF_MARKER] = pf_hash(m, build, live["/etc/pf.conf"] or "")
    pins = static_arp_pins((e.op, e.name, e.value) for e in m.rc_conf)
    epairs = [f"e0a_{j.name}" for j in m.jails if len(f"e0a_{j.name}") <= 15]
    probe = Probe(
        interfaces=["vtnet0", "lo0", m.bridge, *epairs],
        # arp.c print_entry and ifbridge.c bridge_addresses, as the doubles print them
        arp="\n".join(f"? ({a}) at {mac} on {m.bridge} permanent [bridge]" for a, mac in pins.items()),
        bridge_addr="\n".join(
            f"{j.mac} Vlan1 e0a_{j.name} 0 flags=1<STATIC>" for j in m.jails if len(f"e0a_{j.name}") <= 15
        ),
        bridge_addresses=[w.split("/")[0] for w in wanted_addresses(m)],
        bridge_ether=bridge_ether(m),
        jails=[j.name for j in m.jails],
        running_jails=[j.name for j in m.jails],
        pf_enabled=True,
        forwarding="1",
        running_services=list(m.agents),
        users=list(m.agents),
        rctl=[kernel_form(r) for r in m.rctl_rules],
        packages=["tmux", "node", "git"],
        bridge_sysctl={s.split("=")[0]: s.split("=")[1] for s in m.sysctl},
    )
    return live, probe


def argvs(actions: list[Action]) -> list[tuple[str, ...]]:
    return [a.argv for a in actions if a.kind == "command"]


def test_a_converged_host_needs_nothing(host: tuple[Manifest, Path]) -> None:
    m, build = host
    live, probe = converged(m, build)
    assert [a.describe for a in host_actions(m, build, live, probe, packages=["tmux"])] == []


def test_a_jail_created_but_not_set_up_is_set_up_again_and_the_marker_comes_last(host: tuple[Manifest, Path]) -> None:
    m, build = host
    live, probe = converged(m, build)
    live[jail_marker_path("atlasdb")] = None  # a run stopped after `bastille create`
    acts = host_actions(m, build, live, probe)
    assert [a.unit for a in acts] == ["jail atlasdb"] * len(acts)
    assert [a.kind for a in acts] == ["edit", "edit", "command", "command", "command", "command"]
    assert argvs(acts) == [
        ("bastille", "config", "atlasdb", "set", "host.hostname", "atlasdb.atlas.home.arpa"),
        ("bastille", "config", "atlasdb", "set", "sysvshm", "new"),
        ("bastille", "restart", "atlasdb"),
        ("bastille", "template", "atlasdb", "warden/db"),
    ]
    assert acts[0].edit is not None and acts[0].edit.path == "/usr/local/bastille/jails/atlasdb/jail.conf"
    # the pin goes right after Bastille's addm line, once, however often the edit runs
    pin = acts[1].edit
    assert pin is not None
    conf = (
        "atlasdb {\n"
        '  exec.prestart += "ifconfig epair0 create";\n'
        '  exec.prestart += "ifconfig warden0 addm e0a_atlasdb";\n'
        '  exec.prestart += "ifconfig e0a_atlasdb up name e0a_atlasdb";\n}\n'
    )
    once = re.sub(pin.pattern, pin.replacement, conf)
    assert re.sub(pin.pattern, pin.replacement, once) == once
    lines = once.splitlines()
    jail = next(j for j in m.jails if j.name == "atlasdb")
    assert lines[3] == f'  exec.prestart += "ifconfig warden0 static e0a_atlasdb {jail.mac}";'
    assert lines[2].endswith('addm e0a_atlasdb";') and len(lines) == len(conf.splitlines()) + 1
    assert [a.marker is not None for a in acts] == [False, False, False, False, False, True]
    assert acts[-1].marker is not None and acts[-1].marker.path == "/var/db/warden/jails/atlasdb.ready"


def test_a_jails_own_arp_pins_go_into_its_jail_conf_and_the_running_jail_marker_last(
    host: tuple[Manifest, Path],
) -> None:
    # docs/isolation.md "Layer 2": rc.d/static_arp skips VNET jails, so each jail's
    # gateway and /24 neighbours are pinned by jail.conf exec.start lines and, now, jexec.
    m, build = host
    live, probe = converged(m, build)
    live[jail_arp_marker_path("hermescms")] = None  # never pinned, or a run stopped midway
    acts = host_actions(m, build, live, probe)
    jail = next(j for j in m.jails if j.name == "hermescms")
    assert jail.arp == [
        f"10.0.0.1 {bridge_ether(m)}",
        *(f"{j.ip} {j.mac}" for j in sorted(m.jails, key=lambda j: j.ip) if j.name in ("hermesgit", "hermesdb")),
    ]
    assert [a.unit for a in acts] == ["jail hermescms arp"] * (1 + len(jail.arp))
    assert argvs(acts) == [("jexec", "hermescms", "/usr/sbin/arp", "-S", *pair.split()) for pair in jail.arp]
    assert {a.fail_stderr for a in acts[1:]} == {"cannot locate"}
    assert [a.marker is not None for a in acts] == [False] * len(jail.arp) + [True]
    assert acts[-1].marker is not None and acts[-1].marker.content == jail_arp_hash(jail)
    # jail.conf, as Bastille writes it for a bridged VNET jail (create.sh generate_vnet_jail_conf):
    # the lines go right after its `exec.start =` line (a `+=` before it would be reset),
    # and a second edit, or one after the pins changed, replaces them.
    edit = acts[0].edit
    assert edit is not None and edit.path == "/usr/local/bastille/jails/hermescms/jail.conf"
    conf = (
        "hermescms {\n  enforce_statfs = 2;\n  exec.clean;\n  exec.start = '/bin/sh /etc/rc';\n"
        "  exec.stop = '/bin/sh /etc/rc.shutdown';\n  vnet;\n}\n"
    )
    once = re.sub(edit.pattern, edit.replacement, conf)
    assert re.sub(edit.pattern, edit.replacement, once) == once
    lines = once.splitlines()
    assert lines[3] == "  exec.start = '/bin/sh /etc/rc';"
    assert lines[4 : 4 + len(jail.arp)] == [f'  exec.start += "/usr/sbin/arp -S {pair}";' for pair in jail.arp]
    assert lines[4 + len(jail.arp)] == "  exec.stop = '/bin/sh /etc/rc.shutdown';"
    stale = once.replace(jail.arp[1].split()[1], "02:00:00:00:00:01")
    assert re.sub(edit.pattern, edit.replacement, stale) == once


def test_a_missing_jail_is_created_then_set_up(host: tuple[Manifest, Path]) -> None:
    m, build = host
    live, probe = converged(m, build)
    probe = Probe(**{**probe.to_dict(), "jails": [j for j in probe.jails if j != "atlascms"]})
    acts = host_actions(m, build, live, probe)
    jail = next(j for j in m.jails if j.name == "atlascms")
    assert acts[0].argv == ("bastille", *jail.create_args)
    assert acts[0].describe.startswith("create jail atlascms: bastille create ")
    assert "sysvshm" not in " ".join(" ".join(a.argv) for a in acts)  # only db jails


def test_a_drifted_jail_is_a_warning_every_run_never_recreated(host: tuple[Manifest, Path]) -> None:
    m, build = host
    live, probe = converged(m, build)
    live[jail_marker_path("atlasgit")] = "0" * 64 + "\n"
    acts = host_actions(m, build, live, probe)
    assert [a.kind for a in acts] == ["warn"] and "atlasgit exists but its rendered spec changed" in acts[0].describe
    assert pending(acts) == [] and listing(acts).lines == []


def test_the_template_content_is_part_of_the_jail_spec(host: tuple[Manifest, Path], tmp_path: Path) -> None:
    m, build = host
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(build, copy)
    jail = next(j for j in m.jails if j.name == "atlascms")
    (copy / "usr/local/bastille/templates/warden/cms/Bastillefile").write_text("PKG nginx\n")
    assert jail_spec_hash(jail, copy) != jail_spec_hash(jail, build)


def test_stopped_jails_start_removed_ones_stop_or_are_destroyed(host: tuple[Manifest, Path]) -> None:
    m, build = host
    live, probe = converged(m, build)
    previous = Manifest.from_json(m.to_json())
    old = next(j for j in m.jails if j.name == "hermesgit")
    previous.jails.append(type(old)(**{**old.__dict__, "name": "gonegit"}))
    live[LIVE_MANIFEST_PATH] = previous.to_json()
    probe = Probe(
        **{
            **probe.to_dict(),
            "jails": [*probe.jails, "gonegit"],
            "running_jails": [*[j for j in probe.running_jails if j != "ollama"], "gonegit"],
        }
    )
    expected = [("bastille", "start", "ollama"), ("bastille", "stop", "gonegit")]
    assert argvs(host_actions(m, build, live, probe)) == expected
    assert argvs(host_actions(m, build, live, probe, destroy_jails=True))[-1] == (
        "bastille",
        "destroy",
        "-a",
        "-y",
        "gonegit",
    )


def test_agents_start_when_stopped_and_restart_when_started_with_other_files(host: tuple[Manifest, Path]) -> None:
    m, build = host
    live, probe = converged(m, build)
    live[started_marker_path("atlas")] = "f" * 64 + "\n"  # written, never restarted
    probe = Probe(**{**probe.to_dict(), "running_services": ["atlas"]})
    acts = host_actions(m, build, live, probe)
    assert argvs(acts) == [("service", "atlas", "restart"), ("service", "hermes", "start")]
    assert all(a.marker is not None and a.marker.content == agent_hash(m, build, a.name) for a in acts)
    # the .env is part of what an agent runs with
    env = next(e for e in m.files if e.agent == "atlas" and e.secret)
    assert env.path in {e.path for e in m.files}


def test_agent_restriction_and_users_and_packages(host: tuple[Manifest, Path]) -> None:
    m, build = host
    live, probe = converged(m, build)
    probe = Probe(**{**probe.to_dict(), "users": [], "packages": ["tmux"]})
    acts = host_actions(m, build, live, probe, agent="hermes", packages=["tmux", "node", "git"])
    assert [(a.kind, a.name) for a in acts if a.kind == "user"] == [("user", "hermes")]
    cmd = next(a for a in acts if a.argv[:1] == ("pkg",))
    assert cmd.argv == ("pkg", "install", "-y", "node", "git") and dict(cmd.env) == {"ASSUME_ALWAYS_YES": "yes"}


def test_removed_agents_stop(host: tuple[Manifest, Path]) -> None:
    m, build = host
    live, probe = converged(m, build)
    previous = Manifest.from_json(m.to_json())
    previous.agents.append("gone")
    live[LIVE_MANIFEST_PATH] = previous.to_json()
    probe = Probe(**{**probe.to_dict(), "running_services": [*m.agents, "gone"]})
    assert argvs(host_actions(m, build, live, probe)) == [("service", "gone", "onestop")]


def test_pf_starts_when_off_and_reloads_when_the_loaded_ruleset_is_another(host: tuple[Manifest, Path]) -> None:
    m, build = host
    live, probe = converged(m, build)
    off = Probe(**{**probe.to_dict(), "pf_enabled": False})
    (start,) = host_actions(m, build, live, off)
    assert (start.kind, start.argv, start.name) == ("pf-load", ("service", "pf", "onestart"), "start")
    live[PF_MARKER] = None  # files installed by a run that stopped before the load
    (reload,) = host_actions(m, build, live, probe)
    assert reload.argv == ("service", "pf", "reload") and reload.marker is not None
    assert reload.marker.path == PF_MARKER


def test_network_from_the_live_bridge(host: tuple[Manifest, Path]) -> None:
    m, build = host
    live, probe = converged(m, build)
    bare = Probe(
        **{
            **probe.to_dict(),
            "interfaces": ["vtnet0"],
            "bridge_addresses": [],
            "bridge_ether": "",
            "forwarding": "0",
            "bridge_sysctl": {"net.link.bridge.pfil_local_phys": "0"},
        }
    )
    assert argvs(host_actions(m, build, live, bare)) == [
        ("ifconfig", "bridge", "create", "name", "warden0"),
        ("ifconfig", "warden0", "up"),
        ("ifconfig", "warden0", "ether", bridge_ether(m)),
        *(("ifconfig", "warden0", "inet", w, "alias") for w in wanted_addresses(m)),
        ("sysctl", "net.inet.ip.forwarding=1"),
        *(("sysctl", s) for s in sysctl_changes(bare.bridge_sysctl, m.sysctl)),
    ]
    assert len(wanted_addresses(m)) == 2
    extra = Probe(**{**probe.to_dict(), "bridge_addresses": [*probe.bridge_addresses, "10.0.9.1"]})
    assert argvs(host_actions(m, build, live, extra)) == [("ifconfig", "warden0", "inet", "10.0.9.1", "-alias")]


def test_rctl_rules_from_the_live_kernel(host: tuple[Manifest, Path]) -> None:
    m, build = host
    live, probe = converged(m, build)
    none = Probe(**{**probe.to_dict(), "rctl": []})  # rctl.conf written, rules never added
    assert argvs(host_actions(m, build, live, none)) == [("rctl", "-a", r) for r in m.rctl_rules]
    previous = Manifest.from_json(m.to_json())
    previous.agents.append("gone")  # a record names only its own agents' rules (manifest.check_record)
    previous.rctl_rules.append("user:gone:maxproc:deny=10")
    live[LIVE_MANIFEST_PATH] = previous.to_json()
    stale = Probe(**{**probe.to_dict(), "rctl": [*probe.rctl, "user:gone:maxproc:deny=10"]})
    assert argvs(host_actions(m, build, live, stale)) == [("rctl", "-r", "user:gone:maxproc:deny")]


def test_markers_are_read_with_the_files(host: tuple[Manifest, Path]) -> None:
    m, _ = host
    paths = marker_paths(m)
    assert PF_MARKER in paths and "/var/db/warden/jails/ollama.ready" in paths
    assert "/var/db/warden/started/atlas" in paths
    assert all(p.startswith("/var/db/warden/") for p in paths)  # root's, no jail reaches it


def test_probe_script_quotes_and_parses() -> None:
    m = Manifest(host="h", bridge="warden0", agents=["atlas"])
    script = probe_script(m)
    assert "ifconfig warden0" in script and "=== end ===" in script
    out = (
        "=== interfaces ===\nvtnet0 lo0 warden0\n=== bridge ===\nwarden0: flags=8843\n"
        "\tinet 10.0.1.1 netmask 0xffffff00\n"
        "=== jails ===\natlascms\n=== jls ===\n=== pf ===\nStatus: Enabled for 0 days\n=== forwarding ===\n1\n"
        "=== services ===\natlas 4012\ngone -\n=== ps ===\n 4012   0 daemon: atlas[4013] (daemon)\n"
        "=== users ===\natlas:\n=== vminit ===\n=== switches ===\n"
        "NAME TYPE\n=== vms ===\nNAME DATASTORE\n=== rctl ===\n=== packages ===\ngit\n=== bridgesysctl ===\n"
        "net.link.bridge.pfil_member: 1\n=== end ===\n"
    )
    p = parse_probe(out)
    assert p.interfaces == ["vtnet0", "lo0", "warden0"] and p.bridge_addresses == ["10.0.1.1"]
    assert p.jails == ["atlascms"] and p.running_jails == [] and p.pf_enabled and p.forwarding == "1"
    assert p.running_services == ["atlas"] and p.users == ["atlas"] and p.packages == ["git"]
    assert p.bridge_sysctl == {"net.link.bridge.pfil_member": "1"} and p.complete
    assert not parse_probe(out.split("=== rctl")[0]).complete
    assert Probe.from_dict(p.to_dict()) == p


def test_an_agent_runs_only_when_its_pidfile_names_a_live_daemon_outside_jails() -> None:
    """rc.subr check_pidfile (docs/freebsd.md#rcd-scripts): the pid's process must exist, run
    daemon(8) (its title "daemon: …" or its path) and be outside any jail."""
    services = ["atlas 4012", "hermes 4020", "iris 4030", "nova 4040", "vega -", "orion 4050"]
    ps = [
        " 4012   0 daemon: atlas[4013] (daemon)",
        " 4030   0 /bin/sh /usr/local/libexec/warden/run-iris.sh",  # the pid was reused by another program
        " 4040   3 daemon: nova[4041] (daemon)",  # a jail's process
        " 4050   0 /usr/sbin/daemon -r -P /var/run/orion.pid /usr/local/libexec/warden/run-orion.sh",
    ]
    # hermes: a stale pidfile (its process is gone); vega: no pidfile
    assert running_services(services, ps) == ["atlas", "orion"]
    assert running_services(services, []) == []


def test_layer2_pins_are_set_from_live_state_and_a_removed_jails_pin_goes_before_its_gateway(
    host: tuple[Manifest, Path],
) -> None:
    m, build = host
    live, probe = converged(m, build)
    first = m.jails[0]
    address = next(
        a for a, mac in static_arp_pins((e.op, e.name, e.value) for e in m.rc_conf).items() if mac == first.mac
    )
    unpinned = Probe(
        **{
            **probe.to_dict(),
            "arp": "\n".join(ln for ln in probe.arp.splitlines() if f"({address})" not in ln),
            "bridge_addr": "\n".join(ln for ln in probe.bridge_addr.splitlines() if first.mac not in ln),
        }
    )
    acts = host_actions(m, build, live, unpinned, packages=["tmux"])
    assert argvs(acts) == [
        ("arp", "-S", address, first.mac),
        ("ifconfig", m.bridge, "static", f"e0a_{first.name}", first.mac),
    ]
    assert [a.fail_stderr for a in acts] == ["cannot locate", ""]
    # the previous apply pinned an address no jail has now: arp -d, before any gateway goes
    gone = "10.0.200.3"
    previous = json.loads(m.to_json())
    previous["rc_conf"].append({"op": "set", "name": "static_arp_warden_gone", "value": f"{gone} 02:00:00:00:00:01"})
    previous["jails"].append({**previous["jails"][0], "name": "gone"})  # its jail was in the record too
    live[LIVE_MANIFEST_PATH] = json.dumps(previous)
    stale = Probe(
        **{**probe.to_dict(), "arp": probe.arp + f"\n? ({gone}) at 02:00:00:00:00:01 on {m.bridge} permanent [bridge]"}
    )
    assert argvs(host_actions(m, build, live, stale, packages=["tmux"])) == [("arp", "-d", gone)]
