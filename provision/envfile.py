"""Agent `.env` files: read as python-dotenv reads them, rewritten without losing a byte
the user wrote.

The `.env` belongs to the agent's application as much as to us (README.md#the-agent-env): comments, key
order, `export` prefixes, quoting and unknown keys survive every rewrite.  Only the
lines of keys we change are re-emitted; every other line is written back verbatim.
Values are taken literally (no `${VAR}` interpolation) so that reading a file never
depends on the environment of whoever runs the tool.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dotenv.parser import parse_stream

BOM = "\ufeff"
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_./:,@%+=-]*")  # fullmatch: `$` would let "x\n" through


class EnvFileError(ValueError):
    """A line python-dotenv cannot parse; carries file:line for the user."""

    def __init__(self, path: Path, line: int, text: str) -> None:
        self.path = path
        self.line = line
        self.text = text
        super().__init__(
            f"{path}:{line}: cannot parse {text.strip()!r}: expected KEY=value "
            "(fix: quote the value, e.g. KEY='value with spaces', or comment the line out with #)"
        )


@dataclass
class _Line:
    key: str | None
    value: str | None
    text: str
    lineno: int


@dataclass
class EnvFile:
    """An .env file as a sequence of lines, some of which bind keys."""

    path: Path
    lines: list[_Line] = field(default_factory=list)
    bom: bool = False
    newline: str = "\n"

    # -- reading ---------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, path: Path) -> EnvFile:
        bom = text.startswith(BOM)
        if bom:
            text = text[1:]
        newline = "\r\n" if "\r\n" in text else "\n"
        env = cls(path=path, bom=bom, newline=newline)
        fast = _parse_simple(text)
        if fast is not None:
            env.lines = fast
            return env
        consumed = 0  # newlines before this binding: python-dotenv's own count drifts on CRLF
        for binding in parse_stream(io.StringIO(text)):
            original = binding.original.string
            body = original.lstrip("\r\n")
            lineno = 1 + consumed + original[: len(original) - len(body)].count("\n")
            consumed += original.count("\n")
            if binding.error:
                raise EnvFileError(path, lineno, body)
            env.lines.append(_Line(binding.key, binding.value, original, lineno))
        return env

    @classmethod
    def load(cls, path: Path) -> EnvFile:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise EnvFileError(path, line, "<bytes that are not UTF-8>") from None
        if "\x00" in text:
            line = text[: text.index("\x00")].count("\n") + 1
            raise EnvFileError(path, line, "<NUL byte>")
        return cls.parse(text, path)

    @classmethod
    def new(cls, path: Path, header: str, items: list[tuple[str, str]]) -> EnvFile:
        """A fresh file: a comment header, then KEY=value lines in the given order."""
        env = cls(path=path)
        env.lines.append(_Line(None, None, f"# {header}\n", 1))
        for n, (key, value) in enumerate(items, start=2):
            env.lines.append(_Line(key, value, f"{key}={quote(value)}\n", n))
        return env

    # -- querying --------------------------------------------------------------
    def values(self) -> dict[str, str]:
        """Key → value; the last assignment wins, as in python-dotenv and sh."""
        out: dict[str, str] = {}
        for line in self.lines:
            if line.key is not None:
                out[line.key] = line.value if line.value is not None else ""
        return out

    def line_numbers(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.lines:
            if line.key is not None:
                out[line.key] = line.lineno
        return out

    # -- editing ---------------------------------------------------------------
    def set(self, key: str, value: str) -> bool:
        """Set KEY to VALUE in place (last occurrence) or append it; True if text changed."""
        new_text = f"{key}={quote(value)}{self.newline}"
        for line in reversed(self.lines):
            if line.key == key:
                if line.value == value:
                    return False
                keep_export = line.text.lstrip("\r\n").startswith("export ")
                lead = line.text[: len(line.text) - len(line.text.lstrip("\r\n"))]
                line.text = lead + ("export " if keep_export else "") + new_text
                line.value = value
                return True
        if self.lines and not self.lines[-1].text.endswith("\n"):
            self.lines[-1].text += self.newline
        self.lines.append(_Line(key, value, new_text, 0))
        return True

    def render(self) -> str:
        return (BOM if self.bom else "") + "".join(line.text for line in self.lines)

    def write(self, mode: int = 0o600) -> None:
        atomic_write(self.path, self.render(), mode)


_SIMPLE_LINE = re.compile(
    r"(?:(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?:'(?P<sq>[^'\\\n\r]*)'|(?P<bare>[A-Za-z0-9_./:,@%+=-]*))|#[^\r\n]*|)"
    r"(?:\r?\n|\Z)"
)


def _parse_simple(text: str) -> list[_Line] | None:
    """The files add-agent writes, read in a tenth of the time of the general parser.

    Only lines that python-dotenv reads without any interpretation qualify (bare values of
    safe characters, single-quoted values without backslashes, comments, blank lines);
    any other line sends the whole file to python-dotenv.  The fuzz tests hold both paths
    to python-dotenv's results.
    """
    lines: list[_Line] = []
    pos, lineno, end = 0, 1, len(text)
    while pos < end:
        m = _SIMPLE_LINE.match(text, pos)
        if m is None or m.end() == pos:
            return None
        chunk = m.group(0)
        key = m.group("key")
        value = m.group("sq") if m.group("sq") is not None else m.group("bare")
        lines.append(_Line(key, value, chunk, lineno))
        pos = m.end()
        lineno += 1
    return lines


def quote(value: str) -> str:
    """Quote so that python-dotenv AND sh(1) read back exactly VALUE.

    Single quotes are literal in both; a value containing a single quote falls back to
    double quotes with the characters both treat specially escaped.
    """
    if _SAFE_VALUE.fullmatch(value):
        return value
    if "'" not in value and "\n" not in value and "\\" not in value:
        return f"'{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write via a temporary file in the same directory and rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
