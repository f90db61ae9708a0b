"""invoke tasks: each one parses its options and makes one call into `provision`.

Run `invoke --list` for the list, `invoke --help <task>` for a task's options.
"""

from __future__ import annotations

from typing import Any

from invoke.context import Context
from invoke.parser.parser import ParseMachine
from invoke.tasks import task as _task

from provision import cli

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
    _handle(self, token)


ParseMachine.handle = _help_before_positionals  # type: ignore[method-assign]


def task(*args: Any, **kwargs: Any) -> Any:
    """invoke's @task without automatic one-letter flags: `-h` is help on every task.

    invoke would make `-h` mean `--host`, `-p` `--placement`, `-y` `--system-locale`; the
    README documents long options only.
    """
    kwargs.setdefault("auto_shortflags", False)
    if args and callable(args[0]) and len(args) == 1 and not kwargs.get("help"):
        return _task(auto_shortflags=False)(args[0])
    return _task(*args, **kwargs)


@task(
    iterable=["set"],
    help={
        "name": "agent name: lowercase letters and digits, starting with a letter (rc.d name, user, jail prefix)",
        "subnet": "first three octets of the agent's /24, e.g. 10.0.1 (default: next free /24 of warden_pool)",
        "host": "inventory host to place the agent on (default: the only host)",
        "placement": "'host' (jails on the host's warden0) or 'bhyve' (own VM)",
        "locale": "BCP 47 tag for DISPLAY_LOCALE and ASSISTANT_LOCALE, e.g. sl-SI",
        "system_locale": "POSIX UTF-8 locale for the service, e.g. sl_SI.UTF-8",
        "soul_repo": "git URL (or path) of the agent's soul repo",
        "soul_ref": "branch, tag or commit of the soul repo",
        "jails": "service jail roles, e.g. 'git cms ollama db' or 'git cms llamacpp'",
        "share_llm": "use this other agent's LLM jail (same name and IP) instead of an own one",
        "port": "CONTROLPLANE_API_PORT (default: 3100, then the next free port on the host)",
        "set": "any other KEY=VALUE for the .env, e.g. --set CMS_JAIL_NAME=atlasweb (repeatable)",
    },
)
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


@task(
    help={
        "name": "the agent to remove",
        "yes": "do not ask for confirmation",
        "dry_run": "say what would be removed and what depends on it; remove nothing",
        "force": "remove even when that loses a soul repo's unpushed work or breaks agents that depend on it",
    }
)
def remove_agent(c: Context, name: str, yes: bool = False, dry_run: bool = False, force: bool = False) -> None:
    """Delete agents/<name>/ after saying what goes; the next apply removes it from its host."""
    cli.run(cli.remove_agent, name, yes=yes, dry_run=dry_run, force=force)


@task(name="list")
def list_(c: Context) -> None:
    """Table of agents: host, placement, subnet, gateway, port, jails."""
    cli.run(cli.list_agents)


@task
def check(c: Context) -> None:
    """Validate every agent and the fleet; list every problem with file:line and the fix."""
    cli.run(cli.check)


@task
def demo(c: Context) -> None:
    """The built-in example: add three agents to build/demo/agents, check, list, render, plan."""
    cli.run(cli.demo)


@task(help={"output": "file to write, without extension (default: build/fleet)", "png": "also write a PNG"})
def graph(c: Context, output: str | None = None, png: bool = False) -> None:
    """Draw the fleet: hosts, warden0 bridges, agent /24s, jails, bhyve VMs, shared jails once."""
    cli.run(cli.graph, output=output, png=png)


@task(help={"host": "render only this host (default: every host and bhyve guest)"})
def render(c: Context, host: str | None = None) -> None:
    """Check, then render every artifact into build/<host>/, a tree mirroring the host."""
    cli.run(cli.render, host=host)


@task(help={"host": "plan only this inventory host (default: every host)"})
def plan(c: Context, host: str | None = None) -> None:
    """Dry run: unified diff of every file an apply would change. Exit 0 none, 2 pending, 1 error."""
    cli.run(cli.plan, host=host)


@task(help={"name": "the agent whose soul repo to validate"})
def soul_check(c: Context, name: str) -> None:
    """Fetch SOUL_REPO at SOUL_REF and validate it: core files, manifest schema, no secrets/logs/locks/state."""
    cli.run(cli.soul_check, name)


@task(help={"name": "the agent whose SOUL_REF to pin"})
def soul_pin(c: Context, name: str) -> None:
    """Resolve SOUL_REF to its full commit hash and write it into the agent's .env."""
    cli.run(cli.soul_pin, name)


@task(help={"name": "the agent", "dest": "repo directory (default agents/<name>/soul)", "author": "provenance"})
def soul_init(c: Context, name: str, dest: str | None = None, author: str = "warden-provision") -> None:
    """Scaffold a valid soul repo from the agent's .env and point SOUL_REPO/SOUL_REF at it."""
    cli.run(cli.soul_init, name, dest=dest, author=author)


@task(help={"host": "check only this host (default: every reachable host)"})
def doctor(c: Context, host: str | None = None) -> None:
    """Read-only preflight: FreeBSD version, python, Bastille, VIMAGE, devfs, bridge, PF, racct, vm-bhyve, disk."""
    cli.run(cli.doctor, host=host)


@task(help={"host": "only this host", "agent": "only this agent"})
def status(c: Context, host: str | None = None, agent: str | None = None) -> None:
    """Per agent: service, API port, jails and their IPs, gateway alias, PF rules. Non-zero when anything is down."""
    cli.run(cli.status, host=host, agent=agent)
