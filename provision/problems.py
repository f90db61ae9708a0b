"""Problems are values: checks return them, the CLI prints them, nothing raises halfway.

A fleet with ten mistakes should show ten lines, each naming the file, the key and the
fix, so the operator can mend them all in one pass (README.md#what-invoke-check-refuses).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True)
class Location:
    """Where a value lives: a file, optionally a line and the key on it."""

    file: Path
    line: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = str(self.file)
        if self.line:
            where += f":{self.line}"
        if self.key:
            where += f" {self.key}"
        return where


@dataclass(frozen=True)
class Problem:
    """One thing wrong, with every place involved and how to fix it."""

    locations: tuple[Location, ...]
    message: str
    fix: str
    severity: Severity = Severity.ERROR
    rule: str = ""

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def __str__(self) -> str:
        where = "; ".join(str(loc) for loc in self.locations)
        return f"{where}: {self.severity.value}: {self.message} (fix: {self.fix})"


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.is_error]
