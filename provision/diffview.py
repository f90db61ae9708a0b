"""How a plan reads on a terminal: coloured unified diffs per file, a summary table.

Everything printed goes through rich `Text` objects, never markup, so a `[` in a
config file is printed as it is.  Diff lines arrive already masked (plan.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .output import console, print_error, rule
from .plan import FileChange, HostPlan, exit_status

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["console", "host_json", "print_change", "print_error", "print_host", "print_summary"]


def _style(line: str) -> str:
    if line.startswith(("---", "+++")):
        return "bold"
    if line.startswith("@@"):
        return "cyan"
    if line.startswith("+"):
        return "green"
    if line.startswith("-"):
        return "red"
    if line.startswith("\\"):
        return "dim"
    return ""


def _title(change: FileChange) -> str:
    extra = [change.target] if change.target else []
    return "  ".join([f"{change.kind}: {change.path}", *extra, *change.meta])


def print_change(out: Console, change: FileChange) -> None:
    from rich.text import Text

    if not out.is_terminal:
        # As `diff -u` prints it: rich would expand tabs to spaces, and a diff that is
        # piped or saved must keep the file's own bytes (tabs in pf.conf, Makefiles).
        out.file.write(_title(change) + "\n" + "".join(change.diff))
        out.file.flush()
        return
    colour = {"added": "green", "removed": "red"}.get(change.kind, "yellow")
    text = Text(_title(change), style=f"bold {colour}")
    text.append("\n")
    for line in change.diff:
        text.append(line, style=_style(line))
    text.rstrip()
    out.print(text)


def _counts(change: FileChange) -> tuple[int, int]:
    """Lines added and removed in a change's diff (headers not counted)."""
    plus = sum(1 for line in change.diff if line.startswith("+") and not line.startswith("+++"))
    minus = sum(1 for line in change.diff if line.startswith("-") and not line.startswith("---"))
    return plus, minus


def print_host(out: Console, err: Console, hp: HostPlan, stat: bool = False) -> None:
    """One host's diffs (or its one-line error, on stderr); with STAT one line per file."""
    from rich.text import Text

    if hp.error:
        print_error(err, hp.error)
        return
    rule(out, f"host {hp.host}")
    if not hp.changes:
        out.print("no changes")
    for change in hp.changes:
        if stat:
            plus, minus = _counts(change)
            colour = {"added": "green", "removed": "red"}.get(change.kind, "yellow")
            extra = "  ".join([change.target, *change.meta]).strip()
            out.print(
                Text.assemble(
                    (f"{change.kind:8}", colour),
                    f" {change.path}  ",
                    (f"+{plus}", "green"),
                    " ",
                    (f"-{minus}", "red"),
                    f"  {extra}" if extra else "",
                )
            )
        else:
            print_change(out, change)
    print_actions(out, hp)


def print_actions(out: Console, hp: HostPlan) -> None:
    """The commands the apply runs on this host, decided from its live state (provision/actions.py)."""
    from rich.text import Text

    if hp.actions is None:
        return
    out.print(Text("actions", style="bold"))
    if not hp.actions:
        out.print("  no actions")
    for line in hp.actions:
        out.print(Text(f"  {line}"), soft_wrap=True)
    for line in hp.action_warnings:
        out.print(Text(f"  warning: {line}", style="yellow"), soft_wrap=True)


def host_json(hp: HostPlan) -> dict[str, object]:
    """One host's plan for `plan --json` (provision/schemas/warden.plan.v1.json); diffs already masked."""
    return {
        "host": hp.host,
        "error": hp.error,
        "added": hp.count("added"),
        "changed": hp.count("changed"),
        "removed": hp.count("removed"),
        "agents_added": list(hp.agents_added),
        "agents_removed": list(hp.agents_removed),
        "actions": None if hp.actions is None else list(hp.actions),
        "action_warnings": list(hp.action_warnings),
        "changes": [
            {
                "path": c.path,
                "kind": c.kind,
                "target": c.target,
                "meta": list(c.meta),
                "lines_added": _counts(c)[0],
                "lines_removed": _counts(c)[1],
                "diff": "".join(c.diff),
            }
            for c in hp.changes
        ],
    }


def print_summary(out: Console, plans: Sequence[HostPlan], notes: Sequence[str] = ()) -> int:
    """The table of every host, the notes, a one-line verdict; returns the exit status."""
    from rich.table import Table
    from rich.text import Text

    table = Table("host", "added", "changed", "removed", "agents added", "agents removed", title="plan")
    for hp in plans:
        if hp.error:
            table.add_row(hp.host, "error", "-", "-", "-", "-", style="red")
            continue
        table.add_row(
            hp.host,
            str(hp.count("added")),
            str(hp.count("changed")),
            str(hp.count("removed")),
            ", ".join(hp.agents_added) or "-",
            ", ".join(hp.agents_removed) or "-",
        )
    out.print(table)
    for hp in plans:
        for guest in hp.guests_added:
            out.print(Text(f"{hp.host}: {guest}"), soft_wrap=True)
    for note in notes:
        out.print(Text(note, style="dim"))
    status = exit_status(plans)
    failed = [hp.host for hp in plans if hp.error]
    pending = [hp.host for hp in plans if hp.pending]
    if status == 1:
        verdict = Text(f"could not plan {', '.join(failed)} (exit 1)", style="bold red")
    elif status == 2:
        verdict = Text(f"changes pending on {', '.join(pending)} (exit 2)", style="bold yellow")
    else:
        verdict = Text("no changes (exit 0)", style="bold green")
    out.print(verdict)
    return status
