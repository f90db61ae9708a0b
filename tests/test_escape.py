"""Every value is quoted where it lands (docs/security.md, "Values and secrets").

Three walls, each tested on its own:
- every `{{ … }}` in templates/ goes through an escaping filter (the templates' AST);
- each filter writes any string as a literal of its format, or refuses it;
- rendered with hostile values — past the validators, so that the filters alone stand —
  the shell outputs run (rc.d script under a stub rc.subr, the wrapper and the jail specs
  under dash) and nothing the values hold is executed.
The validators' side (what `invoke check` refuses) is tests/test_models.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from jinja2 import nodes

from provision import escape
from provision.escape import FILTERS, UnsafeValue
from provision.inventory import load_inventory
from provision.registry import load_fleet
from provision.render import TEMPLATES, _env, layouts, render_layout

from .conftest import Registry
from .hostile import DASH, HOSTILE, SHELL_OUTPUTS, run_outputs

# -- the templates' AST --------------------------------------------------------------------


def _escaped(node: nodes.Node) -> bool:
    """Output that an escaping filter wrote: `x | f`, `xs | map('f') | join(sep)`, or a literal."""
    if isinstance(node, nodes.Const | nodes.TemplateData):
        return True
    if not isinstance(node, nodes.Filter):
        return False
    if node.name in FILTERS:
        return True
    inner = node.node
    return (
        node.name == "join"
        and all(isinstance(a, nodes.Const) for a in node.args)
        and isinstance(inner, nodes.Filter)
        and inner.name == "map"
        and len(inner.args) == 1
        and isinstance(inner.args[0], nodes.Const)
        and inner.args[0].value in FILTERS
    )


def unescaped_outputs(source: str) -> list[str]:
    """Each `{{ … }}` of SOURCE not written through an escaping filter, as `line N: expr`."""
    env = jinja2.Environment()
    tree = env.parse(source)
    bad = []
    for output in tree.find_all(nodes.Output):
        for node in output.nodes:
            if not _escaped(node):
                bad.append(f"line {node.lineno}: {type(node).__name__}")
    return bad


def test_the_ast_check_finds_an_unfiltered_output() -> None:
    assert unescaped_outputs('x="{{ value }}"\n') == ["line 1: Name"]
    assert unescaped_outputs("{{ value | upper }}") == ["line 1: Filter"]
    assert unescaped_outputs("{{ nets | join(' ') }}") == ["line 1: Filter"]
    assert unescaped_outputs("{{ nets | map('upper') | join(' ') }}") == ["line 1: Filter"]
    assert unescaped_outputs("{{ value | sh }} {{ nets | map('pf') | join(' ') }} {{ '{' }}") == []


def test_every_template_output_goes_through_an_escaping_filter() -> None:
    templates = sorted(TEMPLATES.rglob("*.j2"))
    assert len(templates) >= 10
    found = {str(t.relative_to(TEMPLATES)): unescaped_outputs(t.read_text()) for t in templates}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_render_environment_has_every_filter() -> None:
    assert set(FILTERS) <= set(_env().filters)


# -- the filters ---------------------------------------------------------------------------


def values(canary: str) -> list[str]:
    return [v.format(c=canary) for v in HOSTILE]


def test_sh_words_are_read_back_by_dash_exactly(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    vals = values(str(canary))
    script = "".join(f"v={escape.sh(v)}\nprintf '%s\\0' \"$v\"\n" for v in vals)
    # As rc.subr uses command_args: assigned as one word, then evaluated once more.
    script += f"args={escape.sh(escape.sh_argv(vals[:6]))}\n"
    script += 'eval "set -- $args"\nprintf \'%s\\0\' "$@"\n'
    (tmp_path / "s").write_text(script)
    out = subprocess.run([DASH, str(tmp_path / "s")], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == [*vals, *vals[:6]]
    assert not canary.exists()


def test_bastille_arguments_survive_template_sh_eval(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    for v in values(str(canary)):
        if "$" in v or any(ord(c) < 32 for c in v):
            with pytest.raises(UnsafeValue):
                escape.bastille(v)
            continue
        # template.sh: eval "bastille ${cmd} ${jail} ${args}", args being the rest of the line
        script = "eval \"printf '%s\\0' ${ARGS}\""
        (tmp_path / "args").write_text(escape.bastille(v))
        script = f"ARGS=$(cat {tmp_path / 'args'}); {script}"
        out = subprocess.run([DASH, "-c", script], capture_output=True, check=True).stdout
        assert out.decode() == v + "\0"
    assert not canary.exists()


def test_yaml_and_json_scalars_round_trip_on_one_line(tmp_path: Path) -> None:
    for v in values(str(tmp_path / "c")):
        assert "\n" not in escape.yaml(v) and "\n" not in escape.json(v)
        assert yaml.safe_load(f"key: {escape.yaml(v)}\nnext: 1\n") == {"key": v, "next": 1}
        assert json.loads(escape.json(v)) == v


@pytest.mark.parametrize("name", ["pf", "vmconf", "newsyslog", "sysctl", "sh_name"])
def test_formats_that_cannot_quote_refuse_instead(name: str) -> None:
    fn = FILTERS[name]
    for v in values("/tmp/c"):
        with pytest.raises(UnsafeValue):
            fn(v)
    good = {"pf": "10.0.1.0/24", "vmconf": "2G", "newsyslog": "/var/log/warden/atlas.log", "sysctl": "1"}
    good |= {"sh_name": "atlas_enable"}
    assert fn(good[name]) == good[name]


def test_rc_conf_values_are_double_quoted_as_sysrc_writes_them_or_refused(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    passed = []
    for v in values(str(canary)):
        try:
            passed.append((v, escape.rcconf(v)))
        except UnsafeValue:
            assert any(c in v for c in '"$`\\') or not v.isprintable() or len(v) > 4096
    assert len(passed) == 2  # "x; touch …" and "x'; touch …; '": quoted, read back as they are
    script = "".join(f"v={quoted}\nprintf '%s\\0' \"$v\"\n" for _, quoted in passed)
    out = subprocess.run([DASH, "-c", script], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == [v for v, _ in passed] and not canary.exists()


def test_a_comment_never_ends_its_line() -> None:
    for v in values("/tmp/c"):
        text = "# " + escape.comment(v)
        assert all(line.startswith("# ") for line in text.split("\n"))
        assert "\r" not in text and "\\" not in text and "\u2028" not in text


# -- hostile values, past the validators -----------------------------------------------------

# Every Agent field that reaches a template (render.py), and the Host fields likewise.
AGENT_FIELDS = (
    "name",
    "assistant_name",
    "directory",
    "command",
    "system_locale",
    "requires",
    "git_jail",
    "cms_jail",
    "llamacpp_jail",
    "db_jail",
    "vm_memory",
    "vm_disk",
)
HOST_FIELDS = ("name", "ext_if", "bridge", "bridge_clone", "vm_dir", "release")
# Where a refusing filter stands (sh names, pf.conf, vm-bhyve); everything else is quoted.
MAY_REFUSE = {
    ("agent", "name"),
    ("agent", "requires"),
    ("agent", "vm_memory"),
    ("agent", "vm_disk"),
    ("host", "ext_if"),
    ("host", "bridge"),
    # pf.conf carries each jail's epair name (docs/isolation.md) and cannot quote
    ("agent", "git_jail"),
    ("agent", "cms_jail"),
    ("agent", "ollama_jail"),
    ("agent", "llamacpp_jail"),
    ("agent", "db_jail"),
}


@pytest.fixture
def fleet(registry: Registry) -> Any:
    registry.write_inventory(
        "warden_hosts:\n  hosts:\n    fbsd1:\n      warden_ext_if: vtnet0\n    fbsd2:\n      warden_ext_if: igb0\n"
    )
    registry.write_env(
        "atlas", "AGENT_NAME=atlas\nAGENT_HOST=fbsd1\nAGENT_SUBNET_BASE=10.0.1\nWARDEN_JAILS='git cms llamacpp db'\n"
    )
    registry.write_env(
        "hermes",
        "AGENT_NAME=hermes\nAGENT_HOST=fbsd1\nAGENT_SUBNET_BASE=10.0.2\nAGENT_REQUIRES=atlas\n"
        "CONTROLPLANE_API_PORT=3101\n",
    )
    registry.write_env(
        "nova",
        "AGENT_NAME=nova\nAGENT_HOST=fbsd2\nAGENT_SUBNET_BASE=10.1.0\nAGENT_PLACEMENT=bhyve\nWARDEN_VM_IP=10.255.0.10\n",
    )
    hosts, problems = load_inventory(registry.inventory)
    loaded = load_fleet(registry.agents, hosts, problems)
    assert not loaded.problems
    return loaded


def render_all(fleet: Any) -> list[tuple[str, str]]:
    jenv = _env()
    return [(path, text) for lay in layouts(fleet) for path, (text, _) in render_layout(lay, jenv)[1].items()]


@pytest.mark.parametrize("where,field", [("agent", f) for f in AGENT_FIELDS] + [("host", f) for f in HOST_FIELDS])
def test_hostile_values_past_the_validators_never_run(fleet: Any, tmp_path: Path, where: str, field: str) -> None:
    canary = tmp_path / "pwned"
    agents, hosts = fleet.agents, fleet.hosts
    refused = 0
    for n, value in enumerate(values(str(canary))):
        new: Any = (value,) if field == "requires" else value
        if where == "agent":
            fleet.agents = [a.model_copy(update={field: new}) for a in agents]
        else:
            fleet.hosts = [h.model_copy(update={field: new}) for h in hosts]
            if field == "name":
                fleet.agents = [a.model_copy(update={"host": value}) for a in agents]
        try:
            files = render_all(fleet)
        except UnsafeValue:
            refused += 1  # a format that cannot quote the value (pf.conf, vm-bhyve, sh names)
            continue
        for path, text in files:
            if not path.startswith(SHELL_OUTPUTS) and not path.endswith(".sh"):
                # Not sh: no quoting could hold a line break, so no line may start with the payload.
                assert not any(ln.strip().startswith("touch") for ln in text.splitlines()), (path, value[:40])
        work = tmp_path / f"run{n}"
        work.mkdir()
        stdout, stderr = run_outputs(files, work)
        assert not canary.exists(), (field, value[:60], stdout[-2000:], stderr[-2000:])
        # Each rc.d script ran to rc.subr for every verb, with the value intact.
        # (rc.d/warden_guests has no pidfile: it starts the bhyve guests, docs/freebsd.md#boot-order)
        rc_d = [p for p, _ in files if p.startswith("/usr/local/etc/rc.d/") and not p.endswith("/warden_guests")]
        assert stdout.count("\nstatus /var/run/") + stdout.startswith("status ") == len(rc_d)
        if field == "assistant_name":
            assert f"{value}, AI agent atlas" in stdout
        if field == "command" and len(value) < 100_000:  # longer than one exec argument (E2BIG)
            # The operator's command is handed to tmux as one argument, byte for byte.
            assert f"/bin/sh\n-c\n{value}\n" in (work / "tmux.log").read_bytes().decode()
    if (where, field) not in MAY_REFUSE:
        assert refused == 0
