"""Every command an apply runs on a host, decided from the rendered desired state and the
live state read in one round (docs/convergence.md).

`host_actions` is pure: `invoke plan` prints its result and the Ansible roles execute it
(the warden.provision filters, plugins/filter/warden.py, compute it once per host in the facts round;
the module warden.provision.actions runs one concern's list).  Nothing here depends on what changed
in the current run, so a run interrupted anywhere is finished by the next one:

- a jail is set up only when its marker (/var/db/warden/jails/<jail>.ready, root's, outside
  the jail) holds the hash of its setup spec; the marker is written last;
- a jail's own static ARP entries are written to its jail.conf and set in the running jail
  when /var/db/warden/jails/<jail>.arp does not hold the hash of the wanted entries;
- an agent is restarted when the hash of the rc.d script, wrapper and .env it was last
  (re)started with (/var/db/warden/started/<agent>) differs from the rendered one;
- PF is reloaded when the hash of the ruleset last confirmed loaded (/var/db/warden/pf.loaded)
  differs from the rendered one, started when it is not enabled;
- everything else (bridge, aliases, forwarding, sysctls, rctl, packages, users, jail
  start/stop/destroy) compares the live kernel and process state with the wanted one.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .hostfiles import edited_results
from .isolation import (
    JAIL_ARP,
    arp_entries,
    arp_pin_changes,
    bridge_entries,
    bridge_pin_changes,
    prestart_pin,
    start_arp_pin,
    static_arp_pins,
    sysctl_changes,
)
from .limits import kernel_form, live_additions, managed_rules
from .manifest import LIVE_MANIFEST_PATH, JailSpec, Manifest, read_record
from .probe import Probe

MARKER_DIR = "/var/db/warden"  # root's, 0700 (roles/warden_pf): no agent and no jail reaches it
JAIL_MARKERS = f"{MARKER_DIR}/jails"
STARTED_MARKERS = f"{MARKER_DIR}/started"
PF_MARKER = f"{MARKER_DIR}/pf.loaded"

Concern = Literal["network", "pf", "jails", "agents", "limits"]
# command: argv run by warden_actions; edit: a regex replacement in a root-owned file, done by
# warden_actions; user: created by ansible.builtin.user; pf-load: run by roles/warden_pf/tasks/load.yml
# (confirm-or-rollback); warn: nothing runs, the operator is told (every run).
Kind = Literal["command", "edit", "user", "pf-load", "warn"]


@dataclass(frozen=True)
class Marker:
    """Written by the executing module after the step and every earlier step of its unit succeeded."""

    path: str
    content: str


@dataclass(frozen=True)
class Edit:
    """Replace PATTERN by REPLACEMENT (re.sub, \\g<1> style) in PATH."""

    path: str
    pattern: str
    replacement: str


@dataclass(frozen=True)
class Action:
    concern: Concern
    describe: str  # one line an operator reads
    argv: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    marker: Marker | None = None
    unit: str = ""  # the steps of one unit (a jail, an agent) stop together at the first failure
    kind: Kind = "command"
    edit: Edit | None = None
    name: str = ""  # the object acted on (jail, agent, user), for the roles' loops
    # a command that reports some refusals with exit status 0 (arp(8) with netlink): this
    # text on its stderr fails the action too
    fail_stderr: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["argv"] = list(self.argv)
        out["env"] = dict(self.env)
        return out


def _cmd(concern: Concern, what: str, argv: Sequence[str], **kw: Any) -> Action:
    return Action(concern, f"{what}: {shlex.join(argv)}", tuple(argv), **kw)


def digest(parts: Mapping[str, str]) -> str:
    """The marker content: sha256 of the parts (name → text), in name order."""
    h = hashlib.sha256()
    for name in sorted(parts):
        data = parts[name].encode("utf-8", "surrogateescape")
        h.update(f"{name}\0{len(data)}\0".encode() + data)
    return h.hexdigest() + "\n"


def _text(value: str | bytes | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8", "surrogateescape")


def _rendered(rendered_dir: Path, path: str) -> str:
    return (rendered_dir / path.lstrip("/")).read_text(encoding="utf-8", errors="surrogateescape")


# -- jails --------------------------------------------------------------------------------------


def jail_marker_path(name: str) -> str:
    return f"{JAIL_MARKERS}/{name}.ready"


def jail_spec_hash(jail: JailSpec, rendered_dir: Path) -> str:
    """What the setup steps apply: create args, MAC, hostname, SysV IPC, template content."""
    tdir = rendered_dir / "usr/local/bastille/templates" / jail.template
    template = {
        str(p.relative_to(tdir)): p.read_text(encoding="utf-8", errors="surrogateescape")
        for p in sorted(tdir.rglob("*"))
        if p.is_file()
    }
    spec = {
        "create": json.dumps(jail.create_args),
        "mac": jail.mac,
        "hostname": jail.hostname,
        "sysvshm": "new" if jail.role == "db" else "",
        "pin": _pin_line(jail),
        "template": json.dumps(template, sort_keys=True),
    }
    return digest(spec)


def _pin_line(jail: JailSpec) -> str:
    """jail.conf's exec.prestart line pinning the jail's MAC to its epair in the bridge's
    forwarding table at every start (docs/isolation.md "Layer 2 on the shared bridge");
    "" when e0a_<jail> does not fit an interface name and Bastille numbers the epair
    (docs/freebsd.md#interface-name-length)."""
    member = f"e0a_{jail.name}"
    return prestart_pin(jail.bridge, member, jail.mac) if len(member) <= 15 else ""


def _jail_setup(jail: JailSpec, marker: Marker, create: bool) -> list[Action]:
    unit = f"jail {jail.name}"
    n = jail.name
    steps: list[Action] = []
    if create:
        steps.append(_cmd("jails", f"create jail {n}", ["bastille", *jail.create_args], unit=unit, name=n))
    conf = f"/usr/local/bastille/jails/{n}/jail.conf"
    steps.append(
        Action(
            "jails",
            f"set the MAC of jail {n}: ifconfig e0b_{n} ether {jail.mac} in {conf}",
            unit=unit,
            kind="edit",
            # the jail side of the epair (docs/freebsd.md#bastille-vnet-jails)
            edit=Edit(conf, r"(ifconfig e0b_\S+ ether )[0-9a-fA-F:]+", r"\g<1>" + jail.mac),
            name=n,
        )
    )
    pin = _pin_line(jail)
    if pin:
        member = re.escape(f"e0a_{n}")
        steps.append(
            Action(
                "jails",
                f"pin the MAC of jail {n} to e0a_{n} at every start: exec.prestart in {conf}",
                unit=unit,
                kind="edit",
                # after Bastille's `addm` line, replacing a pin an earlier run put there
                edit=Edit(
                    conf,
                    rf'(ifconfig \S+ addm {member}";[^\n]*\n)'
                    rf'(?:[ \t]*exec\.prestart \+= "ifconfig \S+ static {member} \S+";\n)?',
                    r"\g<1>" + pin + "\n",
                ),
                name=n,
            )
        )
    steps.append(
        _cmd(
            "jails",
            f"set the hostname of jail {n}",
            ["bastille", "config", n, "set", "host.hostname", jail.hostname],
            unit=unit,
            name=n,
        )
    )
    if jail.role == "db":  # PostgreSQL needs its own SysV shared memory (docs/freebsd.md#sysv-ipc-in-jails)
        steps.append(
            _cmd(
                "jails",
                f"give jail {n} its own SysV shm",
                ["bastille", "config", n, "set", "sysvshm", "new"],
                unit=unit,
                name=n,
            )
        )
    steps.append(
        _cmd("jails", f"restart jail {n} (MAC, hostname, IPC apply)", ["bastille", "restart", n], unit=unit, name=n)
    )
    steps.append(
        _cmd(
            "jails",
            f"apply the {jail.role} template to jail {n}",
            ["bastille", "template", n, jail.template],
            unit=unit,
            name=n,
            marker=marker,
        )
    )
    return steps


def jail_arp_marker_path(name: str) -> str:
    return f"{JAIL_MARKERS}/{name}.arp"


def _arp_lines(jail: JailSpec) -> str:
    return "".join(start_arp_pin(pair) + "\n" for pair in jail.arp)


def jail_arp_hash(jail: JailSpec) -> str:
    """The ARP marker's content: the jail.conf lines that set the jail's entries."""
    return digest({"arp": _arp_lines(jail)})


def _jail_arp(jail: JailSpec) -> list[Action]:
    """The jail's permanent ARP entries (docs/isolation.md "Layer 2 on the shared bridge"):
    exec.start lines in its jail.conf for every later start, right after Bastille's
    `exec.start = '/bin/sh /etc/rc';` (a later `+=` appends; the `=` line would reset the
    list), replacing the lines an earlier run put there; and `arp -S` in the running jail
    now.  The marker goes last, so an interrupted run does it all again."""
    if not jail.arp:
        return []
    n = jail.name
    unit = f"jail {n} arp"
    conf = f"/usr/local/bastille/jails/{n}/jail.conf"
    lines = _arp_lines(jail)
    marker = Marker(jail_arp_marker_path(n), jail_arp_hash(jail))
    steps = [
        Action(
            "jails",
            f"pin the ARP entries of jail {n} at every start: exec.start in {conf}",
            unit=unit,
            kind="edit",
            edit=Edit(
                conf,
                r"(\n[ \t]*exec\.start[ \t]*=[^\n]*;[ \t]*\n)"
                r'(?:[ \t]*exec\.start \+= "' + re.escape(JAIL_ARP) + r' -S [^"\n]*";\n)*',
                r"\g<1>" + lines,  # start_arp_pin's lines hold no backslash
            ),
            name=n,
        )
    ]
    for i, pair in enumerate(jail.arp):
        address, mac = pair.split(" ")
        # jexec(8) runs the jail's arp in the jail's own network stack; arp(8) with netlink
        # refuses an address on no connected network with exit status 0 (docs/freebsd.md#arp-in-vnet-jails)
        steps.append(
            _cmd(
                "jails",
                f"pin {address} to {mac} in jail {n}'s ARP table",
                ["jexec", n, JAIL_ARP, "-S", address, mac],
                unit=unit,
                name=n,
                fail_stderr="cannot locate",
                marker=marker if i == len(jail.arp) - 1 else None,
            )
        )
    return steps


def jail_actions(
    manifest: Manifest,
    rendered_dir: Path,
    live: Mapping[str, str | None],
    probe: Probe,
    previous: Manifest | None,
    agent: str = "",
    destroy_jails: bool = False,
) -> list[Action]:
    out: list[Action] = []
    wanted = [j for j in manifest.jails if not agent or agent in j.agents]
    for jail in wanted:
        marker = Marker(jail_marker_path(jail.name), jail_spec_hash(jail, rendered_dir))
        recorded = live.get(marker.path)
        if jail.name not in probe.jails:
            out += _jail_setup(jail, marker, create=True)
        elif recorded is None:
            out += _jail_setup(jail, marker, create=False)
        else:
            if recorded != marker.content:
                out.append(
                    Action(
                        "jails",
                        f"jail {jail.name} exists but its rendered spec changed "
                        f"(/usr/local/etc/warden/jails/{jail.name}.conf); Bastille keeps the old settings: "
                        f"change them with `bastille config {jail.name} set …`, or destroy the jail and run again",
                        kind="warn",
                        name=jail.name,
                    )
                )
            if jail.name not in probe.running_jails:
                out.append(_cmd("jails", f"start jail {jail.name}", ["bastille", "start", jail.name], name=jail.name))
        arp = _jail_arp(jail)
        done = arp[-1].marker if arp else None
        if done is not None and live.get(done.path) != done.content:
            out += arp
    if previous is not None and not agent:
        current = {j.name for j in manifest.jails}
        for j in previous.jails:
            if j.name in current or j.name not in probe.jails:
                continue
            if destroy_jails:
                # -a stops a running one, -y answers destroy.sh's prompt (docs/freebsd.md#bastille-jail-lifecycle)
                out.append(
                    _cmd(
                        "jails",
                        f"destroy jail {j.name} of a removed agent",
                        ["bastille", "destroy", "-a", "-y", j.name],
                        name=j.name,
                    )
                )
            elif j.name in probe.running_jails:
                out.append(
                    _cmd(
                        "jails",
                        f"stop jail {j.name} of a removed agent (kept)",
                        ["bastille", "stop", j.name],
                        name=j.name,
                    )
                )
    return out


# -- agents -------------------------------------------------------------------------------------


def local_agents(manifest: Manifest) -> list[str]:
    """Agents whose processes run on this machine (not in a bhyve guest)."""
    guests = {g.agent for g in manifest.guests}
    return [a for a in manifest.agents if a not in guests]


def started_marker_path(agent: str) -> str:
    return f"{STARTED_MARKERS}/{agent}"


def agent_hash(manifest: Manifest, rendered_dir: Path, agent: str) -> str:
    """What a running agent was started with: its rc.d script, run wrapper and .env."""
    parts = {}
    for e in manifest.files:
        if e.agent != agent:
            continue
        if e.path == f"/usr/local/etc/rc.d/{agent}" or e.path.endswith(f"/run-{agent}.sh") or e.secret:
            parts[e.path] = _rendered(rendered_dir, e.path)
    return digest(parts)


def agent_actions(
    manifest: Manifest,
    rendered_dir: Path,
    live: Mapping[str, str | None],
    probe: Probe,
    previous: Manifest | None,
    agent: str = "",
    packages: Sequence[str] = (),
) -> list[Action]:
    out: list[Action] = []
    local = [a for a in local_agents(manifest) if not agent or a == agent]
    for a in local:
        if a not in probe.users:
            out.append(Action("agents", f"create user {a}", kind="user", name=a))
    missing = [p for p in packages if p not in probe.packages]
    if local and missing:
        out.append(
            _cmd(
                "agents",
                "install packages the agents need",
                ["pkg", "install", "-y", *missing],
                env=(("ASSUME_ALWAYS_YES", "yes"),),  # pkg(7) bootstraps pkg itself without asking
            )
        )
    for a in local:
        marker = Marker(started_marker_path(a), agent_hash(manifest, rendered_dir, a))
        unit = f"agent {a}"
        if a not in probe.running_services:
            out.append(_cmd("agents", f"start agent {a}", ["service", a, "start"], marker=marker, unit=unit, name=a))
        elif live.get(marker.path) != marker.content:
            out.append(
                _cmd(
                    "agents",
                    f"restart agent {a} (its script, wrapper or .env differ from what it runs with)",
                    ["service", a, "restart"],
                    marker=marker,
                    unit=unit,
                    name=a,
                )
            )
    if previous is not None and not agent:
        for a in sorted(set(previous.agents) - set(manifest.agents)):
            if a in probe.running_services:
                out.append(_cmd("agents", f"stop removed agent {a}", ["service", a, "onestop"], name=a))
    return out


# -- network ------------------------------------------------------------------------------------


def wanted_addresses(manifest: Manifest) -> list[str]:
    """Gateway addresses (with prefix) rc.conf puts on the bridge."""
    out = []
    for e in manifest.rc_conf:
        if e.op == "set" and (
            e.name == f"ifconfig_{manifest.bridge}" or e.name.startswith(f"ifconfig_{manifest.bridge}_alias")
        ):
            m = re.search(r"inet (\S+)", e.value)
            if m:
                out.append(m.group(1))
    return out


def bridge_ether(manifest: Manifest) -> str:
    """The MAC rc.conf pins on the bridge (`ifconfig_<bridge>_aliases="ether MAC"`), or ""."""
    for e in manifest.rc_conf:
        if e.op == "set" and e.name == f"ifconfig_{manifest.bridge}_aliases" and e.value.startswith("ether "):
            return e.value.split()[1]
    return ""


def network_actions(manifest: Manifest, probe: Probe, previous: Manifest | None = None) -> list[Action]:
    b = manifest.bridge
    out: list[Action] = []
    if b not in probe.interfaces:
        # as rc.d/netif will at boot (docs/freebsd.md#the-warden0-bridge)
        out.append(_cmd("network", f"create the bridge {b}", ["ifconfig", "bridge", "create", "name", b]))
        out.append(_cmd("network", f"bring {b} up", ["ifconfig", b, "up"]))
    # Layer 2 (docs/isolation.md "Layer 2 on the shared bridge"): a permanent ARP entry per jail
    # address, kept at boot by rc.d/static_arp from rc.conf; removed jails are unpinned before
    # their gateway address goes, while arp(8) can still find the address's interface.
    wanted_pins = static_arp_pins((e.op, e.name, e.value) for e in manifest.rc_conf)
    before_pins = static_arp_pins((e.op, e.name, e.value) for e in previous.rc_conf) if previous else {}
    pin, unpin = arp_pin_changes(wanted_pins, before_pins, arp_entries(probe.arp))
    for address in unpin:
        out.append(_cmd("network", f"unpin {address} (a removed jail) from the ARP table", ["arp", "-d", address]))
    # The bridge's MAC, before anything resolves its gateway addresses: jails and guests pin
    # it (docs/isolation.md "Layer 2"); rc.conf's ifconfig_<bridge>_aliases sets it at boot.
    ether = bridge_ether(manifest)
    if ether and probe.bridge_ether != ether:
        out.append(_cmd("network", f"set the MAC of {b}", ["ifconfig", b, "ether", ether]))
    wanted = wanted_addresses(manifest)
    live = set(probe.bridge_addresses)
    for w in wanted:
        if w.split("/")[0] not in live:
            out.append(_cmd("network", f"add gateway {w} to {b}", ["ifconfig", b, "inet", w, "alias"]))
    for ip in sorted(live - {w.split("/")[0] for w in wanted}):
        out.append(_cmd("network", f"remove gateway {ip} from {b}", ["ifconfig", b, "inet", ip, "-alias"]))
    for address, mac in pin:
        # arp(8) with netlink refuses an address on no connected network with exit status 0
        # (docs/freebsd.md#arp-and-the-bridges-forwarding-table)
        out.append(
            _cmd(
                "network",
                f"pin {address} to {mac} in the ARP table",
                ["arp", "-S", address, mac],
                fail_stderr="cannot locate",
            )
        )
    # The bridge's forwarding table: each running jail's MAC on its epair (jail.conf's
    # exec.prestart does it at every start; here for the jails running now).
    members = [(f"e0a_{j.name}", j.mac) for j in manifest.jails if len(f"e0a_{j.name}") <= 15]
    for member, mac in bridge_pin_changes(members, probe.interfaces, bridge_entries(probe.bridge_addr)):
        out.append(_cmd("network", f"pin {mac} to {member} on {b}", ["ifconfig", b, "static", member, mac]))
    if probe.forwarding != "1":  # gateway_enable does it at boot (docs/freebsd.md#nat-and-forwarding)
        out.append(_cmd("network", "turn on IPv4 forwarding", ["sysctl", "net.inet.ip.forwarding=1"]))
    for setting in sysctl_changes(probe.bridge_sysctl, manifest.sysctl):  # docs/isolation.md
        out.append(_cmd("network", f"set {setting.partition('=')[0]}", ["sysctl", setting]))
    return out


# -- PF -----------------------------------------------------------------------------------------


def pf_hash(manifest: Manifest, rendered_dir: Path, pf_conf: str) -> str:
    """The ruleset set a load takes: the anchor, the fallback and pf.conf as the apply writes it."""
    parts = {e.path: _rendered(rendered_dir, e.path) for e in manifest.files if e.path.startswith("/etc/pf.warden")}
    parts["/etc/pf.conf"] = pf_conf
    return digest(parts)


def pf_actions(
    manifest: Manifest, rendered_dir: Path, pf_conf: str, live: Mapping[str, str | None], probe: Probe
) -> list[Action]:
    marker = Marker(PF_MARKER, pf_hash(manifest, rendered_dir, pf_conf))
    if not probe.pf_enabled:
        return [
            Action(
                "pf",
                "start PF with confirm-or-rollback: service pf onestart",
                ("service", "pf", "onestart"),
                kind="pf-load",
                marker=marker,
                name="start",
            )
        ]
    if live.get(PF_MARKER) != marker.content:
        return [
            Action(
                "pf",
                "reload PF with confirm-or-rollback (the ruleset is not the one last confirmed): service pf reload",
                ("service", "pf", "reload"),
                kind="pf-load",
                marker=marker,
                name="reload",
            )
        ]
    return []


# -- limits -------------------------------------------------------------------------------------


def rctl_actions(
    manifest: Manifest, live: Mapping[str, str | None], probe: Probe, previous: Manifest | None
) -> list[Action]:
    """rctl(8) rules: removed when the live kernel has one we managed that is no longer
    wanted (a changed amount is a remove, then an add), added when the kernel lacks it."""
    wanted = list(manifest.rctl_rules)
    wanted_kernel = {kernel_form(r) for r in wanted}
    ours = set(managed_rules(live.get("/etc/rctl.conf") or "")) | set(previous.rctl_rules if previous else [])
    filters = list(dict.fromkeys(r.split("=", 1)[0] for r in sorted(ours) if r not in wanted))
    removed = [
        f for f in filters if any(ln.startswith(f + "=") and kernel_form(ln) not in wanted_kernel for ln in probe.rctl)
    ]
    add = live_additions(wanted, probe.rctl)
    add += [r for r in wanted if r.split("=", 1)[0] in removed and r not in add]
    out = [_cmd("limits", f"remove rctl rule {f}", ["rctl", "-r", f]) for f in removed]
    # kern.racct.enable=1 must be set at boot (docs/freebsd.md#rctl)
    out += [_cmd("limits", f"add rctl rule {r}", ["rctl", "-a", r]) for r in add]
    return out


# -- the host -----------------------------------------------------------------------------------


def host_actions(
    manifest: Manifest,
    rendered_dir: Path,
    live_files: Mapping[str, str | bytes | None],
    probe: Probe,
    *,
    agent: str = "",
    destroy_jails: bool = False,
    packages: Sequence[str] = (),
) -> list[Action]:
    """Every action an apply takes on this host, in the order the roles run them.

    LIVE_FILES: what the facts round read (the edited files, the previous manifest, the
    markers); PROBE: the live state. AGENT restricts to one agent (`-e warden_agent=…`).
    """
    live = {k: _text(v) for k, v in live_files.items()}
    prev_text = live.get(LIVE_MANIFEST_PATH)
    previous = read_record(prev_text, manifest.host)
    pf_conf = edited_results(manifest, live, previous).get("/etc/pf.conf", live.get("/etc/pf.conf") or "")
    return [
        *network_actions(manifest, probe, previous),
        *pf_actions(manifest, rendered_dir, pf_conf, live, probe),
        *jail_actions(manifest, rendered_dir, live, probe, previous, agent, destroy_jails),
        *agent_actions(manifest, rendered_dir, live, probe, previous, agent, packages),
        *rctl_actions(manifest, live, probe, previous),
    ]


def marker_paths(manifest: Manifest) -> list[str]:
    """The markers host_actions reads: the facts round and `invoke plan` read them as files."""
    return [
        *(jail_marker_path(j.name) for j in manifest.jails),
        *(jail_arp_marker_path(j.name) for j in manifest.jails if j.arp),
        *(started_marker_path(a) for a in local_agents(manifest)),
        PF_MARKER,
    ]


def pending(actions: Sequence[Action]) -> list[Action]:
    """The actions that change something (warnings do not)."""
    return [a for a in actions if a.kind != "warn"]


@dataclass
class Listing:
    """Actions as `invoke plan` prints and returns them."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def listing(actions: Sequence[Action]) -> Listing:
    out = Listing()
    for a in actions:
        (out.warnings if a.kind == "warn" else out.lines).append(
            a.describe if a.kind == "warn" else f"{a.concern}: {a.describe}"
        )
    return out
