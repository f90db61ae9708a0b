"""Ansible filters that hand the roles what `provision` already decided.

Roles never re-derive values (docs/design.md#architecture): these filters run on the controller, import
the same `provision` code that `invoke plan` uses, and return plain data — so the
apply writes exactly the lines the plan showed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from provision.hostfiles import EDITED, edited_results
from provision.isolation import static_arp_pins, sysctl_changes
from provision.limits import live_additions, managed_rules, rctl_changes
from provision.manifest import Manifest
from provision.rcconf import read_vars
from provision.remote import parse_frames, read_script


def _manifest(build_host_dir: str) -> Manifest:
    return Manifest.load(Path(build_host_dir))


def _previous(live: dict[str, Any]) -> Manifest | None:
    text = live.get("/var/db/warden/manifest.json")
    return Manifest.from_json(text) if text else None


def warden_read_command(paths: list[str]) -> str:
    """The one-round read script `plan` uses, as a command line."""
    import shlex

    return "sh -c " + shlex.quote(read_script()) + " sh " + " ".join(shlex.quote(p) for p in paths)


def warden_frames(stdout: str) -> dict[str, str | None]:
    out = parse_frames(stdout.encode("utf-8", "surrogateescape") + (b"" if stdout.endswith("\n") else b"\n"))
    return {k: (None if v is None else v.decode("utf-8", "replace")) for k, v in out.items()}


def warden_owned_files(build_host_dir: str, agent: str = "", secret: bool | None = None) -> list[dict[str, Any]]:
    """Every file the manifest owns, with its rendered content (optionally one agent's only)."""
    m = _manifest(build_host_dir)
    out = []
    for e in m.files:
        if agent and e.agent not in (agent, None):
            continue
        if secret is not None and e.secret != secret:
            continue
        content = (Path(build_host_dir) / e.path.lstrip("/")).read_text(encoding="utf-8")
        out.append(
            {"path": e.path, "content": content, "mode": e.mode, "owner": e.owner, "group": e.group, "secret": e.secret}
        )
    return out


def warden_edited_files(
    build_host_dir: str, live: dict[str, Any], hold_pf_enable: bool = False
) -> list[dict[str, Any]]:
    """/etc/rc.conf, /etc/pf.conf, /etc/rctl.conf and /etc/sysctl.conf as `plan` computes them
    (sysrc semantics, hook, managed blocks); HOLD_PF_ENABLE leaves pf_enable as it is live."""
    m = _manifest(build_host_dir)
    previous = _previous(live)
    return [
        {"path": path, "content": content, "mode": EDITED[path], "owner": "root", "group": "wheel", "keep_mode": True}
        for path, content in edited_results(m, live, previous, hold_pf_enable).items()
    ]


def warden_agent_dirs(build_host_dir: str, agent: str = "") -> list[dict[str, Any]]:
    """The agents' own directories (parents of files they own, and logs/), owned by them."""
    m = _manifest(build_host_dir)
    dirs: dict[str, dict[str, Any]] = {}
    for e in m.files:
        if e.owner == "root" or (agent and e.agent != agent):
            continue
        parent = str(Path(e.path).parent)
        for path in (parent, f"{parent}/logs"):
            dirs[path] = {"path": path, "owner": e.owner, "group": e.group, "mode": "0750"}
    return [dirs[k] for k in sorted(dirs)]


def warden_changed_agents(changed_paths: list[str]) -> list[str]:
    """Agents whose rc.d script or run wrapper was just rewritten (they need a restart)."""
    out = set()
    for p in changed_paths:
        m = re.match(r"^/usr/local/etc/rc\.d/([a-z][a-z0-9]*)$", p) or re.match(r"^.*/run-([a-z][a-z0-9]*)\.sh$", p)
        if m:
            out.add(m.group(1))
    return sorted(out)


def warden_records(build_host_dir: str) -> list[dict[str, Any]]:
    """What the next plan and apply read to know what this apply put on the host."""
    m = _manifest(build_host_dir)
    return [
        {
            "path": "/var/db/warden/manifest.json",
            "content": m.to_json(),
            "mode": "0644",
            "owner": "root",
            "group": "wheel",
        }
    ]


def warden_removed_files(build_host_dir: str, live: dict[str, Any]) -> list[dict[str, str]]:
    """Files the previous apply put there that this one does not: {path, owner}.

    warden_files removes an agent's file as the agent (docs/security.md), root's as root.
    """
    m = _manifest(build_host_dir)
    previous = _previous(live)
    if previous is None:
        return []
    current = {e.path for e in m.files}
    return [
        {"path": e.path, "owner": e.owner}
        for e in sorted(previous.files, key=lambda e: e.path)
        if e.path not in current
    ]


SOUL_BUNDLES = "/var/db/warden-soul"  # roles/warden_soul copies each bundle here


def warden_soul_targets(souls: list[dict[str, Any]]) -> list[dict[str, str]]:
    """souls.json entries as warden_soul takes them: the bundle's path on the host."""
    return [
        {
            "name": s["name"],
            "user": s["user"],
            "group": s["group"],
            "dir": s["dir"],
            "bundle": f"{SOUL_BUNDLES}/{s['name']}.bundle",
            "commit": s["commit"],
        }
        for s in souls
    ]


def warden_removed_agents(build_host_dir: str, live: dict[str, Any]) -> list[str]:
    previous = _previous(live)
    return sorted(set(previous.agents) - set(_manifest(build_host_dir).agents)) if previous else []


def warden_probe(stdout: str) -> dict[str, Any]:
    """The facts probe's sections (=== name ===, split as `invoke doctor` splits them) as live facts."""
    from provision.doctor import sections as split_sections

    text = split_sections(stdout)
    sections = {name: body.splitlines() for name, body in text.items()}
    inet = [m.group(1) for ln in sections.get("bridge", []) if (m := re.match(r"^\s*inet (\S+) netmask", ln))]
    running = [ln.split()[0] for ln in sections.get("services", []) if ln.endswith(" running")]
    return {
        "interfaces": " ".join(sections.get("interfaces", [])).split(),
        "bridge_addresses": inet,
        "jails": [ln.strip() for ln in sections.get("jails", []) if ln.strip()],
        "running_jails": [ln.strip() for ln in sections.get("jls", []) if ln.strip()],
        "pf_enabled": "Status: Enabled" in text.get("pf", ""),
        "forwarding": text.get("forwarding", ""),
        "running_services": running,
        "users": [ln.split(":")[0] for ln in sections.get("users", [])],
        "vm_init": text.get("vminit", "") == "yes",
        "switches": [ln.split()[0] for ln in sections.get("switches", [])[1:] if ln.split()],
        # vm list's STATE column reads "Running (PID)" or "Stopped"
        "vms": {
            ln.split()[0]: "Running" if "Running" in ln else "Stopped"
            for ln in sections.get("vms", [])[1:]
            if ln.split()
        },
        "rctl": [ln.strip() for ln in sections.get("rctl", []) if ln.strip()],
        "packages": [ln.strip() for ln in sections.get("packages", []) if ln.strip()],
        "bridge_sysctl": dict(ln.split(": ", 1) for ln in sections.get("bridgesysctl", []) if ": " in ln),
        "arp": text.get("arp", ""),
        "bridge_addr": text.get("bridgeaddr", ""),
    }


def warden_alias_changes(build_host_dir: str, probe: dict[str, Any]) -> dict[str, list[str]]:
    """Gateway addresses to add to / remove from the live bridge (docs/freebsd.md#the-warden0-bridge)."""
    m = _manifest(build_host_dir)
    wanted: list[str] = []
    for e in m.rc_conf:
        if e.op == "set" and (e.name == f"ifconfig_{m.bridge}" or e.name.startswith(f"ifconfig_{m.bridge}_alias")):
            mm = re.search(r"inet (\S+)", e.value)
            if mm:
                wanted.append(mm.group(1))
    live = set(probe.get("bridge_addresses", []))
    wanted_ips = {w.split("/")[0] for w in wanted}
    return {"add": [w for w in wanted if w.split("/")[0] not in live], "remove": sorted(live - wanted_ips)}


def warden_rctl_changes(build_host_dir: str, probe: dict[str, Any], live: dict[str, Any]) -> dict[str, list[str]]:
    m = _manifest(build_host_dir)
    before = managed_rules(live.get("/etc/rctl.conf") or "")
    added, removed = rctl_changes(before, m.rctl_rules)
    # `rctl` lists raw integer amounts (deny=4294967296 for 4G): compare as the kernel keeps them.
    added += [r for r in live_additions(m.rctl_rules, probe.get("rctl", [])) if r not in added]
    return {"add": added, "remove": removed}


def warden_sysctl_changes(build_host_dir: str, probe: dict[str, Any]) -> list[str]:
    """`name=value` for sysctl(8): the live kernel's bridge filtering made as the manifest says."""
    return sysctl_changes(probe.get("bridge_sysctl", {}), _manifest(build_host_dir).sysctl)


def warden_layer2_changes(build_host_dir: str, probe: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """What pins each jail at layer 2 now (docs/isolation.md "Layer 2 on the shared bridge"):
    `arp -S`/`arp -d` for the host's ARP table, `ifconfig BRIDGE static` for running jails."""
    from provision.isolation import arp_entries, arp_pin_changes, bridge_entries, bridge_pin_changes

    m = _manifest(build_host_dir)
    previous = _previous(live)
    wanted = static_arp_pins((e.op, e.name, e.value) for e in m.rc_conf)
    before = static_arp_pins((e.op, e.name, e.value) for e in previous.rc_conf) if previous else {}
    add, drop = arp_pin_changes(wanted, before, arp_entries(probe.get("arp", "")))
    pins = [(f"e0a_{j.name}", j.mac) for j in m.jails if len(f"e0a_{j.name}") <= 15]
    static = bridge_pin_changes(pins, probe.get("interfaces", []), bridge_entries(probe.get("bridge_addr", "")))
    return {
        "arp_set": [list(p) for p in add],
        "arp_delete": drop,
        "bridge_static": [list(p) for p in static],
    }


def warden_prestart_pin(jail: dict[str, Any]) -> str:
    """The jail.conf exec.prestart line pinning JAIL's MAC to its epair (isolation.prestart_pin)."""
    from provision.isolation import prestart_pin

    return prestart_pin(jail["bridge"], f"e0a_{jail['name']}", jail["mac"])


def warden_manifest(build_host_dir: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(build_host_dir) / ".warden/manifest.json").read_text(encoding="utf-8"))
    return data


def warden_rc_vars(text: str | None) -> dict[str, str]:
    return read_vars(text or "")


def _fleet(inventory: str, agents_dir: str) -> Any:
    from provision.inventory import load_inventory
    from provision.registry import load_fleet

    hosts, _ = load_inventory(Path(inventory))
    return load_fleet(Path(agents_dir), hosts)


def warden_doctor_script(host_name: str, inventory: str, agents_dir: str) -> str:
    from provision.doctor import probe_script

    fleet = _fleet(inventory, agents_dir)
    return probe_script(fleet.host(host_name))


def warden_doctor_failures(stdout: str, host_name: str, inventory: str, agents_dir: str) -> list[str]:
    """`invoke doctor`'s verdicts for this host, minus what the apply itself sets up."""
    from provision.doctor import preflight_failures

    fleet = _fleet(inventory, agents_dir)
    host = fleet.host(host_name)
    return preflight_failures(host, fleet.agents_on(host_name), stdout) if host else []


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "warden_read_command": warden_read_command,
            "warden_layer2_changes": warden_layer2_changes,
            "warden_prestart_pin": warden_prestart_pin,
            "warden_frames": warden_frames,
            "warden_owned_files": warden_owned_files,
            "warden_edited_files": warden_edited_files,
            "warden_records": warden_records,
            "warden_agent_dirs": warden_agent_dirs,
            "warden_changed_agents": warden_changed_agents,
            "warden_removed_files": warden_removed_files,
            "warden_removed_agents": warden_removed_agents,
            "warden_soul_targets": warden_soul_targets,
            "warden_probe": warden_probe,
            "warden_alias_changes": warden_alias_changes,
            "warden_rctl_changes": warden_rctl_changes,
            "warden_sysctl_changes": warden_sysctl_changes,
            "warden_manifest": warden_manifest,
            "warden_rc_vars": warden_rc_vars,
            "warden_doctor_script": warden_doctor_script,
            "warden_doctor_failures": warden_doctor_failures,
        }
