"""A cloud-config emitter whose output two different YAML parsers read the same.

nuageinit reads a guest's user-data with the parser its release ships
(docs/freebsd.md#nuageinit-yaml): FreeBSD 14's bundled pure-Lua `yaml.lua` or 15's
lyaml (libyaml).  `yaml.lua` is a line tokenizer, not a YAML parser: it reads `false,`
inside a multi-line `{…}` as a string, never unescapes a double-quoted string, drops a
block scalar's final line break and any line of it that starts with `#` or more
indentation.  So the emitter writes one conservative subset, and refuses (UnsafeYaml)
every value outside it rather than write something the two parsers read differently:

- block mappings and block sequences only (never `{…}` or `[…]`), two spaces a level;
- keys: lowercase words, never a word YAML 1.1 or yaml.lua reads as a boolean or null;
- `true` / `false` as plain words at the end of their line;
- a one-line string single-quoted, of printable ASCII without `'` (neither parser
  unescapes anything inside `'…'` then);
- a multi-line string as a `|-` literal block: lines of printable ASCII without quotes,
  `#` or brackets, none empty, none starting or ending with a space or ending with a
  date (yaml.lua's timestamp token runs on into the next line), and no final line break
  (yaml.lua cannot write one; a caller that needs it adds it, as nuageinit's
  `ssh_keys` does);
- a mapping inside a sequence starts with a one-line key (yaml.lua reads `- key: |-`
  and `- key:` followed by a nested block with the wrong indentation).

The collection's module warden.provision.guest_seed runs this file on the host as
plugins/module_utils/cloudyaml.py (a link to this one), so it imports the standard
library only.
"""

from __future__ import annotations

import re
from typing import Union

# What the emitter takes: strings, booleans, and block collections of them.
# (Union, not `|`: module_utils also runs on a host's older Python.)
Node = Union[str, bool, "list[Node]", "dict[str, Node]"]

KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Words either parser resolves to a boolean or null when they stand alone: PyYAML's YAML
# 1.1 resolver and yaml.lua's `word(...)` tokens (enabled/disabled too).
RESERVED = frozenset(["y", "n", "yes", "no", "on", "off", "true", "false", "null", "enabled", "disabled"])
# One-line string: printable ASCII without the single quote.
LINE_RE = re.compile(r"[ -&(-~]*")
# One line of a literal block: printable ASCII but the quotes, `#` and brackets (yaml.lua
# tokenizes block lines too: `#…` is a comment it drops, and a quote or bracket can pair
# with one on a later line into one token), neither starting nor ending with a space.
_BLOCK_CHAR = r"!$-&(-Z\\^-z|~"
BLOCK_LINE_RE = re.compile(rf"[{_BLOCK_CHAR}](?:[ {_BLOCK_CHAR}]*[{_BLOCK_CHAR}])?")
# yaml.lua's timestamp tokens (`dddd-d?d-d?d%s+d?d…`) run past a line that ends with a date
# into the next line's digits.
BLOCK_LINE_END_DATE = re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}$")

INDENT = "  "


class UnsafeYaml(ValueError):
    """A value this emitter cannot write so that both parsers read it as given."""


def _refuse(where: str, why: str) -> UnsafeYaml:
    return UnsafeYaml(f"cannot write {where} as cloud-config YAML: {why}")


def _is_line(value: Node) -> bool:
    return isinstance(value, bool) or (isinstance(value, str) and "\n" not in value)


def _scalar(value: Node, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, str) or not LINE_RE.fullmatch(value):
        raise _refuse(where, "a one-line string must be printable ASCII without a single quote")
    return f"'{value}'"


def _block(value: str, depth: int, where: str) -> list[str]:
    lines = value.split("\n")
    for number, line in enumerate(lines, 1):
        if BLOCK_LINE_END_DATE.search(line):
            raise _refuse(
                where, f"line {number} of a multi-line string ends with a date (yaml.lua joins the next line)"
            )
        if not BLOCK_LINE_RE.fullmatch(line):
            raise _refuse(
                where,
                f"line {number} of a multi-line string is empty, starts or ends with a space, or has "
                "a character other than printable ASCII without quotes, `#` and brackets "
                "(nor may the string end with a line break)",
            )
    return [INDENT * depth + line for line in lines]


def _key(key: object, where: str) -> str:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key) or key.lower() in RESERVED:
        raise _refuse(where, f"key {key!r} is not a lowercase word (letters, digits, _), or reads as a boolean")
    return key


def _ordered(mapping: dict[str, Node]) -> list[tuple[str, Node]]:
    """One-line values first, each group sorted: deterministic, and a sequence entry
    starts with a one-line key."""
    return sorted(mapping.items(), key=lambda kv: (not _is_line(kv[1]), kv[0]))


def _mapping(mapping: dict[str, Node], depth: int, where: str, first: str = "") -> list[str]:
    """MAPPING's lines at DEPTH; FIRST replaces the first line's indentation (`- `)."""
    if not isinstance(mapping, dict) or not mapping:
        raise _refuse(where, "an empty mapping has no block form")
    out: list[str] = []
    for key, value in _ordered(mapping):
        name = _key(key, where)
        here = f"{where}.{name}"
        lead = first if not out and first else INDENT * depth
        if _is_line(value):
            out.append(f"{lead}{name}: {_scalar(value, here)}")
        elif first and not out:
            raise _refuse(here, "a mapping inside a sequence must have a one-line value first")
        elif isinstance(value, str):
            out.append(f"{lead}{name}: |-")
            out += _block(value, depth + 1, here)
        else:
            out.append(f"{lead}{name}:")
            out += _node(value, depth + 1, here)
    return out


def _sequence(items: list[Node], depth: int, where: str) -> list[str]:
    if not items:
        raise _refuse(where, "an empty sequence has no block form")
    out: list[str] = []
    for index, item in enumerate(items):
        here = f"{where}[{index}]"
        dash = INDENT * depth + "- "
        if isinstance(item, dict):
            out += _mapping(item, depth + 1, here, first=dash)
        elif _is_line(item):
            out.append(dash + _scalar(item, here))
        else:
            raise _refuse(here, "a sequence entry is a one-line string, a boolean or a mapping")
    return out


def _node(value: Node, depth: int, where: str) -> list[str]:
    if isinstance(value, dict):
        return _mapping(value, depth, where)
    if isinstance(value, list):
        return _sequence(value, depth, where)
    raise _refuse(where, f"a {type(value).__name__} is not a string, boolean, list or mapping")


def dump_body(mapping: dict[str, Node]) -> str:
    """MAPPING as a top-level block mapping (no header); two bodies with distinct keys
    concatenate into one mapping."""
    return "\n".join(_mapping(mapping, 0, "user-data")) + "\n"


def dump(mapping: dict[str, Node], comments: str = "") -> str:
    """`#cloud-config` (nuageinit checks the first line, nuageinit(7)), COMMENTS as `#`
    lines, then MAPPING."""
    lines = ["#cloud-config"]
    for line in comments.splitlines():
        if not line.isprintable():
            raise _refuse("the header", "a comment line has a control character")
        lines.append(line if line.startswith("#") else f"# {line}")
    return "\n".join(lines) + "\n" + dump_body(mapping)


def ssh_host_key(algorithm: str, private: str, public: str) -> dict[str, Node]:
    """nuageinit's `ssh_keys` entry for one host key pair.  nuageinit writes each value
    and a line break (libexec/nuageinit/nuageinit ssh_keys), so the private key goes in
    without its final line break and the file it writes is ssh-keygen's, byte for byte."""
    if not private.endswith("\n"):
        raise _refuse("ssh_keys", "the private key file does not end with a line break")
    return {"ssh_keys": {f"{algorithm}_private": private[:-1], f"{algorithm}_public": public.strip()}}


def extend(text: str, mapping: dict[str, Node]) -> str:
    """TEXT (a document `dump` wrote) with MAPPING's keys added to its top-level mapping."""
    if not text.startswith("#cloud-config\n") or not text.endswith("\n"):
        raise _refuse("user-data", "the file does not start with #cloud-config or does not end with a line break")
    for key in mapping:
        if any(line.startswith(f"{key}:") for line in text.splitlines()):
            raise _refuse("user-data", f"the file already has a top-level {key!r}")
    return text + dump_body(mapping)
