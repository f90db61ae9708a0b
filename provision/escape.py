"""Escaping filters, one per output format: how a value is written where it lands.

Every `{{ … }}` in `templates/` passes through one of these (tests/test_escape.py parses
the templates and refuses any output that does not).  The models validate each key by
full match first (models.py); these filters are the second wall, so a value that slips
past a validator still cannot become code or a new line of configuration.

Two kinds of filter:

- quoting filters (`sh`, `sh_argv`, `rcconf`, `bastille`, `yaml`, `json`) turn any
  string into a literal of the format, using the format's own quoting;
- refusing filters (`sh_name`, `pf`, `vmconf`, `newsyslog`, `sysctl`) are for formats
  that cannot quote (pf.conf and vm-bhyve configs end a value at `#` even inside
  quotes; newsyslog.conf and sysctl.conf split on blanks): they pass a value that is
  one plain token and raise `UnsafeValue` for anything else.  `invoke check` refuses
  such values earlier, with the file and key (models.py); reaching the raise is a bug.

`comment` is for text inside a `#` comment (headers, notes): it cannot end the comment.
See docs/security.md, "Values and secrets".
"""

from __future__ import annotations

import json as _json
import re
import shlex
from collections.abc import Callable, Iterable
from typing import Any

import yaml as _yaml


class UnsafeValue(ValueError):
    """A value a refusing filter cannot write in its format."""


def _text(value: object) -> str:
    if isinstance(value, bool) or value is None:
        raise UnsafeValue(f"refusing to render {value!r}: not a string or number")
    text = str(value)
    if "\x00" in text:
        raise UnsafeValue("refusing to render a value with a NUL byte")
    return text


def sh(value: object) -> str:
    """One sh(1) word that is exactly VALUE: `'…'` with `'\\''` for quotes (shlex.quote)."""
    return shlex.quote(_text(value))


def sh_argv(values: Iterable[object]) -> str:
    """Words for a string that sh evaluates again (rc.subr `eval`s command_args)."""
    return shlex.join(_text(v) for v in values)


_SH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def sh_name(value: object) -> str:
    """A shell identifier (rc.subr `name`, function and variable names, rcorder words)."""
    text = _text(value)
    if not _SH_NAME.fullmatch(text) or len(text) > 64:
        raise UnsafeValue(f"refusing {text!r} as a shell name: letters, digits and '_' only (rc.subr(8))")
    return text


# rc.conf is sourced by sh; sysrc(8) writes name="value".  Inside double quotes these
# are still special, so a value holding one is refused rather than escaped (rcconf.py
# refuses the same characters for the edits it makes).
_RC_UNSAFE = re.compile(r'["$`\\\x00-\x1f\x7f]')


def rcconf(value: object) -> str:
    """A double-quoted rc.conf value as sysrc(8) writes it, or UnsafeValue."""
    text = _text(value)
    if _RC_UNSAFE.search(text) or not text.isprintable() or len(text) > 4096:
        raise UnsafeValue(f"refusing {text!r} in rc.conf: a quote, $, backquote, backslash or control character")
    return f'"{text}"'


# Bastille's template.sh reads the Bastillefile line by line (joining lines that end in
# a backslash), replaces ${ARG} names with sed, then runs
# `eval "bastille ${cmd} ${jail} ${args}"` as root (usr/local/share/bastille/template.sh).
# A quoted word survives the eval; a line break or `${` would not survive the line
# split and the ARG substitution, so those are refused.
_BASTILLE_UNSAFE = re.compile(r"[$\x00-\x1f\x7f]")


def bastille(value: object) -> str:
    """One argument of a Bastillefile hook line (evaluated by template.sh), or UnsafeValue."""
    text = _text(value)
    if _BASTILLE_UNSAFE.search(text):
        raise UnsafeValue(f"refusing {text!r} in a Bastillefile: '$' or a control character")
    return shlex.quote(text)


def _refuse_unless(pattern: re.Pattern[str], limit: int, where: str) -> Callable[[object], str]:
    """A filter for a format that cannot quote: the value as it is when it is one plain
    token of PATTERN (at most LIMIT characters), else UnsafeValue naming WHERE and why."""

    def accept(value: object) -> str:
        text = _text(value)
        if not pattern.fullmatch(text) or len(text) > limit:
            raise UnsafeValue(f"refusing {text!r} in {where}")
        return text

    return accept


# pf.conf: a value is a bare token (address, network, interface, `any`); a `#` ends the
# line even inside quotes and a trailing backslash continues it (pfctl parse.y lgetc).
pf = _refuse_unless(
    re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*"), 64, "pf.conf: not an address, network or interface name"
)

_PF_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def pf_user(value: object) -> str:
    """A user name for pf's `user` option, always double-quoted: pfctl's lexer turns a bare
    word that spells a keyword (`port`, `state`, `group`, ...) into that keyword, so an agent
    named `port` would not parse as a user; a quoted string is always a STRING token
    (sbin/pfctl/parse.y `lookup`, `yylex`). Names are a login name's characters only."""
    text = _text(value)
    if not _PF_USER.fullmatch(text):
        raise UnsafeValue(f"refusing {text!r} in pf.conf: not a user name")
    return f'"{text}"'


# vm-bhyve: config::load keeps lines starting with a lowercase letter, cuts at the first
# `#` and deletes every `"` (lib/vm-config); values are later used unquoted by sh.
vmconf = _refuse_unless(re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/,+@=-]*"), 255, "a vm-bhyve config: not one plain word")

# newsyslog.conf(5): fields are separated by blanks, `#` starts a comment, and there is
# no quoting (newsyslog.c parse_file uses sob/son).
newsyslog = _refuse_unless(
    re.compile(r"[A-Za-z0-9_./:,+@=*<>-]+"), 1024, "newsyslog.conf: not one field without blanks or '#'"
)

# sysctl.conf: rc.d/sysctl reads `name=value` with `read var comments`, so blanks end
# the value and `#` starts a comment.
sysctl = _refuse_unless(re.compile(r"[A-Za-z0-9_.:/,+@-]+"), 1024, "sysctl.conf: not one word")


def yaml(value: object) -> str:
    """A double-quoted YAML scalar (cloud-init user-data, meta-data), on one line."""
    text = _text(value)
    out = _yaml.safe_dump(text, default_style='"', width=2**31, allow_unicode=False, explicit_end=False)
    return out.rstrip("\n").removesuffix("\n...")


def json(value: object) -> str:
    """A JSON literal (strings quoted and escaped, ASCII only)."""
    return _json.dumps(value if isinstance(value, int | float | list | dict) else _text(value), ensure_ascii=True)


_LINE_BREAK = re.compile(r"\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")
_NOT_IN_COMMENT = re.compile(r"[\\\x00-\x1f\x7f-\x9f]")


def comment(value: object) -> str:
    """Text that stays inside `#` comments in every format we write (sh, pf.conf,
    Bastillefile, vm-bhyve, newsyslog.conf, sysctl.conf, YAML).

    Each line break continues the comment on a new `# ` line; other control characters
    and backslashes (a trailing one joins the next line in pf.conf, pfctl parse.y lgetc,
    and in Bastillefiles, template.sh) show as '?'.
    """
    lines = _LINE_BREAK.split(_text(value))
    return "\n# ".join(_NOT_IN_COMMENT.sub("?", line) for line in lines)


FILTERS: dict[str, Callable[..., str]] = {
    "sh": sh,
    "sh_argv": sh_argv,
    "sh_name": sh_name,
    "rcconf": rcconf,
    "bastille": bastille,
    "pf": pf,
    "pf_user": pf_user,
    "vmconf": vmconf,
    "newsyslog": newsyslog,
    "sysctl": sysctl,
    "yaml": yaml,
    "json": json,
    "comment": comment,
}


def register(env: Any) -> Any:
    """Add FILTERS to a jinja2 Environment; returns it."""
    env.filters.update(FILTERS)
    return env
