"""rc.conf edited the way sysrc(8) edits it, as pure functions on text.

sysrc replaces the LAST assignment of a variable in the file that holds it, appends to
the file otherwise, and writes `name="value"` (docs/freebsd.md#sysrc).  Every other line of
the operator's file stays byte-for-byte as it was; `plan` diffs the result and the
Ansible role writes the same result, so both agree on every line.

This module uses the standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # docs/freebsd.md#service-and-variable-names: shell identifiers only
_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_UNSAFE = re.compile(r'["$`\\\x00-\x1f\x7f]')


@dataclass(frozen=True)
class Set:
    name: str
    value: str


@dataclass(frozen=True)
class Append:
    """sysrc `name+=item`: add ITEM to a space-separated list if it is not there yet."""

    name: str
    item: str


@dataclass(frozen=True)
class Remove:
    """sysrc `name-=item`: drop ITEM from a space-separated list."""

    name: str
    item: str


@dataclass(frozen=True)
class Delete:
    """sysrc -x: remove the variable's assignments from the file."""

    name: str


Edit = Set | Append | Remove | Delete


def _unquote(raw: str) -> str:
    """The value sh(1) assigns for the right-hand side RAW (quotes, escapes, comments)."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c in " \t":
            break  # end of the word; anything after is a comment or another command
        if c == "#" and not out:
            break
        if c == "'":
            j = raw.find("'", i + 1)
            j = n if j < 0 else j
            out.append(raw[i + 1 : j])
            i = j + 1
        elif c == '"':
            i += 1
            while i < n and raw[i] != '"':
                if raw[i] == "\\" and i + 1 < n and raw[i + 1] in '"\\$`\n':
                    i += 1
                out.append(raw[i])
                i += 1
            i += 1
        elif c == "\\" and i + 1 < n:
            out.append(raw[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def read_vars(text: str) -> dict[str, str]:
    """What sh sees after sourcing TEXT, for simple assignments: the last one wins."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _ASSIGN.match(line)
        if m:
            out[m.group(1)] = _unquote(m.group(2))
    return out


def _check(name: str, value: str | None = None) -> None:
    if not NAME_RE.fullmatch(name):
        raise ValueError(
            f"rc.conf variable {name!r} is not a shell identifier (docs/freebsd.md#service-and-variable-names)"
        )
    if value is not None and _UNSAFE.search(value):
        raise ValueError(f"rc.conf value for {name} contains a quote, $, backquote, backslash or newline: {value!r}")


def _lines_assigning(lines: list[str], name: str) -> list[int]:
    probe = name + "="  # a cheap filter first: every line assigning NAME contains it
    return [i for i, line in enumerate(lines) if probe in line and (m := _ASSIGN.match(line)) and m.group(1) == name]


def _set(lines: list[str], name: str, value: str, current: dict[str, str]) -> None:
    """sysrc's write of NAME: its last assignment replaced, or one appended; CURRENT (what
    read_vars gives for LINES) follows, as the new line is now NAME's last assignment."""
    new = f'{name}="{value}"'
    # inside double quotes only a backslash or a quote changes what sh assigns
    current[name] = value if '"' not in value and "\\" not in value else _unquote(new[len(name) + 1 :])
    hits = _lines_assigning(lines, name)
    if hits:
        i = hits[-1]
        ending = lines[i][len(lines[i].rstrip("\r\n")) :]
        lines[i] = new + (ending or "\n")
    else:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(new + "\n")


def apply(text: str, edits: Sequence[Edit]) -> str:
    """TEXT after EDITS, applied in order with sysrc's semantics."""
    lines = text.splitlines(keepends=True)
    # read once and kept up to date by each edit (only the edited name changes), so that
    # hundreds of edits cost one pass over the file, not one each
    current = read_vars(text)
    for edit in edits:
        if isinstance(edit, Set):
            _check(edit.name, edit.value)
            if current.get(edit.name) != edit.value or not _lines_assigning(lines, edit.name):
                _set(lines, edit.name, edit.value, current)
        elif isinstance(edit, Append):
            _check(edit.name, edit.item)
            items = current.get(edit.name, "").split()
            if edit.item not in items:
                _set(lines, edit.name, " ".join([*items, edit.item]), current)
        elif isinstance(edit, Remove):
            _check(edit.name, edit.item)
            items = current.get(edit.name, "").split()
            if edit.item in items:
                _set(lines, edit.name, " ".join(i for i in items if i != edit.item), current)
        else:
            _check(edit.name)
            for i in reversed(_lines_assigning(lines, edit.name)):
                del lines[i]
            current.pop(edit.name, None)
    return "".join(lines)


def edits_needed(text: str, edits: Sequence[Edit]) -> list[Edit]:
    """The EDITS that change something when applied one after the other to TEXT."""
    needed: list[Edit] = []
    for edit in edits:
        after = apply(text, [edit])
        if after != text:
            needed.append(edit)
            text = after
    return needed


def alias_edits(interface: str, cidrs: Sequence[str], existing: dict[str, str]) -> list[Edit]:
    """`ifconfig_<if>_aliasN` for CIDRS numbered 0..n-1, and deletes for stale higher N.

    network.subr has stopped at the first missing or empty aliasN (docs/freebsd.md#interface-aliases), so
    numbering is contiguous from 0 and never leaves an empty variable behind.
    """
    prefix = f"ifconfig_{interface}_alias"
    edits: list[Edit] = [Set(f"{prefix}{n}", f"inet {cidr}") for n, cidr in enumerate(cidrs)]
    stale = sorted(
        (int(k[len(prefix) :]) for k in existing if k.startswith(prefix) and k[len(prefix) :].isdigit()),
    )
    edits += [Delete(f"{prefix}{n}") for n in stale if n >= len(cidrs)]
    return edits
