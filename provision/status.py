"""`invoke status`: is every agent up — service, API port, jails, gateway, PF — per host.

One sh script per host over one SSH connection gathers the facts; the verdicts are
made here from its text.  A row per agent; the exit status is non-zero when anything
is down, so it can gate a deploy or feed a monitor.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from .doctor import sections
from .models import Agent, Host
from .rcconf import read_vars


@dataclass
class AgentStatus:
    agent: str
    service: str
    api: str
    jails: list[str] = field(default_factory=list)
    gateway: str = ""
    pf: str = ""
    ok: bool = True

    @classmethod
    def unknown(cls, agent: str, why: str) -> AgentStatus:
        """A row for an agent whose machine was not read: nothing about it is known."""
        return cls(agent, service=f"unknown ({why})", api="unknown", gateway="unknown", pf="unknown", ok=False)


def status_script(host: Host, agents: list[Agent], guests: list[Agent] | None = None) -> str:
    """AGENTS run on HOST; GUESTS are its bhyve agents, whose VMs `vm list` shows (vm(8))."""
    lines = [
        "section() { printf '=== %s ===\\n' \"$1\"; }",
        f"section bridge; ifconfig {shlex.quote(host.bridge)} 2>/dev/null",
        "section pf; pfctl -a warden -s rules 2>/dev/null; pfctl -a warden -s nat 2>/dev/null",
    ]
    for a in agents:
        q = shlex.quote(a.name)
        lines.append(f"section service.{a.name}; service {q} status 2>&1")
        # daemon(8) keeps the supervisor alive while the wrapper exits and restarts (no tmux,
        # a crashing agent): the agent lives only while its tmux session does.
        sess = shlex.quote(f"={a.tmux_session}")
        lines.append(
            f'section tmux.{a.name}; tmux -S "/tmp/tmux-$(id -u {q} 2>/dev/null)/default" '
            f"has-session -t {sess} >/dev/null 2>&1 && echo alive"
        )
        lines.append(f"section api.{a.name}; nc -z -w 2 127.0.0.1 {a.api_port} >/dev/null 2>&1 && echo open")
        for jail in a.jails:
            j = shlex.quote(jail.name)
            lines.append(
                f"section jail.{jail.name}; jls -j {j} >/dev/null 2>&1 && echo running; "
                f"grep -s '^ifconfig_vnet0=' /usr/local/bastille/jails/{j}/root/etc/rc.conf"
            )
    if guests:
        lines.append("section vms; vm list 2>/dev/null || true")
        # who starts them at boot: rc.d/warden_guests, never vm_list (docs/freebsd.md#boot-order)
        lines.append(
            "section boot; grep -E '^(warden_guests_enable|warden_guests_list|vm_list)=' /etc/rc.conf 2>/dev/null"
        )
    return "\n".join(lines) + "\n"


# A `vm list` row ends with AUTO and STATE (lib/vm-core core::list): "No" or "Yes [n]", then
# "Running (pid)", "Stopped" or "Locked (host)".
_VM_ROW = re.compile(r"^(\S+)\s.*?\s(No|Yes \[\d+\])\s+(Running \(\d+\)|Stopped|Locked \(.*\))\s*$")


def evaluate_guests(guests: list[Agent], text: str) -> list[AgentStatus]:
    """One row per bhyve agent: its VM's state from `vm list`, and who starts it at boot:
    rc.d/warden_guests (warden_guests_list), or vm_list, whose rc.d/vm runs before pf has
    loaded the rules (docs/freebsd.md#boot-order), so a guest there is an error.  vm list's
    AUTO column only reflects vm_list (lib/vm-core core::list)."""
    s = sections(text)
    rows = {m.group(1): m for line in s.get("vms", "").splitlines() if (m := _VM_ROW.match(line))}
    boot = read_vars(s.get("boot", ""))
    # rc.subr checkyesno: yes/true/on/1, any case
    enabled = boot.get("warden_guests_enable", "").lower() in ("yes", "true", "on", "1")
    ours = boot.get("warden_guests_list", "").split() if enabled else []
    early = boot.get("vm_list", "").split()
    out = []
    for a in guests:
        m = rows.get(a.vm_name)
        if m is None:
            out.append(AgentStatus(a.name, service=f"VM {a.vm_name}: not created", api="-", ok=False))
            continue
        if a.vm_name in early:
            auto = "in vm_list: starts before pf, remove it (docs/freebsd.md#boot-order)"
        elif a.vm_name in ours:
            auto = "autostart after pf (warden_guests)"
        else:
            auto = "no autostart"
        out.append(
            AgentStatus(
                a.name,
                service=f"VM {a.vm_name}: {m.group(3)}, {auto}",
                api="-",
                ok=m.group(3).startswith("Running") and a.vm_name not in early,
            )
        )
    return out


def evaluate(host: Host, agents: list[Agent], text: str) -> list[AgentStatus]:
    s = sections(text)
    bridge = s.get("bridge", "")
    pf = s.get("pf", "")
    rows = []
    for a in agents:
        svc = s.get(f"service.{a.name}", "")
        m = re.search(r"is running as pid (\d+)", svc)
        alive = s.get(f"tmux.{a.name}") == "alive"
        row = AgentStatus(
            a.name,
            service=(
                f"running (pid {m.group(1)})"
                if m and alive
                else f"supervisor only (pid {m.group(1)}), no tmux session {a.tmux_session}"
                if m
                else "not running"
            ),
            api=f":{a.api_port} " + ("open" if s.get(f"api.{a.name}") == "open" else "closed"),
        )
        row.ok = bool(m) and alive and s.get(f"api.{a.name}") == "open"
        for jail in a.jails:
            facts = s.get(f"jail.{jail.name}", "")
            running = facts.startswith("running")
            # Bastille writes ifconfig_vnet0 in the jail (docs/freebsd.md#bastille-vnet-jails)
            ip_ok = f"inet {jail.ip}/" in facts
            row.jails.append(
                f"{jail.name} {jail.ip} " + ("up" if running and ip_ok else "wrong IP" if running else "down")
            )
            row.ok = row.ok and running and ip_ok
        gw_ok = f"inet {a.gateway} " in bridge
        row.gateway = f"{a.gateway} " + ("on " + host.bridge if gw_ok else "missing")
        pf_ok = str(a.subnet) in pf
        row.pf = "loaded" if pf_ok else "missing"
        row.ok = row.ok and gw_ok and pf_ok
        rows.append(row)
    return rows
