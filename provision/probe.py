"""The live state of a host that is not a file: interfaces, jails, PF, services, users, VMs.

One POSIX sh snippet (`probe_script`) prints `=== section ===` blocks; `parse_probe` turns
them into `Probe`.  `invoke plan` runs it inside its one-round read (remote.read_script),
and the Ansible facts round runs the same script in its one read, so both sides compute
the same action list from the same facts (provision/actions.py, docs/convergence.md).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from .manifest import LIVE_MANIFEST_PATH, Manifest

# What the previous apply installed in rc.d: those agents are probed too, so that the
# run that removes one knows whether it still runs.  One JSON object per line
# (Manifest.to_json), split on braces as remote.py's read script does.
_PREVIOUS_SERVICES = (
    "tr '{}' '\\n\\n' < " + shlex.quote(LIVE_MANIFEST_PATH) + " 2>/dev/null"
    ' | sed -n \'s|.*"path":[[:space:]]*"/usr/local/etc/rc\\.d/\\([a-z][a-z0-9]*\\)".*|\\1|p\''
)


# The rendered rc.d script's `pidfile` (daemon -P: the supervisor's pid) and `command`, which
# rc.subr matches the pid's process against (provision/render.py, docs/freebsd.md#rcd-scripts).
PIDFILE_DIR = "/var/run"
SUPERVISOR = "/usr/sbin/daemon"


def pidfile(agent: str) -> str:
    return f"{PIDFILE_DIR}/{agent}.pid"


def vm_dir(manifest: Manifest) -> str:
    """vm-bhyve's directory as the rendered rc.conf sets it (docs/freebsd.md#vm-bhyve)."""
    return next((e.value for e in manifest.rc_conf if e.op == "set" and e.name == "vm_dir"), "") or "/vm"


def probe_script(manifest: Manifest) -> str:
    """The sh snippet; every value is one quoted sh word (docs/security.md), though the models validated it.

    Whether an agent runs is decided as rc.subr's `status` decides it (check_pidfile), without
    an rc.subr run per agent: the `services` section lists each agent whose rc.d script is
    executable with the first word of its pidfile (sh builtins only), and one `ps` over all
    those pids follows (`parse_probe` matches them, docs/freebsd.md#rcd-scripts).
    """
    q = shlex.quote
    services = " ".join(q(a) for a in manifest.agents)
    users = " ".join(q(a) for a in manifest.agents)
    return f"""set +f
echo "=== interfaces ==="; ifconfig -l
echo "=== bridge ==="; ifconfig {q(manifest.bridge)} 2>/dev/null || true
echo "=== arp ==="; arp -an 2>/dev/null || true
echo "=== bridgeaddr ==="; ifconfig {q(manifest.bridge)} addr 2>/dev/null || true
echo "=== jails ==="
for c in /usr/local/bastille/jails/*/jail.conf; do [ -f "$c" ] && basename "$(dirname "$c")"; done
echo "=== jls ==="; jls name 2>/dev/null || true
echo "=== pf ==="; pfctl -s info 2>/dev/null || true
echo "=== forwarding ==="; sysctl -n net.inet.ip.forwarding 2>/dev/null || true
echo "=== services ==="
pids=
for s in {services} $({_PREVIOUS_SERVICES}); do
  [ -x "/usr/local/etc/rc.d/$s" ] || continue
  p=
  # rc.subr check_pidfile: `read _pid _junk`; libutil writes the pid without a newline,
  # so read's status says nothing
  [ -f "{PIDFILE_DIR}/$s.pid" ] && {{ read -r p _ < "{PIDFILE_DIR}/$s.pid" || :; }}
  case $p in ''|*[!0-9]*) echo "$s -" ;; *) echo "$s $p"; pids="$pids${{pids:+,}}$p" ;; esac
done
echo "=== ps ==="
[ -z "$pids" ] || ps -ww -o pid= -o jid= -o command= -p "$pids" 2>/dev/null </dev/null || true
echo "=== users ==="
for u in {users}; do id -u "$u" >/dev/null 2>&1 && echo "$u:"; done
echo "=== vminit ==="; [ -d {q(vm_dir(manifest) + "/.templates")} ] && echo yes
echo "=== switches ==="; vm switch list 2>/dev/null </dev/null || true
echo "=== vms ==="; vm list 2>/dev/null </dev/null || true
echo "=== rctl ==="; rctl 2>/dev/null || true
echo "=== packages ==="; pkg query -a %n </dev/null 2>/dev/null || true
echo "=== bridgesysctl ==="
for o in pfil_onlyip pfil_member pfil_bridge pfil_local_phys; do
  v=$(sysctl -n "net.link.bridge.$o" 2>/dev/null) && echo "net.link.bridge.$o: $v"
done
echo "=== end ==="
"""


@dataclass(frozen=True)
class Probe:
    """What the probe found; plain lists and dicts so that Ansible facts carry it as is."""

    interfaces: list[str] = field(default_factory=list)
    bridge_addresses: list[str] = field(default_factory=list)  # inet addresses on the bridge, without prefix
    bridge_ether: str = ""  # the bridge's MAC (`ether` line of `ifconfig BRIDGE`)
    jails: list[str] = field(default_factory=list)  # Bastille jails that exist (have a jail.conf)
    running_jails: list[str] = field(default_factory=list)
    pf_enabled: bool = False
    forwarding: str = ""
    running_services: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    vm_init: bool = False
    switches: list[str] = field(default_factory=list)
    vms: dict[str, str] = field(default_factory=dict)  # name -> "Running" | "Stopped"
    rctl: list[str] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    bridge_sysctl: dict[str, str] = field(default_factory=dict)
    # docs/isolation.md "Layer 2 on the shared bridge": `arp -an` (a guest's uplink pin is on its
    # external interface) and `ifconfig BRIDGE addr`
    arp: str = ""
    bridge_addr: str = ""
    complete: bool = True  # False when the output ended early (the script was cut off)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Probe:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def section_lines(text: str) -> dict[str, list[str]]:
    """The lines of each `=== name ===` block, by name (doctor.py reads the same framing)."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        m = re.match(r"^=== (\S+) ===$", line)
        if m:
            current = m.group(1)
            out[current] = []
        elif current:
            out[current].append(line)
    return out


def _is_procname(arg0: str, procname: str = SUPERVISOR) -> bool:
    """rc.subr _find_processes for a daemon without an interpreter: the first word of the
    process's command is PROCNAME, its basename, `basename:`, `(basename)` or `[basename]`."""
    base = procname.rsplit("/", 1)[-1]
    return arg0 in (procname, base, f"{base}:", f"({base})", f"[{base}]")


def running_services(services: list[str], ps: list[str]) -> list[str]:
    """The agents whose pidfile names a live process that rc.subr's check_pidfile accepts: its
    pid is in `ps -o pid= -o jid= -o command=`, outside any jail (jid 0: the rendered script
    sets no service jail), running SUPERVISOR. A pidfile whose process is gone (stale) or
    was reused by another program reads as not running, as `service NAME status` would say."""
    live: dict[str, str] = {}
    for ln in ps:
        words = ln.split()
        if len(words) >= 3 and words[1] == "0":
            live[words[0]] = words[2]
    out = []
    for ln in services:
        name, _, pid = ln.partition(" ")
        if pid.isdigit() and _is_procname(live.get(pid, "")):
            out.append(name)
    return out


def parse_probe(text: str) -> Probe:
    """The probe's sections as facts."""
    s = section_lines(text)
    body = {name: "\n".join(lines).strip() for name, lines in s.items()}
    inet = [m.group(1) for ln in s.get("bridge", []) if (m := re.match(r"^\s*inet (\S+) netmask", ln))]
    return Probe(
        interfaces=" ".join(s.get("interfaces", [])).split(),
        bridge_addresses=inet,
        bridge_ether=next((m.group(1) for ln in s.get("bridge", []) if (m := re.match(r"^\s*ether (\S+)$", ln))), ""),
        jails=[ln.strip() for ln in s.get("jails", []) if ln.strip()],
        running_jails=[ln.strip() for ln in s.get("jls", []) if ln.strip()],
        pf_enabled="Status: Enabled" in body.get("pf", ""),
        forwarding=body.get("forwarding", ""),
        running_services=running_services(s.get("services", []), s.get("ps", [])),
        users=[ln.split(":")[0] for ln in s.get("users", []) if ln.strip()],
        vm_init=body.get("vminit", "") == "yes",
        switches=[ln.split()[0] for ln in s.get("switches", [])[1:] if ln.split()],
        # vm list's STATE column reads "Running (PID)" or "Stopped"
        vms={ln.split()[0]: "Running" if "Running" in ln else "Stopped" for ln in s.get("vms", [])[1:] if ln.split()},
        rctl=[ln.strip() for ln in s.get("rctl", []) if ln.strip()],
        packages=[ln.strip() for ln in s.get("packages", []) if ln.strip()],
        bridge_sysctl=dict(ln.split(": ", 1) for ln in s.get("bridgesysctl", []) if ": " in ln),
        arp=body.get("arp", ""),
        bridge_addr=body.get("bridgeaddr", ""),
        complete="end" in s,
    )
