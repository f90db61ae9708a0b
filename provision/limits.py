"""Per-agent resource limits as rctl(8) rules, kept in a managed block of /etc/rctl.conf.

docs/freebsd.md#rctl: rules are `subject:subject-id:resource:action=amount`; `/etc/rctl.conf`
holds the same syntax and is loaded at boot by rc.d/rctl; rules for a jail may be added
before the jail exists.  The operator's own rules in rctl.conf stay untouched: we own
only the lines between our BEGIN/END markers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from .models import Agent

BEGIN = "# BEGIN warden-provision: managed block, edits between these lines are replaced"
END = "# END warden-provision"


def agent_rules(agent: Agent) -> list[str]:
    """The rctl rules for one agent: its user, and each jail in its own /24.

    A shared LLM jail living in another agent's /24 gets the owner's limits only, so
    two agents never write two different rules for one jail.
    """
    rules: list[str] = []
    user = f"user:{agent.user}"
    if agent.memory_limit:
        rules.append(f"{user}:memoryuse:deny={agent.memory_limit}")
    if agent.maxproc:
        rules.append(f"{user}:maxproc:deny={agent.maxproc}")
    if agent.pcpu:
        rules.append(f"{user}:pcpu:deny={agent.pcpu}")
    if agent.openfiles:
        rules.append(f"{user}:openfiles:deny={agent.openfiles}")
    for jail in agent.jails:
        if jail.ip not in agent.subnet:
            continue
        subject = f"jail:{jail.name}"  # docs/freebsd.md#rctl: the jail subject id is the jail NAME
        if agent.jail_memory_limit:
            rules.append(f"{subject}:memoryuse:deny={agent.jail_memory_limit}")
        if agent.jail_maxproc:
            rules.append(f"{subject}:maxproc:deny={agent.jail_maxproc}")
        if agent.jail_pcpu:
            rules.append(f"{subject}:pcpu:deny={agent.jail_pcpu}")
    return rules


def host_rules(agents: Iterable[Agent]) -> list[str]:
    return [rule for a in sorted(agents, key=lambda a: a.name) for rule in agent_rules(a)]


def managed_rules(text: str) -> list[str]:
    """The rules currently inside our block of an rctl.conf (empty if there is none)."""
    lines = text.splitlines()
    if BEGIN not in lines:
        return []
    start = lines.index(BEGIN) + 1
    end = lines.index(END, start) if END in lines[start:] else len(lines)
    return [ln.strip() for ln in lines[start:end] if ln.strip() and not ln.lstrip().startswith("#")]


def rctl_conf_result(text: str, rules: Sequence[str]) -> str:
    """TEXT with our block replaced by RULES (removed when there are none); the rest verbatim."""
    lines = text.splitlines(keepends=True)
    stripped = [ln.rstrip("\r\n") for ln in lines]
    if BEGIN in stripped:
        start = stripped.index(BEGIN)
        end = stripped.index(END, start) + 1 if END in stripped[start:] else len(lines)
        before, after = lines[:start], lines[end:]
    else:
        before, after = lines, []
        if before and not before[-1].endswith("\n"):
            before[-1] += "\n"
    block = [f"{BEGIN}\n", *(f"{rule}\n" for rule in rules), f"{END}\n"] if rules else []
    return "".join(before + block + after)


_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def kernel_form(rule: str) -> str:
    """RULE as `rctl` lists it: the amount expanded to a raw integer (rctl(8) expands
    suffixes with expand_number(3), powers of 1024, either case) and `/per` dropped when
    it names the rule's own subject (kern_rctl.c rctl_rule_to_sbuf): docs/freebsd.md#rctl."""
    head, sep, tail = rule.partition("=")
    if not sep:
        return rule
    amount, _, per = tail.partition("/")
    m = re.fullmatch(r"([0-9]+)([kmgtpeKMGTPE]?)", amount)
    if not m:
        return rule
    value = int(m.group(1)) * 1024 ** _POWERS.get(m.group(2).lower(), 0)
    subject = head.split(":", 1)[0]
    return f"{head}={value}" + (f"/{per}" if per and per != subject else "")


def live_additions(wanted: Sequence[str], listed: Sequence[str]) -> list[str]:
    """The WANTED rules that the live `rctl` listing LISTED lacks, compared as the kernel keeps them."""
    live = {kernel_form(r) for r in listed}
    return [r for r in wanted if kernel_form(r) not in live]


def rctl_changes(old_rules: Sequence[str], new_rules: Sequence[str]) -> tuple[list[str], list[str]]:
    """(rules for `rctl -a`, filters for `rctl -r`) that take the live host from OLD to NEW.

    `rctl -r` takes a filter (docs/freebsd.md#rctl shows `rctl -r jail:atlas`); the filter is the
    rule without its `=amount`, so a changed amount is a remove followed by an add.
    """
    old, new = set(old_rules), set(new_rules)
    added = [r for r in new_rules if r not in old]
    kept_filters = {r.split("=", 1)[0] for r in new_rules if r in old}
    removed = [r.split("=", 1)[0] for r in old_rules if r not in new]
    return added, [f for f in dict.fromkeys(removed) if f not in kept_filters]
