"""Hooking warden's anchor into the operator's /etc/pf.conf, once, in section order.

pfctl enforces options → ethernet → normalization → queueing → translation → filtering
(docs/freebsd.md#pf-statement-order).  A single include mixing nat and pass lines only fits at
one exact boundary, so instead we add three lines the operator can read (docs/freebsd.md#pf-anchors):

    nat-anchor "warden"                                   # before the first translation rule
    anchor "warden"                                       # before the first filter rule
    load anchor "warden" from "/etc/pf.warden.conf"       # right after it

The anchor file is parsed on its own and carries both its nat and its pass rules.  Both
hooks go FIRST in their sections: translation is first-match, and every filter rule in
the anchor that decides agent traffic is `quick`, so the operator's later rules (a
`block in all`, a `pass out quick`) can neither open nor close what the anchor decides,
while rules the operator writes above our lines still win (docs/isolation.md).  A file
hooked by an older version (filter hook after the last rule) is re-hooked in place.
The operator's lines are never changed; ours carry a `# warden-provision` marker so
they can be removed exactly.

Standard library only.
"""

from __future__ import annotations

import re

MARKER = "# warden-provision"

_TRANSLATION = {"nat", "rdr", "binat", "nat-anchor", "rdr-anchor", "binat-anchor", "no"}
_FILTER = {"pass", "block", "anchor", "antispoof", "match", "load"}
_ORDER = ["options", "ethernet", "normalization", "queueing", "translation", "filtering"]
_ORDER_ERROR = "Rules must be in order: options, ethernet, normalization, queueing, translation, filtering"


def _statements(text: str) -> list[tuple[int, int, str]]:
    """(first line index, last line index, joined text) of each statement, `\\`-continuations joined."""
    lines = text.splitlines()
    out: list[tuple[int, int, str]] = []
    i = 0
    while i < len(lines):
        start, joined = i, lines[i]
        while joined.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            joined = joined.rstrip()[:-1] + " " + lines[i]
        body = joined.split("#", 1)[0].strip() if not joined.lstrip().startswith("#") else ""
        if body:
            out.append((start, i, body))
        i += 1
    return out


def classify(statement: str) -> str | None:
    """The pf.conf(5) section of STATEMENT, or None for macros, tables and includes (allowed anywhere)."""
    words = statement.split()
    first = words[0]
    if re.match(r"^[A-Za-z][A-Za-z0-9_]*\s*=", statement) or first in ("table", "include"):
        return None
    if first == "set":
        return "options"
    if first == "ether":
        return "ethernet"
    if first == "scrub":
        return "normalization"
    if first in ("altq", "queue"):
        return "queueing"
    if first in _TRANSLATION:
        return "translation"
    if first in _FILTER:
        return "filtering"
    return None


def section_order_errors(text: str) -> list[tuple[int, str]]:
    """(1-based line, pfctl's message) for each statement out of pfctl's order (docs/freebsd.md#pf-statement-order)."""
    errors: list[tuple[int, str]] = []
    reached = 0
    for start, _, body in _statements(text):
        section = classify(body)
        if section is None:
            continue
        rank = _ORDER.index(section)
        if rank < reached:
            errors.append((start + 1, _ORDER_ERROR))
        reached = max(reached, rank)
    return errors


def hook_lines(anchor: str, anchor_file: str) -> tuple[str, str, str]:
    return (
        f'nat-anchor "{anchor}"  {MARKER}',
        f'anchor "{anchor}"  {MARKER}',
        f'load anchor "{anchor}" from "{anchor_file}"  {MARKER}',
    )


def is_hooked(text: str, anchor: str = "warden") -> bool:
    bodies = [body for _, _, body in _statements(text)]
    return (
        f'nat-anchor "{anchor}"' in bodies
        and f'anchor "{anchor}"' in bodies
        and any(b.startswith(f'load anchor "{anchor}" from') for b in bodies)
    )


def _well_placed(text: str, anchor: str) -> bool:
    """Our nat-anchor opens the translation section and our anchor the filter section."""
    stmts = [(b, classify(b)) for _, _, b in _statements(text)]
    first_translation = next((b for b, c in stmts if c == "translation"), None)
    first_filter = next((b for b, c in stmts if c == "filtering"), None)
    return first_translation == f'nat-anchor "{anchor}"' and first_filter == f'anchor "{anchor}"'


def hook(text: str, anchor: str = "warden", anchor_file: str = "/etc/pf.warden.conf") -> str:
    """TEXT with the three hook lines first in their sections; unchanged if already so."""
    if is_hooked(text, anchor):
        if _well_placed(text, anchor) or MARKER not in text:
            return text  # hooked by hand: the operator's choice
        text = unhook(text)
    nat_line, anchor_line, load_line = hook_lines(anchor, anchor_file)
    lines = text.splitlines()
    stmts = [(s, e, classify(b)) for s, e, b in _statements(text)]
    first_translation = min((s for s, e, c in stmts if c == "translation"), default=None)
    first_filter = min((s for s, e, c in stmts if c == "filtering"), default=None)
    last_any = max((e for s, e, c in stmts if c is not None), default=len(lines) - 1)

    if first_translation is not None:
        nat_at = first_translation
    elif first_filter is not None:
        nat_at = first_filter
    else:
        nat_at = last_any + 1
    filter_at = first_filter if first_filter is not None else len(lines)
    inserts = {nat_at: [nat_line]}
    inserts.setdefault(filter_at, []).extend([anchor_line, load_line])
    out: list[str] = []
    for i in range(len(lines) + 1):
        out.extend(inserts.get(i, []))
        if i < len(lines):
            out.append(lines[i])
    return "\n".join(out) + "\n"


def unhook(text: str) -> str:
    """TEXT without the lines hook() added (found by their marker)."""
    kept = [line for line in text.splitlines(keepends=True) if not line.rstrip().endswith(MARKER)]
    return "".join(kept)
