"""How commands print: one console factory, problems and errors in one format.

This is the layer above the pipeline (checks, plan): those return values, and only the
commands (`cli.py`) and the views (`diffview.py`) print them, through here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .masking import mask_url_credentials
from .problems import Problem, Severity

if TYPE_CHECKING:
    from rich.console import Console


# Output that is not a terminal (a pipe, a file, CI) is not cut to 80 columns: rich's
# default width for it.  Tables and trees get room for their longest line; COLUMNS
# still wins when set.
PIPE_WIDTH = 1000


def console(stderr: bool = False) -> Console:
    import os
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not os.environ.get("COLUMNS") and not (hasattr(stream, "isatty") and stream.isatty()):
        width = PIPE_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def rule(out: Console, title: str) -> None:
    """A section rule, at most 80 columns wide even when the console is wider."""
    from rich.rule import Rule

    out.print(Rule(title), width=min(out.width, 80))


def print_problems(problems: Sequence[Problem], out: Console) -> None:
    """Each problem as three lines: severity and where, the message, the fix."""
    from rich.markup import escape

    for p in problems:
        style = "red" if p.severity is Severity.ERROR else "yellow"
        where = "; ".join(str(loc) for loc in p.locations)
        # Credentials in URLs never reach the terminal, whatever put them in a message.
        out.print(f"[{style}]{p.severity.value}[/{style}] {escape(mask_url_credentials(where))}", markup=True)
        out.print(f"    {mask_url_credentials(p.message)}", markup=False)
        out.print(f"    fix: {mask_url_credentials(p.fix)}", markup=False)


def print_error(err: Console, message: str) -> None:
    """One `error: …` line; the message is printed as text, never as markup."""
    from rich.text import Text

    err.print(Text.assemble(("error:", "bold red"), " ", mask_url_credentials(message)))
