"""`python -m provision prepare|check|render|souls`: what site.yml runs before it touches a host.

`prepare` is check, render and souls in one process: site.yml's one controller step.
"""

from __future__ import annotations

import sys

from . import cli


def main(argv: list[str]) -> None:
    commands = {"prepare": cli.prepare, "check": cli.check, "render": cli.render, "souls": cli.souls}
    if len(argv) != 1 or argv[0] not in commands:
        sys.exit(f"usage: python -m provision {{{'|'.join(commands)}}}")
    cli.run(commands[argv[0]])


main(sys.argv[1:])
