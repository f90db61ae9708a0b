"""Command bodies behind `invoke <task>`: parse nothing, decide nothing, print plainly.

Each function loads what it needs, calls one pipeline step and reports.  Heavy
modules (ansible, paramiko, jinja2) are imported inside the commands that need them so
that `invoke --list` starts fast (docs/design.md#architecture, docs/design.md#quality-bars).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .masking import mask_url_credentials
from .output import console, print_error, print_problems, rule
from .problems import Problem
from .settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

    from .models import Fleet
    from .render import RenderedHost


# One help text per option, shown by `invoke <task> --help` and `warden <verb> --help` alike.
OPTION_HELP: dict[str, dict[str, str]] = {
    "add-agent": {
        "name": "agent name: lowercase letters and digits, starting with a letter (rc.d name, user, jail prefix)",
        "subnet": "the agent's /24: 10.0.1, 192.168.0 or 10.0.1.0/24 (default: next free /24 of warden_pool)",
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
    "remove-agent": {
        "name": "the agent to remove",
        "yes": "do not ask for confirmation",
        "dry_run": "say what would be removed and what depends on it; remove nothing",
        "force": "remove even when that loses a soul repo's unpushed work or breaks agents that depend on it",
    },
    "set-agent": {
        "name": "the agent to change",
        "subnet": "move the agent to this /24 (10.0.9, 10.0.9.0/24): gateway and jail addresses follow",
        "host": "move the agent to this inventory host",
        "placement": "'host' or 'bhyve'",
        "port": "CONTROLPLANE_API_PORT",
        "jails": "service jail roles, e.g. 'git cms llamacpp db'",
        "rename": "refused: says how to rename an agent",
    },
    "graph": {"output": "file to write, without extension (default: build/fleet)", "png": "also write a PNG"},
    "render": {"host": "render only this host (default: every host and bhyve guest)"},
    "list": {"json": "print one JSON document (provision/schemas/warden.list.v1.json) instead of text"},
    "check": {"json": "print one JSON document (provision/schemas/warden.check.v1.json) instead of text"},
    "plan": {
        "host": "plan only this inventory host (default: every host)",
        "stat": "per file one line (kind, path, +added -removed lines) instead of its diff",
        "json": "print one JSON document (provision/schemas/warden.plan.v1.json) instead of text",
    },
    "soul-check": {"name": "the agent whose soul repo to validate"},
    "soul-pin": {"name": "the agent whose SOUL_REF to pin"},
    "soul-init": {"name": "the agent", "dest": "repo directory (default agents/<name>/soul)", "author": "provenance"},
    "doctor": {
        "host": "check only this host (default: every reachable host)",
        "json": "print one JSON document (provision/schemas/warden.doctor.v1.json) instead of text",
    },
    "status": {
        "host": "only this host",
        "agent": "only this agent",
        "json": "print one JSON document (provision/schemas/warden.status.v1.json) instead of text",
    },
    "reach": {
        "host": "the host or bhyve guest to show",
        "pf_conf": "use this pf.conf instead of the host's",
    },
}


class CommandError(Exception):
    """A failure the user caused or can fix; printed without a traceback, exit 1."""


def load(settings: Settings | None = None) -> tuple[Settings, Fleet]:
    """The inventory and the registry; a missing or mistyped agents directory is an error."""
    from .inventory import load_inventory
    from .registry import RegistryError, load_fleet

    settings = settings or Settings.from_env()
    hosts, host_problems = load_inventory(settings.inventory_sources)
    _require_inventory(host_problems)
    try:
        return settings, load_fleet(settings.agents_dir, hosts, host_problems)
    except RegistryError as exc:
        raise CommandError(str(exc)) from None


def _require_inventory(problems: list[Problem]) -> None:
    """A missing or unreadable inventory is the one cause to report (docs/registry.md#messages).

    Without hosts every agent's AGENT_HOST looks wrong; listing those would bury the cause.
    """
    for p in problems:
        if p.rule in ("inventory-missing", "inventory-yaml"):
            raise CommandError(f"{p.locations[0]}: {p.message} (fix: {p.fix})")


def _shown_value(key: str, value: str) -> str:
    """VALUE as a message may show it: masked for a secret-looking key, URL credentials masked."""
    from .masking import MASK
    from .models import is_secret_key

    return MASK if is_secret_key(key) else repr(mask_url_credentials(value))


def parse_set(pairs: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """`--set KEY=VALUE` pairs as a dict, and a warning for each key given twice."""
    out: dict[str, str] = {}
    warnings: list[str] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--set {pair!r}: expected KEY=VALUE (fix: e.g. --set SOUL_REF=main)")
        if key in out and out[key] != value:
            first, last = _shown_value(key, out[key]), _shown_value(key, value)
            warnings.append(f"--set {key} is given twice ({first}, then {last}); the last one counts")
        out[key] = value
    return out, warnings


def print_json(schema: str, document: Mapping[str, Any]) -> None:
    """One JSON document on stdout, naming its schema (provision/schemas/<schema>.json, README.md#json-output)."""
    import json

    # Credentials in URLs never reach the output, whatever put them in a message.
    text = mask_url_credentials(json.dumps({"schema": schema, **document}, indent=2, sort_keys=False))
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def problem_json(p: Problem) -> dict[str, Any]:
    return {
        "severity": p.severity.value,
        "rule": p.rule,
        "message": p.message,
        "fix": p.fix,
        "locations": [{"file": str(loc.file), "line": loc.line, "key": loc.key} for loc in p.locations],
    }


# -- commands ----------------------------------------------------------------------------


def add_agent(
    name: str,
    subnet: str | None = None,
    host: str | None = None,
    placement: str | None = None,
    settings_kv: Mapping[str, str] | None = None,
    share_llm: str | None = None,
    *,
    locale: str | None = None,
    system_locale: str | None = None,
    soul_repo: str | None = None,
    soul_ref: str | None = None,
    jails: str | None = None,
    port: int | None = None,
    set_pairs: Sequence[str] = (),
) -> int:
    """Write agents/<name>/.env; the options and `--set` pairs of `add-agent`, checked together.

    An option and a `--set` of the same key must agree (docs/registry.md#messages); keys
    that look like typos of the tool's keys, and keys given twice, are warned about.
    """
    from rich.table import Table
    from rich.text import Text

    from .inventory import load_inventory
    from .registry import AddRequest, RegistryError, owned_key_like, prepare_agents_dir
    from .registry import add_agent as do_add

    settings = Settings.from_env()
    hosts, problems = load_inventory(settings.inventory_sources)
    _require_inventory(problems)
    out, err = console(), console(stderr=True)
    from_set, warnings = parse_set(set_pairs)
    kv = {**dict(settings_kv or {}), **from_set}
    flags: dict[str, str] = {}
    for key, flag, value in (
        ("DISPLAY_LOCALE", "--locale", locale),
        ("ASSISTANT_LOCALE", "--locale", locale),
        ("SYSTEM_LOCALE", "--system-locale", system_locale),
        ("SOUL_REPO", "--soul-repo", soul_repo),
        ("SOUL_REF", "--soul-ref", soul_ref),
        ("WARDEN_JAILS", "--jails", jails),
        ("CONTROLPLANE_API_PORT", "--port", str(port) if port is not None else None),
    ):
        if value is None:
            continue
        if key in kv and kv[key] != value:
            raise CommandError(
                f"{flag} {value} and --set {key}={kv[key]} disagree (fix: give only one of them: {flag} or --set {key})"
            )
        kv[key] = value
        flags[key] = flag
    for key in from_set:
        like = owned_key_like(key)
        if like is not None:
            warnings.append(f"--set {key}: not a key this tool reads; did you mean {like}? (kept as it is)")
    for warning in warnings:
        err.print(Text.assemble(("warning:", "yellow"), " ", warning))
    if share_llm:
        shared = _shared_llm_settings(settings, share_llm)
        owner_host = shared.pop("AGENT_HOST")
        if host is None and "AGENT_HOST" not in kv:
            host = owner_host
        kv = {**shared, **kv}
    if problems:
        print_problems(problems, err)
        raise CommandError(f"fix {settings.inventory} first")
    try:
        if prepare_agents_dir(settings.agents_dir):
            out.print(f"created the agents directory {settings.agents_dir}")
        agent, values = do_add(
            settings.agents_dir,
            hosts,
            AddRequest(name=name, subnet=subnet, host=host, placement=placement, settings=kv, flags=flags),
        )
    except RegistryError as exc:
        raise CommandError(str(exc)) from None
    out.print(f"added agent [bold]{agent.name}[/bold] → {agent.source}")
    table = Table("key", "value", title="derived values written to the .env", title_justify="left")
    for key, value in values.items():
        table.add_row(key, mask_url_credentials(value))
    out.print(table)
    return 0


def set_agent(
    name: str,
    subnet: str | None = None,
    host: str | None = None,
    placement: str | None = None,
    port: int | None = None,
    jails: str | None = None,
    rename: str | None = None,
) -> int:
    """Change an agent: every derived value rewritten in its .env, comments and other keys kept."""
    from rich.table import Table

    from .inventory import load_inventory
    from .registry import ChangeRequest, RegistryError, change_agent

    settings = Settings.from_env()
    hosts, problems = load_inventory(settings.inventory_sources)
    _require_inventory(problems)
    try:
        change = change_agent(
            settings.agents_dir,
            hosts,
            ChangeRequest(name, subnet=subnet, host=host, placement=placement, port=port, jails=jails, rename=rename),
        )
    except RegistryError as exc:
        raise CommandError(str(exc)) from None
    out = console()
    out.print(f"changed agent {name} → {change.path}", markup=False)
    table = Table("key", "was", "now", title="rewritten in the .env", title_justify="left")
    for key, old, new in change.edits:
        table.add_row(key, old or "(derived)", new)
    out.print(table)
    for note in change.notes:
        out.print(f"  {note}", markup=False)
    out.print("`invoke plan` shows what the next apply changes on the host(s)", markup=False)
    return 0


def _shared_llm_settings(settings: Settings, owner_name: str) -> dict[str, str]:
    """Point the new agent at OWNER's LLM jail: same name and IP is sharing (README.md#the-agent-env)."""
    from .models import DEFAULT_JAILS, LLM_ROLES, ROLE_KEYS

    _, fleet = load(settings)
    owner = next((a for a in fleet.agents if a.name == owner_name), None)
    if owner is None:
        raise CommandError(f"--share-llm {owner_name}: no such agent (fix: check the name with `invoke list`)")
    jail = next((j for j in owner.jails if j.role in LLM_ROLES), None)
    if jail is None:
        raise CommandError(f"--share-llm {owner_name}: {owner.source} has no LLM jail in WARDEN_JAILS")
    ip_key, name_key = ROLE_KEYS[jail.role]
    roles = [r for r in DEFAULT_JAILS if r not in LLM_ROLES] + [jail.role]
    return {ip_key: str(jail.ip), name_key: jail.name, "WARDEN_JAILS": " ".join(roles), "AGENT_HOST": owner.host}


def remove_agent(name: str, yes: bool = False, dry_run: bool = False, force: bool = False) -> int:
    """Say what goes and what depends on it; delete agents/<name>/ when confirmed.

    Work only this directory holds (a soul repo with uncommitted or unpushed commits,
    files the tool did not write) and agents that share its jails or require it make
    the removal refuse unless --force (docs/registry.md).
    """
    from .registry import RegistryError, removal_plan
    from .registry import remove_agent as do_remove

    settings, fleet = load()
    try:
        plan = removal_plan(settings.agents_dir, name, fleet)
    except RegistryError as exc:
        raise CommandError(str(exc)) from None
    out = console()
    out.print(f"remove agent {name}: delete {plan.directory}/", markup=False)
    for entry in plan.contents:
        out.print(f"    {entry}", markup=False)
    for why in plan.lost_work:
        out.print(f"[yellow]  would lose:[/yellow] {why}", markup=True)
    for dep in plan.dependents:
        out.print(f"[yellow]  would break:[/yellow] {dep}", markup=True)
    out.print(
        "  on the next apply its service, files and gateway address go from its host; "
        "its jails and their data stay unless you pass -e warden_destroy_jails=true",
        markup=False,
    )
    if dry_run:
        out.print("dry run: nothing removed")
        return 0
    if plan.needs_force and not force:
        causes = "; ".join([*plan.lost_work, *plan.dependents])
        raise CommandError(
            f"not removing {name}: {causes} (fix: commit and push the soul's work or change the dependent "
            f"agents first, or pass --force to remove anyway)"
        )
    if not yes:
        if not sys.stdin.isatty():
            raise CommandError(f"refusing to remove {name} without confirmation: not on a terminal (fix: pass --yes)")
        answer = input(f"remove agent {name} ({plan.directory})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            out.print("nothing removed")
            return 1
    try:
        do_remove(settings.agents_dir, name, fleet.hosts, force=force)
    except RegistryError as exc:
        raise CommandError(str(exc)) from None
    out.print(f"removed agent {name}; `invoke render` renumbers the warden0 aliases and drops its PF entry")
    return 0


def list_agents(as_json: bool = False) -> int:
    from rich.table import Table

    _, fleet = load()
    if as_json:
        print_json(
            "warden.list.v1",
            {
                "agents": [
                    {
                        "name": a.name,
                        "host": a.host,
                        "placement": a.placement,
                        "vm_name": a.vm_name if a.placement == "bhyve" else None,
                        "vm_ip": str(a.vm_ip) if a.vm_ip is not None else None,
                        "subnet": str(a.subnet),
                        "gateway": str(a.gateway),
                        "api_port": a.api_port,
                        "jails": [{"role": j.role, "name": j.name, "ip": str(j.ip)} for j in a.jails],
                        "source": str(a.source),
                    }
                    for a in sorted(fleet.agents, key=lambda a: (a.host, a.name))
                ],
                "problems": [problem_json(p) for p in fleet.problems],
            },
        )
        return 0
    table = Table("agent", "host", "placement", "subnet", "gateway", "port", "jails")
    for a in sorted(fleet.agents, key=lambda a: (a.host, a.name)):
        jails = "\n".join(f"{j.name} {j.ip}" for j in a.jails)
        where = f"bhyve ({a.vm_name} {a.vm_ip})" if a.placement == "bhyve" else "host"
        table.add_row(a.name, a.host, where, str(a.subnet), str(a.gateway), str(a.api_port), jails)
    out = console()
    out.print(table)
    unread = {p.locations[0].file for p in fleet.problems if p.is_error}
    if unread:
        out.print(f"[yellow]{len(unread)} file(s) could not be read; run `invoke check`[/yellow]")
    return 0


def check(settings: Settings | None = None, fleet: Fleet | None = None, as_json: bool = False) -> int:
    """Every problem of the registry and the inventory, each with file:line, key and fix."""
    from .checks import run_checks

    if settings is None or fleet is None:
        settings, fleet = load()
    problems = run_checks(fleet)
    soul = _soul_problems(settings, fleet)
    problems.extend(soul)
    n_err = sum(p.is_error for p in problems)
    n_warn = len(problems) - n_err
    if as_json:
        print_json(
            "warden.check.v1",
            {
                "agents": len(fleet.agents),
                "hosts": len(fleet.hosts),
                "errors": n_err,
                "warnings": n_warn,
                "problems": [problem_json(p) for p in problems],
            },
        )
        return 1 if n_err else 0
    out = console()
    print_problems(problems, out)
    summary = f"{len(fleet.agents)} agent(s) on {len(fleet.hosts)} host(s): {n_err} error(s), {n_warn} warning(s)"
    if n_err:
        out.print(f"[red]{summary}[/red]")
        return 1
    out.print(f"[green]{summary}[/green]")
    return 0


def prepare() -> int:
    """site.yml's controller step: check, render every machine, bundle the souls — one process.

    One interpreter start and one registry load instead of three (docs/design.md#quality-bars);
    the first error stops it before anything is rendered.
    """
    settings, fleet = load()
    if check(settings, fleet):
        return 1
    rendered = write_build(fleet, settings, only=None)
    console().print(f"rendered {len(rendered)} machine(s) into {settings.build_dir}")
    return souls(settings, fleet)


def _soul_problems(settings: Settings, fleet: Fleet) -> list[Problem]:
    if not any(a.soul_repo for a in fleet.agents):
        return []
    from .soul import check_agent_soul

    out: list[Problem] = []
    for a in fleet.agents:
        if a.soul_repo:
            out.extend(check_agent_soul(a.name, a.source, {**a.extra, **_owned_values(a)}, settings.cache_dir))
    return out


def _owned_values(agent: object) -> dict[str, str]:
    from .models import Agent

    assert isinstance(agent, Agent)
    return {k: str(v) for k, v in agent.model_dump(by_alias=True).items() if v is not None}


def run(fn: object, *args: object, **kwargs: object) -> None:
    """Run a command; turn CommandError into a one-line message and exit status 1."""
    assert callable(fn)
    try:
        code = fn(*args, **kwargs)
    except CommandError as exc:
        console(stderr=True).print(f"[red]error:[/red] {exc}", markup=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    if code:
        sys.exit(code)


DEMO_AGENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("atlas", {"subnet": "10.0.1"}),
    ("hermes", {}),
    (
        "iris",
        {
            "share_llm": "atlas",
            "settings_kv": {"DISPLAY_LOCALE": "sl-SI", "ASSISTANT_LOCALE": "sl-SI", "SYSTEM_LOCALE": "sl_SI.UTF-8"},
        },
    ),
)


def demo() -> int:
    """The README's first command: a fresh example registry, then every step on it.

    The registry goes to build/demo/agents so the operator's own agents/ is never touched.
    """
    import shutil

    base = Settings.from_env()
    demo_dir = base.build_dir / "demo"
    settings = Settings(
        agents_dir=demo_dir / "agents",
        inventory=base.inventory,
        build_dir=demo_dir / "build",
        cache_dir=base.cache_dir,
        inventory_sources=base.inventory_sources,
    )
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True)  # add-agent creates only the last component of an agents directory
    os.environ["PROVISION_AGENTS_DIR"] = str(settings.agents_dir)
    os.environ["PROVISION_BUILD_DIR"] = str(settings.build_dir)
    out = console()
    for name, options in DEMO_AGENTS:
        rule(
            out,
            f"invoke add-agent {name} "
            + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items() if isinstance(v, str)),
        )
        add_agent(name, **options)
    rule(out, "invoke check")
    if check():
        return 1
    rule(out, "invoke list")
    list_agents()
    rule(out, "invoke render")
    render()
    rule(out, "invoke plan --host example   (the bundled sample FreeBSD 14 host, examples/host/)")
    code = plan(host="example")
    out.print(f"plan exit status {code}: 0 = nothing to do, 2 = changes pending, 1 = error")
    return 0 if code in (0, 2) else code


def graph(output: str | None = None, png: bool = False) -> int:
    """Write the fleet picture (SVG, and PNG when asked)."""
    from pathlib import Path

    import graphviz

    from .graph import write_graph

    settings, fleet = load()
    target = Path(output) if output else settings.build_dir / "fleet"
    formats = ("svg", "png") if png else ("svg",)
    try:
        written = write_graph(fleet.hosts, fleet.agents, target.with_suffix(""), formats)
    except graphviz.ExecutableNotFound:
        raise CommandError(
            "Graphviz's `dot` is not installed: it draws the picture "
            "(fix: `pkg install graphviz` on FreeBSD, `apt install graphviz` on Debian)"
        ) from None
    except OSError as exc:
        raise CommandError(_write_error(exc, target.parent, "--output")) from None
    for path in written:
        console().print(f"wrote {path}")
    return 0


def render(host: str | None = None, settings: Settings | None = None, out: Console | None = None) -> int:
    """Check, then render build/<host>/ for every machine (or one); print the tree written.

    Nothing is written when the registry has errors or the fleet cannot be rendered.
    """
    from rich.tree import Tree

    from .checks import run_checks
    from .manifest import MANIFEST_RELPATH
    from .render import layouts

    settings, fleet = load(settings)
    problems = [p for p in run_checks(fleet) if p.is_error]  # render_problems is part of it
    if problems:
        print_problems(problems, out or console(stderr=True))
        raise CommandError("the registry has errors; nothing rendered (fix: see `invoke check`)")
    names = [lay.name for lay in layouts(fleet)]
    if host is not None and host not in names:
        raise CommandError(f"no host {host!r} in {settings.inventory} (hosts: {', '.join(names)})")
    out = out or console()
    for r in write_build(fleet, settings, only=[host] if host else None):
        tree = Tree(f"[bold]{r.directory}[/bold]  ({len(r.manifest.agents)} agent(s))")
        for entry in r.manifest.files:
            who = f" [dim]{entry.agent}[/dim]" if entry.agent else ""
            tree.add(
                f"{entry.path.lstrip('/')}  [dim]{entry.mode} {entry.owner}:{entry.group}[/dim]{who}  {entry.purpose}"
            )
        tree.add(
            f"{MANIFEST_RELPATH}  [dim]rc.conf: {len(r.manifest.rc_conf)} edits, "
            f"jails: {len(r.manifest.jails)}, guests: {len(r.manifest.guests)}[/dim]"
        )
        out.print(tree)
    return 0


def write_build(fleet: Fleet, settings: Settings, only: list[str] | None) -> list[RenderedHost]:
    """render_fleet, with a failed write (a full disk) as one message: the previous build stays."""
    from .render import render_fleet

    try:
        return render_fleet(fleet, settings.build_dir, only=only)
    except OSError as exc:
        where = exc.filename or settings.build_dir
        raise CommandError(
            f"cannot write the build under {settings.build_dir} ({where}: {exc.strerror or exc}); nothing "
            f"rendered, the previous build is kept as it was (fix: free space or fix permissions there, "
            "then run `invoke render` again)"
        ) from None


def plan(host: str | None = None, as_json: bool = False, stat: bool = False) -> int:
    """Render, read each host's live files over one SSH connection, print diffs; 0/2/1 exit."""
    return plan_command(Settings.from_env(), host, as_json=as_json, stat=stat)


def plan_command(settings: Settings, host: str | None = None, *, as_json: bool = False, stat: bool = False) -> int:
    """Render, read each host's live files (one SSH connection each), print diffs and a summary.

    Returns the exit status: 0 no changes, 2 changes pending, 1 an error on any host.
    STAT prints one line per file instead of its diff; AS_JSON one document
    (provision/schemas/warden.plan.v1.json) instead of anything else on stdout.
    """
    from concurrent.futures import ThreadPoolExecutor

    from . import diffview
    from .checks import run_checks
    from .models import Host
    from .plan import HostPlan, choose_targets, paths_to_read, plan_host
    from .probe import probe_script
    from .remote import RemoteError, fetch, ssh_config_path
    from .render import layouts

    out, err = console(), console(stderr=True)
    try:
        _, fleet = load(settings)
    except CommandError as exc:
        print_error(err, str(exc))
        return 1
    problems = [p for p in run_checks(fleet) if p.is_error]
    if problems:
        print_problems(problems, err)
        print_error(err, "the registry has errors; nothing planned (fix them, see `invoke check`)")
        return 1
    guests = {lay.name: lay.parent for lay in layouts(fleet) if lay.parent}
    chosen = choose_targets(fleet.hosts, guests, host, ssh_config_path())
    if isinstance(chosen, str):
        print_error(err, f"{chosen} — {settings.inventory}")
        return 1
    rendered = {r.name: r for r in write_build(fleet, settings, only=[h.name for h in chosen.hosts])}

    def one(target: Host) -> HostPlan:
        r = rendered[target.name]
        try:
            live = fetch(target, paths_to_read(r.manifest), probe=probe_script(r.manifest))
        except RemoteError as exc:
            return HostPlan(target.name, error=str(exc))
        return plan_host(r.manifest, r.directory, live, packages=target.packages)

    plans: list[HostPlan] = []
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(chosen.hosts)))) as pool:
        for hp in pool.map(one, chosen.hosts):  # hosts read in parallel, printed in order
            if not as_json:
                diffview.print_host(out, err, hp, stat=stat)
            plans.append(hp)
    for hp in chosen.errors:
        if not as_json:
            print_error(err, hp.error or "")
        plans.append(hp)
    notes = [*chosen.notes, *(f"{hp.host}: {w}" for hp in plans for w in hp.warnings)]
    if as_json:
        from .plan import exit_status

        status = exit_status(plans)
        print_json(
            "warden.plan.v1",
            {"hosts": [diffview.host_json(hp) for hp in plans], "notes": notes, "exit_status": status},
        )
        return status
    return diffview.print_summary(out, plans, notes)


def _write_error(exc: OSError, where: Path, setting: str) -> str:
    """A failed write as one line: what could not be written, why, and how to choose another place."""
    what = exc.filename or where
    return (
        f"cannot write {what}: {exc.strerror or exc} "
        f"(fix: make {where} writable, or choose another directory with {setting})"
    )


def _agent(name: str) -> tuple[Settings, Any]:
    settings, fleet = load()
    agent = next((a for a in fleet.agents if a.name == name), None)
    if agent is None:
        raise CommandError(f"no agent {name!r} in {settings.agents_dir} (fix: check the name with `invoke list`)")
    return settings, agent


def soul_check(name: str) -> int:
    """Fetch and validate one agent's soul repo; every problem with file, line and rule."""
    from .soul import check_agent_soul

    settings, agent = _agent(name)
    if not agent.soul_repo:
        raise CommandError(
            f"{agent.source}: SOUL_REPO is not set (fix: invoke add-agent … --soul-repo URL, or invoke soul-init)"
        )
    problems = check_agent_soul(agent.name, agent.source, {**agent.extra, **_owned_values(agent)}, settings.cache_dir)
    print_problems(problems, console())
    if problems:
        console().print(f"[red]soul of {name}: {len(problems)} problem(s)[/red]")
        return 1
    shown = mask_url_credentials(agent.soul_repo)
    console().print(f"soul of {name}: {shown} at {agent.soul_ref or 'HEAD'} is valid", style="green", markup=False)
    return 0


def soul_pin(name: str) -> int:
    """Resolve SOUL_REF to a full commit and write it back into the agent's .env."""
    from .envfile import EnvFile
    from .registry import locked
    from .soul import SoulError, pin

    settings, agent = _agent(name)
    if not agent.soul_repo:
        raise CommandError(f"{agent.source}: SOUL_REPO is not set")
    try:
        commit = pin(agent.soul_repo, agent.soul_ref, settings.cache_dir / "souls")
    except SoulError as exc:
        raise CommandError(str(exc)) from None
    with locked(settings.agents_dir):
        env = EnvFile.load(agent.source)
        changed = env.set("SOUL_REF", commit)
        if changed:
            env.write(0o600)
    console().print(f"{name}: SOUL_REF={commit}" + ("" if changed else " (already pinned)"))
    return 0


def soul_init(name: str, dest: str | None = None, author: str = "warden-provision") -> int:
    """Scaffold a soul repo for an agent (valid manifest, core files, first commit)."""
    from pathlib import Path

    from .envfile import EnvFile
    from .registry import locked
    from .soul import init

    settings, agent = _agent(name)
    target = Path(dest) if dest else settings.agents_dir / name / "soul"
    if target.exists() and any(target.iterdir()):
        raise CommandError(f"{target} exists and is not empty (fix: pass --dest to another directory)")
    commit = init(target, agent.name, agent.assistant_name, agent.display_locale, author)
    with locked(settings.agents_dir):
        env = EnvFile.load(agent.source)
        env.set("SOUL_REPO", str(target.resolve()))
        env.set("SOUL_REF", commit)
        env.write(0o600)
    console().print(f"{name}: soul repo at {target} (commit {commit[:12]}); SOUL_REPO and SOUL_REF set")
    return 0


def souls(settings: Settings | None = None, fleet: Fleet | None = None) -> int:
    """Bundle every agent's pinned soul for the hosts (run by site.yml after check)."""
    import json

    from .checks import placement_host
    from .soul import SoulError, prepare_bundles

    if settings is None or fleet is None:
        settings, fleet = load()
    wanted = [
        (placement_host(a), a.name, a.soul_repo, a.soul_ref, {**a.extra, **_owned_values(a)})
        for a in fleet.agents
        if a.soul_repo
    ]
    try:
        bundles = prepare_bundles(wanted, settings.build_dir, settings.cache_dir / "souls")
    except SoulError as exc:
        raise CommandError(str(exc)) from None
    by_agent = {a.name: a for a in fleet.agents}
    for host in {b["host"] for b in bundles} | {h.name for h in fleet.hosts}:
        entries = [
            {
                **b,
                "user": by_agent[b["name"]].user,
                "group": by_agent[b["name"]].user,
                "dir": by_agent[b["name"]].directory,
            }
            for b in bundles
            if b["host"] == host
        ]
        target = settings.build_dir / host / ".warden" / "souls.json"
        if target.parent.exists():
            target.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    console().print(f"bundled {len(bundles)} soul repo(s)")
    return 0


def _reachable_hosts(host: str | None) -> tuple[Settings, Any, list[Any]]:
    settings, fleet = load()
    targets = [h for h in fleet.hosts if (host is None or h.name == host) and not h.sample_root]
    if host is not None and not targets:
        known = ", ".join(h.name for h in fleet.hosts if not h.sample_root) or "none"
        raise CommandError(f"no host {host!r} to reach in {settings.inventory} (hosts: {known})")
    return settings, fleet, targets


def doctor(host: str | None = None, as_json: bool = False) -> int:
    """Read-only preflight of each host: [ OK ] / [FAIL] with the command that fixes it."""
    from rich.text import Text

    from .doctor import evaluate, probe_script
    from .remote import RemoteError, run_script

    _, fleet, targets = _reachable_hosts(host)
    out, failed = console(), False
    report: list[dict[str, Any]] = []
    for target in targets:
        if not as_json:
            rule(out, f"doctor {target.name}")
        try:
            text = run_script(target, probe_script(target))
        except RemoteError as exc:
            print_error(console(stderr=True), str(exc))
            report.append({"host": target.name, "error": str(exc), "checks": []})
            failed = True
            continue
        checks = evaluate(target, fleet.agents_on(target.name), text)
        report.append(
            {
                "host": target.name,
                "error": None,
                "checks": [c.as_json() for c in checks],
            }
        )
        failed = failed or not all(c.ok for c in checks)
        if as_json:
            continue
        for check in checks:
            if check.ok:
                out.print(Text.assemble(("[ OK ] ", "green"), check.name))
            else:
                out.print(
                    Text.assemble(("[FAIL] ", "red"), check.name, (f"  ({check.detail})" if check.detail else ""))
                )
                out.print(Text(f"       fix: {check.fix}"))
    if as_json:
        print_json("warden.doctor.v1", {"ok": not failed, "hosts": report})
    return 1 if failed else 0


def reach(host: str, pf_conf: str | None = None) -> int:
    """Print who can reach whom on HOST once the rendered anchor is loaded (docs/isolation.md).

    The operator's /etc/pf.conf is read from the host (or the sample tree), or from the
    file PF_CONF names; the anchor and the bridge sysctls are the ones warden renders.
    """
    from pathlib import Path

    from .pf import PfSyntaxError
    from .reach import matrix
    from .remote import RemoteError, read_files, sample_root_of
    from .render import PF_ANCHOR_FILE, _env, layouts, render_layout

    settings, fleet = load()
    chosen = next((lay for lay in layouts(fleet) if lay.name == host), None)
    if chosen is None:
        names = ", ".join(lay.name for lay in layouts(fleet))
        raise CommandError(f"no host {host!r} in {settings.inventory} (hosts and guests: {names})")
    _, files = render_layout(chosen, _env())
    anchor = files[PF_ANCHOR_FILE][0]
    if pf_conf is not None:
        operator = Path(pf_conf).read_text(encoding="utf-8")
        origin = pf_conf
    else:
        target = next((h for h in fleet.hosts if h.name == host), None)
        if target is None:
            raise CommandError(f"{host} is a bhyve guest: pass its pf.conf with --pf-conf FILE")
        try:
            data = read_files(target, ["/etc/pf.conf"], sample_root_of(target)).get("/etc/pf.conf")
        except RemoteError as exc:
            raise CommandError(str(exc)) from None
        operator = (data or b"").decode("utf-8", errors="replace")
        origin = f"{host}:/etc/pf.conf" + ("" if data is not None else " (absent)")
    try:
        m = matrix(chosen, operator, anchor)
    except PfSyntaxError as exc:
        raise CommandError(f"cannot evaluate {origin} with the rendered anchor: {exc}") from None
    out = console()
    out.print(f"reach on {host}: {origin} + the rendered anchor {PF_ANCHOR_FILE} + the bridge sysctls", markup=False)
    for note in m.assumptions:
        out.print(f"  assuming {note}", markup=False)
    out.print("  rows reach columns: Y reachable, . blocked, - not a network path\n", markup=False)
    out.print(m.table(), markup=False, highlight=False)
    return 0


def status(host: str | None = None, agent: str | None = None, as_json: bool = False) -> int:
    """One table for the fleet: service, API port, jails, gateway, PF per agent; non-zero when down.

    An agent whose machine cannot be reached is a row marked unknown, never left out: a
    status that cannot be read is not a healthy one.
    """
    import dataclasses

    from .remote import RemoteError, run_script
    from .status import AgentStatus, evaluate, evaluate_guests, status_script

    settings, fleet, targets = _reachable_hosts(host)
    if agent is not None and agent not in {a.name for a in fleet.agents}:
        raise CommandError(_unknown_agent(agent, [a.name for a in fleet.agents], settings))
    rows: list[tuple[str, AgentStatus]] = []
    for machine, agents, why_not in _status_targets(fleet, targets, agent):
        # a host's bhyve agents: their VMs' state from `vm list` there (vm(8))
        guests = [a for a in fleet.agents_on(machine.name) if a.placement == "bhyve" and agent in (None, a.name)]
        if why_not is not None:
            rows.extend((machine.name, AgentStatus.unknown(a.name, why_not)) for a in agents)
            continue
        try:
            text = run_script(machine, status_script(machine, agents, guests))
        except RemoteError as exc:
            print_error(console(stderr=True), str(exc))
            rows.extend((machine.name, AgentStatus.unknown(a.name, "host unreachable")) for a in [*agents, *guests])
            continue
        rows.extend((machine.name, row) for row in [*evaluate(machine, agents, text), *evaluate_guests(guests, text)])
    if agent is not None and not rows:
        raise CommandError(f"agent {agent} is not on {host} (fix: drop --host, or give the agent's host)")
    ok = bool(rows) and all(row.ok for _, row in rows)
    if as_json:
        print_json(
            "warden.status.v1",
            {"ok": ok, "agents": [{"host": machine, **dataclasses.asdict(row)} for machine, row in rows]},
        )
    else:
        _print_status(rows)
    return 0 if ok else 1


def _status_targets(fleet: Fleet, targets: list[Any], agent: str | None) -> list[tuple[Any, list[Any], str | None]]:
    """(machine, its agents, why it is not probed or None) per host, then per bhyve guest.

    A guest is reached as plan reaches it: through a `Host <guest>` block in the SSH
    config (docs/design.md#placement); without one its agent is unknown.
    """
    from .models import Host
    from .remote import has_ssh_settings, ssh_config_path
    from .render import GUEST_BRIDGE

    out: list[tuple[Any, list[Any], str | None]] = []
    ssh_config = ssh_config_path()
    for target in targets:
        mine = [a for a in fleet.agents_on(target.name) if agent is None or a.name == agent]
        on_host = [a for a in mine if a.placement == "host"]
        if mine:  # a host with only bhyve agents still shows their VMs (`vm list`)
            out.append((target, on_host, None))
        for a in mine:
            if a.placement != "bhyve":
                continue
            guest = Host(name=a.vm_name, bridge=GUEST_BRIDGE)
            reachable = has_ssh_settings(a.vm_name, ssh_config)
            why = None if reachable else f"bhyve guest {a.vm_name}: no `Host {a.vm_name}` block in {ssh_config}"
            out.append((guest, [a], why))
    return out


def _print_status(rows: Sequence[tuple[str, Any]]) -> None:
    from rich.table import Table

    table = Table("host", "agent", "service", "API", "jails", "gateway", "PF", title="status")
    for machine, row in rows:
        table.add_row(
            machine,
            row.agent,
            row.service,
            row.api,
            "\n".join(row.jails),
            row.gateway,
            row.pf,
            style="" if row.ok else "red",
        )
    console().print(table)


def _unknown_agent(name: str, known: Sequence[str], settings: Settings) -> str:
    """No such agent, with the closest name (difflib) and where the registry is."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"no agent {name!r} in {settings.agents_dir} (fix: {hint}agents: {', '.join(sorted(known)) or 'none'})"
