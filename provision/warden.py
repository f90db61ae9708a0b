"""`warden`: the console script, the same verbs and options as the invoke tasks.

Click parses; every command makes the one call into `cli` that the matching invoke task
makes, so the two cannot drift apart in behaviour (README.md#the-warden-command).  Click
gives `--help`, "did you mean" for a mistyped verb and shell completion (bash, zsh, fish);
agent and host names are completed from the registry and the inventory.

Paths are relative to the current directory (`agents/`, `inventory/hosts.yml`, `build/`),
unless PROVISION_ROOT or the other PROVISION_* variables say otherwise
(README.md#where-things-live).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click
from click.shell_completion import CompletionItem

from . import cli
from .cli import OPTION_HELP


def _settings() -> Any:
    from .settings import Settings

    return Settings.from_env()


def complete_agents(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Agent names: the registry's directories that hold a .env (no .env is parsed)."""
    try:
        agents_dir = _settings().agents_dir
        names = sorted(p.name for p in agents_dir.iterdir() if (p / ".env").is_file())
    except OSError:
        return []
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def complete_hosts(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Inventory host names, read as the commands read them."""
    from .inventory import load_inventory

    try:
        hosts, _ = load_inventory(_settings().inventory_sources)
    except OSError:
        return []
    return [CompletionItem(h.name) for h in hosts if h.name.startswith(incomplete)]


def _run(fn: Callable[..., int], *args: Any, **kwargs: Any) -> None:
    cli.run(fn, *args, **kwargs)


def _help(command: str, option: str) -> str:
    return OPTION_HELP[command][option]


def main() -> None:
    """The console script: paths relative to the current directory, then Click (also for completion)."""
    os.environ.setdefault("PROVISION_ROOT", os.getcwd())
    warden(prog_name="warden")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="warden-provision", message="%(prog)s %(version)s")
def warden() -> None:
    """Provision FreeBSD hosts for AI agents: registry, checks, render, plan, status.

    Paths are relative to the current directory (agents/, inventory/hosts.yml, build/)
    unless PROVISION_ROOT, PROVISION_AGENTS_DIR, PROVISION_INVENTORY or PROVISION_BUILD_DIR
    say otherwise.  Apply with `ansible-playbook site.yml`.
    """


H = "add-agent"


@warden.command("add-agent")
@click.argument("name")
@click.option("--subnet", help=_help(H, "subnet"))
@click.option("--host", help=_help(H, "host"), shell_complete=complete_hosts)
@click.option("--placement", type=click.Choice(["host", "bhyve"]), help=_help(H, "placement"))
@click.option("--locale", help=_help(H, "locale"))
@click.option("--system-locale", help=_help(H, "system_locale"))
@click.option("--soul-repo", help=_help(H, "soul_repo"))
@click.option("--soul-ref", help=_help(H, "soul_ref"))
@click.option("--jails", help=_help(H, "jails"))
@click.option("--share-llm", help=_help(H, "share_llm"), shell_complete=complete_agents)
@click.option("--port", type=int, help=_help(H, "port"))
@click.option("--set", "set_pairs", multiple=True, metavar="KEY=VALUE", help=_help(H, "set"))
def add_agent(name: str, **options: Any) -> None:
    """Write agents/NAME/.env with every derived value; refuse collisions."""
    options["set_pairs"] = list(options["set_pairs"])
    _run(cli.add_agent, name, **options)


S = "set-agent"


@warden.command("set-agent")
@click.argument("name", shell_complete=complete_agents)
@click.option("--subnet", help=_help(S, "subnet"))
@click.option("--host", help=_help(S, "host"), shell_complete=complete_hosts)
@click.option("--placement", type=click.Choice(["host", "bhyve"]), help=_help(S, "placement"))
@click.option("--port", type=int, help=_help(S, "port"))
@click.option("--jails", help=_help(S, "jails"))
@click.option("--rename", metavar="NEW", help=_help(S, "rename"))
def set_agent(name: str, **options: Any) -> None:
    """Change an agent's subnet, host, placement, port or jails; every derived value follows."""
    _run(cli.set_agent, name, **options)


@warden.command("remove-agent")
@click.argument("name", shell_complete=complete_agents)
@click.option("--yes", is_flag=True, help=_help("remove-agent", "yes"))
@click.option("--dry-run", is_flag=True, help=_help("remove-agent", "dry_run"))
@click.option("--force", is_flag=True, help=_help("remove-agent", "force"))
def remove_agent(name: str, yes: bool, dry_run: bool, force: bool) -> None:
    """Delete agents/NAME/ after saying what goes; the next apply removes it from its host."""
    _run(cli.remove_agent, name, yes=yes, dry_run=dry_run, force=force)


def json_option(command: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option("--json", "as_json", is_flag=True, help=_help(command, "json"))


@warden.command("list")
@json_option("list")
def list_(as_json: bool) -> None:
    """Table of agents: host, placement, subnet, gateway, port, jails."""
    _run(cli.list_agents, as_json=as_json)


@warden.command()
@json_option("check")
def check(as_json: bool) -> None:
    """Validate every agent and the fleet; every problem with file:line and the fix."""
    _run(cli.check, as_json=as_json)


@warden.command()
def demo() -> None:
    """The built-in example: three agents in build/demo/agents, check, list, render, plan."""
    _run(cli.demo)


@warden.command()
@click.option("--output", help=_help("graph", "output"))
@click.option("--png", is_flag=True, help=_help("graph", "png"))
def graph(output: str | None, png: bool) -> None:
    """Draw the fleet: hosts, warden0 bridges, agent /24s, jails, bhyve VMs."""
    _run(cli.graph, output=output, png=png)


@warden.command()
@click.option("--host", help=_help("render", "host"), shell_complete=complete_hosts)
def render(host: str | None) -> None:
    """Check, then render every artifact into build/<host>/, a tree mirroring the host."""
    _run(cli.render, host=host)


@warden.command()
@click.option("--host", help=_help("plan", "host"), shell_complete=complete_hosts)
@click.option("--stat", is_flag=True, help=_help("plan", "stat"))
@json_option("plan")
def plan(host: str | None, stat: bool, as_json: bool) -> None:
    """Dry run: unified diff of every file an apply would change. Exit 0 none, 2 pending, 1 error."""
    _run(cli.plan, host=host, stat=stat, as_json=as_json)


@warden.command("soul-check")
@click.argument("name", shell_complete=complete_agents)
def soul_check(name: str) -> None:
    """Fetch SOUL_REPO at SOUL_REF and validate it."""
    _run(cli.soul_check, name)


@warden.command("soul-pin")
@click.argument("name", shell_complete=complete_agents)
def soul_pin(name: str) -> None:
    """Resolve SOUL_REF to its full commit hash and write it into the agent's .env."""
    _run(cli.soul_pin, name)


@warden.command("soul-init")
@click.argument("name", shell_complete=complete_agents)
@click.option("--dest", help=_help("soul-init", "dest"))
@click.option("--author", default="warden-provision", show_default=True, help=_help("soul-init", "author"))
def soul_init(name: str, dest: str | None, author: str) -> None:
    """Scaffold a valid soul repo from the agent's .env and point SOUL_REPO/SOUL_REF at it."""
    _run(cli.soul_init, name, dest=dest, author=author)


@warden.command()
@click.option("--host", help=_help("doctor", "host"), shell_complete=complete_hosts)
@json_option("doctor")
def doctor(host: str | None, as_json: bool) -> None:
    """Read-only preflight of each host, with the command that fixes each failure."""
    _run(cli.doctor, host=host, as_json=as_json)


@warden.command()
@click.option("--host", help=_help("status", "host"), shell_complete=complete_hosts)
@click.option("--agent", help=_help("status", "agent"), shell_complete=complete_agents)
@json_option("status")
def status(host: str | None, agent: str | None, as_json: bool) -> None:
    """Per agent: service, API port, jails, gateway, PF. Non-zero when anything is down."""
    _run(cli.status, host=host, agent=agent, as_json=as_json)


@warden.command()
@click.option("--host", required=True, help=_help("reach", "host"), shell_complete=complete_hosts)
@click.option("--pf-conf", "pf_conf", help=_help("reach", "pf_conf"))
def reach(host: str, pf_conf: str | None) -> None:
    """Who can reach whom on a host once the anchor is loaded (docs/isolation.md)."""
    _run(cli.reach, host=host, pf_conf=pf_conf)
