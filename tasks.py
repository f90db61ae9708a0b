"""invoke tasks: each one parses its options and makes one call into `provision`.

Run `invoke --list` for the list, `invoke --help <task>` for a task's options.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke.context import Context
from invoke.exceptions import ParseError
from invoke.parser.parser import ParseMachine
from invoke.tasks import Task
from invoke.tasks import task as _task

from provision import cli

# invoke finds tasks.py from any subdirectory of the clone; the registry, inventory and
# build/ are the clone's, as they were before `provision` learned to run from anywhere
# (provision/settings.py: without PROVISION_ROOT the tree is the current directory).
os.environ.setdefault("PROVISION_ROOT", str(Path(__file__).resolve().parent))

_handle = ParseMachine.handle


def _help_before_positionals(self: Any, token: str) -> None:
    """`invoke add-agent --help` shows the task's help instead of naming an agent `--help`.

    invoke's parser fills a task's positional argument before it looks at the core
    `-h`/`--help` flag; here the flag wins, as in every other command-line tool.
    """
    context, initial = self.context, self.initial
    if (
        token in ("-h", "--help")
        and context is not None
        and context.missing_positional_args
        and not self.waiting_for_flag_value
        and initial is not None
        and token in initial.flags
    ):
        initial.flags[token].value = context.name
        for arg in context.missing_positional_args:
            arg.value = ""  # satisfied so parsing ends; help is printed before any task runs
        return
    try:
        _handle(self, token)
    except ParseError as exc:
        # "No idea what 'add-agnet' is!" names the task it was probably meant to be
        close = difflib.get_close_matches(token, list(self.contexts), n=1) if not token.startswith("-") else []
        if not close or "No idea what" not in str(exc):
            raise
        raise ParseError(f"{exc} Did you mean {close[0]!r}?", exc.context) from None


ParseMachine.handle = _help_before_positionals  # type: ignore[method-assign]


def task(**kwargs: Any) -> Callable[[Callable[..., None]], Task[Any]]:
    """invoke's @task without automatic one-letter flags: `-h` is help on every task.

    invoke would make `-h` mean `--host`, `-p` `--placement`, `-y` `--system-locale`; the
    README documents long options only.
    """
    made: Callable[[Callable[..., None]], Task[Any]] = _task(auto_shortflags=False, **kwargs)
    return made


@task(iterable=["set"], help=cli.OPTION_HELP["add-agent"])
def add_agent(
    c: Context,
    name: str,
    subnet: str | None = None,
    host: str | None = None,
    placement: str | None = None,
    locale: str | None = None,
    system_locale: str | None = None,
    soul_repo: str | None = None,
    soul_ref: str | None = None,
    jails: str | None = None,
    share_llm: str | None = None,
    port: int | None = None,
    set: list[str] | None = None,
) -> None:
    """Write agents/<name>/.env with every derived value; refuse collisions."""
    cli.run(
        cli.add_agent,
        name,
        subnet=subnet,
        host=host,
        placement=placement,
        share_llm=share_llm,
        locale=locale,
        system_locale=system_locale,
        soul_repo=soul_repo,
        soul_ref=soul_ref,
        jails=jails,
        port=port,
        set_pairs=set or [],
    )


@task(help=cli.OPTION_HELP["set-agent"])
def set_agent(
    c: Context,
    name: str,
    subnet: str | None = None,
    host: str | None = None,
    placement: str | None = None,
    port: int | None = None,
    jails: str | None = None,
    rename: str | None = None,
) -> None:
    """Change an agent's subnet, host, placement, port or jails; every derived value follows."""
    cli.run(cli.set_agent, name, subnet=subnet, host=host, placement=placement, port=port, jails=jails, rename=rename)


@task(help=cli.OPTION_HELP["remove-agent"])
def remove_agent(c: Context, name: str, yes: bool = False, dry_run: bool = False, force: bool = False) -> None:
    """Delete agents/<name>/ after saying what goes; the next apply removes it from its host."""
    cli.run(cli.remove_agent, name, yes=yes, dry_run=dry_run, force=force)


@task(name="list", help=cli.OPTION_HELP["list"])
def list_(c: Context, json: bool = False) -> None:
    """Table of agents: host, placement, subnet, gateway, port, jails."""
    cli.run(cli.list_agents, as_json=json)


@task(help=cli.OPTION_HELP["check"])
def check(c: Context, json: bool = False) -> None:
    """Validate every agent and the fleet; list every problem with file:line and the fix."""
    cli.run(cli.check, as_json=json)


@task()
def demo(c: Context) -> None:
    """The built-in example: add three agents to build/demo/agents, check, list, render, plan."""
    cli.run(cli.demo)


@task(help=cli.OPTION_HELP["graph"])
def graph(c: Context, output: str | None = None, png: bool = False) -> None:
    """Draw the fleet: hosts, warden0 bridges, agent /24s, jails, bhyve VMs, shared jails once."""
    cli.run(cli.graph, output=output, png=png)


@task(help=cli.OPTION_HELP["render"])
def render(c: Context, host: str | None = None) -> None:
    """Check, then render every artifact into build/<host>/, a tree mirroring the host."""
    cli.run(cli.render, host=host)


@task(help=cli.OPTION_HELP["plan"])
def plan(c: Context, host: str | None = None, stat: bool = False, json: bool = False) -> None:
    """Dry run: unified diff of every file an apply would change. Exit 0 none, 2 pending, 1 error."""
    cli.run(cli.plan, host=host, stat=stat, as_json=json)


@task(help=cli.OPTION_HELP["soul-check"])
def soul_check(c: Context, name: str) -> None:
    """Fetch SOUL_REPO at SOUL_REF and validate it: core files, manifest schema, no secrets/logs/locks/state."""
    cli.run(cli.soul_check, name)


@task(help=cli.OPTION_HELP["soul-pin"])
def soul_pin(c: Context, name: str) -> None:
    """Resolve SOUL_REF to its full commit hash and write it into the agent's .env."""
    cli.run(cli.soul_pin, name)


@task(help=cli.OPTION_HELP["soul-init"])
def soul_init(c: Context, name: str, dest: str | None = None, author: str = "warden-provision") -> None:
    """Scaffold a valid soul repo from the agent's .env and point SOUL_REPO/SOUL_REF at it."""
    cli.run(cli.soul_init, name, dest=dest, author=author)


@task(help=cli.OPTION_HELP["doctor"])
def doctor(c: Context, host: str | None = None, json: bool = False) -> None:
    """Read-only preflight: FreeBSD version, python, Bastille, VIMAGE, devfs, bridge, PF, racct, vm-bhyve, disk."""
    cli.run(cli.doctor, host=host, as_json=json)


@task(help=cli.OPTION_HELP["reach"])
def reach(c: Context, host: str, pf_conf: str | None = None) -> None:
    """Who can reach whom on a host: agents' processes, jails, guests, sshd, API ports, LAN, internet."""
    cli.run(cli.reach, host=host, pf_conf=pf_conf)


@task(help=cli.OPTION_HELP["status"])
def status(c: Context, host: str | None = None, agent: str | None = None, json: bool = False) -> None:
    """Per agent: service, API port, jails and their IPs, gateway alias, PF rules. Non-zero when anything is down."""
    cli.run(cli.status, host=host, agent=agent, as_json=json)
