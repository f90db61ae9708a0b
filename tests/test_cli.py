"""The command line as an operator meets it: inputs, messages, help (issue 15, items 4-9)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from provision.envfile import EnvFile

from .conftest import REPO, TWO_HOSTS, Registry

TASKS = [
    "add-agent",
    "set-agent",
    "remove-agent",
    "list",
    "check",
    "demo",
    "graph",
    "render",
    "plan",
    "soul-check",
    "soul-pin",
    "soul-init",
    "doctor",
    "status",
]


def invoke(reg: Registry, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        env={**os.environ, **reg.env(), "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def values(reg: Registry, name: str) -> dict[str, str]:
    return EnvFile.load(reg.agents / name / ".env").values()


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error")]


# -- item 4: subnets and owned keys ---------------------------------------------------


@pytest.mark.parametrize(
    ("given", "base"),
    [("192.168.0", "192.168.0"), ("172.16.0", "172.16.0"), ("10.254.0", "10.254.0"), ("192.168.0.0/24", "192.168.0")],
)
def test_add_agent_accepts_the_common_private_24s(registry: Registry, given: str, base: str) -> None:
    result = invoke(registry, "add-agent", "atlas", "--subnet", given)
    assert result.returncode == 0, result.stderr
    assert values(registry, "atlas")["AGENT_SUBNET_BASE"] == base
    assert values(registry, "atlas")["WARDEN_SUBNET"] == f"{base}.0/24"


@pytest.mark.parametrize("given", ["10.0.9.0/16", "10.0.0.0/16", "10.0.9.0/25"])
def test_add_agent_refuses_a_network_that_is_not_a_24(registry: Registry, given: str) -> None:
    result = invoke(registry, "add-agent", "atlas", "--subnet", given)
    assert result.returncode == 1
    assert f"--subnet {given} is a /{given.rsplit('/', 1)[1]}, not a /24" in result.stderr
    assert "--subnet 10.0." in result.stderr.split("fix:", 1)[1]
    assert not (registry.agents / "atlas").exists()


def test_set_subnet_base_is_kept_not_replaced_by_an_allocated_one(registry: Registry) -> None:
    result = invoke(registry, "add-agent", "atlas", "--set", "AGENT_SUBNET_BASE=192.168.0")
    assert result.returncode == 0, result.stderr
    assert values(registry, "atlas")["AGENT_SUBNET_BASE"] == "192.168.0"


def test_set_agent_host_is_kept_as_the_host(registry: Registry) -> None:
    registry.write_inventory(TWO_HOSTS)
    result = invoke(registry, "add-agent", "atlas", "--set", "AGENT_HOST=fbsd2")
    assert result.returncode == 0, result.stderr
    got = values(registry, "atlas")
    assert got["AGENT_HOST"] == "fbsd2"
    assert got["AGENT_SUBNET_BASE"].startswith("10.1.")  # fbsd2's warden_pool, not fbsd1's


@pytest.mark.parametrize(
    "args",
    [
        ["--subnet", "10.0.5", "--set", "AGENT_SUBNET_BASE=10.0.6"],
        ["--port", "3300", "--set", "CONTROLPLANE_API_PORT=3301"],
        ["--set", "AGENT_NAME=hermes"],
    ],
)
def test_an_option_and_a_set_that_disagree_are_refused(registry: Registry, args: list[str]) -> None:
    result = invoke(registry, "add-agent", "atlas", *args)
    assert result.returncode == 1
    assert "disagree" in result.stderr
    assert not (registry.agents / "atlas").exists()


# -- item 5: typos and keys given twice -----------------------------------------------


def test_check_warns_about_a_key_that_looks_like_an_owned_one_and_a_key_set_twice(registry: Registry) -> None:
    registry.write_env(
        "atlas",
        """\
        AGENT_NAME=atlas
        AGENT_SUBNET_BASE=10.0.1
        AGENT_PLACMENT=bhyve
        WARDEN_JAIL=git
        OPENAI_API_KEY=sk-not-a-typo
        SOUL_REF=main
        SOUL_REF=v2
        """,
    )
    result = invoke(registry, "check")
    assert result.returncode == 0, result.stdout
    assert "AGENT_PLACMENT is not a key this tool reads; did you mean AGENT_PLACEMENT?" in result.stdout
    assert "did you mean WARDEN_JAILS?" in result.stdout
    assert "OPENAI_API_KEY" not in result.stdout
    assert "SOUL_REF is set twice (lines 6 and 7); the last one counts" in result.stdout


def test_add_agent_warns_about_a_typod_set_key_and_a_key_set_twice(registry: Registry) -> None:
    result = invoke(registry, "add-agent", "atlas", "--set", "AGENT_PLACMENT=bhyve", "--set", "X=1", "--set", "X=2")
    assert result.returncode == 0, result.stderr
    assert "did you mean AGENT_PLACEMENT?" in result.stderr
    assert "--set X is given twice" in result.stderr


# -- item 6: one message per cause, in the user's terms ---------------------------------


def test_a_taken_subnet_is_one_short_message_with_the_cause_first(registry: Registry) -> None:
    assert invoke(registry, "add-agent", "atlas", "--subnet", "10.0.1").returncode == 0
    result = invoke(registry, "add-agent", "hermes", "--subnet", "10.0.1")
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and len(lines[0]) < 400, result.stderr
    assert lines[0].startswith("error: --subnet 10.0.1: agent hermes's subnet 10.0.1.0/24 overlaps agent atlas's")
    assert lines[0].count("fix:") == 1
    assert "is used 2 times" not in lines[0]  # the addresses follow from the subnet: not repeated
    assert "omit --subnet to take the next free /24 (10.0.0.0/24)" in lines[0]


def test_a_taken_port_suggests_a_free_one_with_the_option_typed(registry: Registry) -> None:
    assert invoke(registry, "add-agent", "atlas").returncode == 0
    assert invoke(registry, "add-agent", "hermes").returncode == 0  # 3101
    result = invoke(registry, "add-agent", "iris", "--port", "3100")
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: --port 3100 is used by 2 agents on fbsd1")
    assert "fix: use --port 3102" in line and line.count("fix:") == 1
    assert "CONTROLPLANE_API_PORT=" not in line.split("fix:", 1)[1]


@pytest.mark.parametrize(
    ("args", "start", "fix"),
    [
        (["--locale", "german"], "error: --locale german: must be a BCP 47 tag", "give --locale a valid value"),
        (["--placement", "vm"], "error: --placement vm: ", "use --placement host or --placement bhyve"),
        (["--jails", "git web"], "error: --jails git web: unknown jail role 'web'", "give --jails a valid value"),
    ],
)
def test_a_bad_option_value_is_named_by_the_option_typed(
    registry: Registry, args: list[str], start: str, fix: str
) -> None:
    result = invoke(registry, "add-agent", "atlas", *args)
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert line.startswith(start), line
    assert line.endswith(f"(fix: {fix})"), line
    assert ".env" not in line  # the file does not exist yet: the fix is in the user's terms


def test_a_missing_inventory_is_one_error_naming_its_cause(registry: Registry) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nAGENT_HOST=fbsd1\n")
    missing = registry.root / "typo.yml"
    for command in (["check"], ["list"], ["add-agent", "hermes"]):
        result = invoke(registry, *command, env={"PROVISION_INVENTORY": str(missing)})
        assert result.returncode == 1
        out = result.stdout + result.stderr
        assert "AGENT_HOST" not in out, command
        (line,) = error_lines(out)
        assert line.startswith(f"error: {missing}: inventory file not found"), command


# -- item 7: messages, not tracebacks -------------------------------------------------


def test_graph_without_graphviz_dot_says_what_to_install(registry: Registry, tmp_path: Path) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    bare = tmp_path / "bin"
    bare.mkdir()
    result = invoke(registry, "graph", env={"PATH": str(bare)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Graphviz's `dot` is not installed" in result.stderr and "pkg install graphviz" in result.stderr


def test_render_into_a_build_dir_that_cannot_be_written_is_a_message(registry: Registry) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    blocker = registry.root / "afile"
    blocker.write_text("")
    result = invoke(registry, "render", env={"PROVISION_BUILD_DIR": str(blocker / "build")})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "cannot write" in line and str(blocker) in line


def test_status_of_an_unknown_agent_is_an_error_with_the_closest_name(registry: Registry) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    result = invoke(registry, "status", "--agent", "atlsa")
    assert result.returncode == 1
    assert "no agent 'atlsa'" in result.stderr and "did you mean atlas?" in result.stderr
    assert "┏" not in result.stdout  # no empty table


def test_status_shows_every_agent_unknown_when_its_machine_is_not_reached(registry: Registry) -> None:
    registry.write_inventory(
        "warden_hosts:\n  hosts:\n    fbsd1:\n      ansible_host: 127.0.0.1\n      ansible_port: 1\n"
    )
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    registry.write_env("hermes", "AGENT_NAME=hermes\nAGENT_SUBNET_BASE=10.0.2\nCONTROLPLANE_API_PORT=3101\n")
    registry.write_env(
        "zed", "AGENT_NAME=zed\nAGENT_SUBNET_BASE=10.0.3\nAGENT_PLACEMENT=bhyve\nWARDEN_VM_IP=10.255.0.10\n"
    )
    (registry.root / "ssh_config").write_text("")
    env = {"PROVISION_SSH_CONFIG": str(registry.root / "ssh_config")}
    result = invoke(registry, "status", env=env)
    assert result.returncode == 1
    rows = {m.group(1): m.group(2) for m in re.finditer(r"│ \S+\s+│ (\w+)\s+│ (unknown[^│]*)│", result.stdout)}
    assert set(rows) == {"atlas", "hermes", "zed"}, result.stdout
    assert "host unreachable" in rows["atlas"] and "bhyve guest zedvm" in rows["zed"]
    only = invoke(registry, "status", "--agent", "zed", env=env)
    assert only.returncode == 1 and "zed" in only.stdout and "unknown" in only.stdout


# -- item 8: invoke tasks behave ------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_invoke_task_prints_its_help(registry: Registry, flag: str) -> None:
    for task in TASKS:
        result = invoke(registry, task, flag)
        assert result.returncode == 0, (task, result.stderr)
        assert f"Usage: inv[oke] [--core-opts] {task}" in result.stdout, task
        # long options only: invoke would otherwise make -h mean --host, -p --placement…
        assert not re.search(r"^\s+-[a-z][ ,=]", result.stdout, re.M), (task, result.stdout)
    assert not (registry.agents / "--help").exists()


def test_invoke_suggests_the_task_it_did_not_know(registry: Registry) -> None:
    result = invoke(registry, "add-agnet", "atlas")
    assert result.returncode == 1
    assert "No idea what 'add-agnet' is! Did you mean 'add-agent'?" in result.stderr
    assert not (registry.agents / "atlas").exists()


# -- item 9: the warden console script -------------------------------------------------

WARDEN = Path(sys.executable).with_name("warden")


def warden(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`warden` as installed, in CWD, with no PROVISION_* variable from the test session."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    return subprocess.run(
        [str(WARDEN), *args],
        cwd=cwd,
        env={**clean, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    """A directory laid out as the README says: agents/, inventory/hosts.yml."""
    from .conftest import ONE_HOST

    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "hosts.yml").write_text(ONE_HOST, encoding="utf-8")
    (tmp_path / "agents").mkdir()
    return tmp_path


def test_warden_is_installed_and_works_from_any_directory(fleet_dir: Path) -> None:
    result = warden(fleet_dir, "add-agent", "atlas", "--subnet", "192.168.0")
    assert result.returncode == 0, result.stderr
    assert (fleet_dir / "agents" / "atlas" / ".env").is_file()
    listed = warden(fleet_dir, "list")
    assert listed.returncode == 0 and "192.168.0.0/24" in listed.stdout
    rendered = warden(fleet_dir, "render")
    assert rendered.returncode == 0, rendered.stderr
    assert (fleet_dir / "build" / "fbsd1" / "usr" / "local" / "etc" / "rc.d" / "atlas").is_file()


def test_warden_suggests_the_verb_it_did_not_know(fleet_dir: Path) -> None:
    result = warden(fleet_dir, "add-agnet", "atlas")
    assert result.returncode == 2
    assert "Did you mean 'add-agent'?" in result.stderr


def test_warden_and_invoke_offer_the_same_verbs_and_options() -> None:
    import click
    from invoke.collection import Collection
    from invoke.loader import FilesystemLoader

    from provision.warden import warden as group

    module, _ = FilesystemLoader(start=str(REPO)).load("tasks")
    collection = Collection.from_module(module)
    ctx = click.Context(group)
    assert set(group.list_commands(ctx)) == set(collection.task_names)
    for name in collection.task_names:
        command = group.get_command(ctx, name)
        assert command is not None
        renamed = {"set_pairs": "set", "as_json": "json"}
        ours = {renamed.get(p.name or "", p.name) for p in command.params if p.name != "help"}
        theirs = {a.name for a in collection[name].get_arguments()}
        assert ours == theirs, name


@pytest.mark.parametrize("verb", TASKS)
def test_warden_help_on_every_verb(fleet_dir: Path, verb: str) -> None:
    for flag in ("--help", "-h"):
        result = warden(fleet_dir, verb, flag)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"Usage: warden {verb} [OPTIONS]")
    assert not (fleet_dir / "agents" / "--help").exists()


@pytest.mark.parametrize(
    ("shell", "words", "cword", "expect"),
    [
        ("bash", "warden status --agent a", "3", "atlas"),
        ("bash", "warden plan --host fb", "3", "fbsd1"),
        ("bash", "warden remove-agent ", "2", "atlas"),
        ("zsh", "warden status --agent a", "3", "atlas"),
        ("fish", "warden doctor --host f", "f", "fbsd1"),
    ],
)
def test_warden_completes_agent_and_host_names(
    fleet_dir: Path, shell: str, words: str, cword: str, expect: str
) -> None:
    assert warden(fleet_dir, "add-agent", "atlas").returncode == 0
    env = {"_WARDEN_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": cword}
    result = warden(fleet_dir, env=env)
    assert result.returncode == 0, result.stderr
    assert expect in re.split(r"[\s,]+", result.stdout), result.stdout
    source = warden(fleet_dir, env={"_WARDEN_COMPLETE": f"{shell}_source"})
    assert "_WARDEN_COMPLETE" in source.stdout


def test_warden_starts_without_heavy_modules() -> None:
    code = (
        "import sys, provision.warden; "
        "heavy = [m for m in ('ansible', 'paramiko', 'jinja2') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- "done when": the justfile ---------------------------------------------------------


def just(reg: Registry, *args: str) -> subprocess.CompletedProcess[str]:
    bindir = str(Path(sys.executable).parent)
    return subprocess.run(
        [str(Path(sys.executable).with_name("just")), *args],
        cwd=REPO,
        env={**os.environ, **reg.env(), "PATH": bindir + os.pathsep + os.environ["PATH"], "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_just_list_offers_the_everyday_commands(registry: Registry) -> None:
    listed = just(registry, "--list").stdout
    for recipe in ("list", "add-agent", "doctor", "status", "check", "plan"):
        assert re.search(rf"^\s+{recipe}\b", listed, re.M), recipe


def test_just_plan_with_changes_pending_exits_2_without_a_recipe_failure(registry: Registry) -> None:
    registry.write_inventory(
        f"warden_hosts:\n  hosts:\n    example:\n      ansible_connection: local\n"
        f"      warden_sample_root: {REPO / 'examples' / 'host'}\n      warden_ext_if: vtnet0\n"
    )
    added = just(registry, "add-agent", "atlas", "--subnet", "10.0.1", "--set", "NOTE=two words")
    assert added.returncode == 0, added.stderr
    assert values(registry, "atlas")["NOTE"] == "two words"
    result = just(registry, "plan", "example")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "changes pending" in result.stdout
    assert "failed" not in result.stderr.lower()


# -- item 10: --json with a schema per command, plan --stat, output that is not a terminal -


def validated(result: subprocess.CompletedProcess[str], command: str) -> dict[str, Any]:
    """stdout parsed as JSON and validated against provision/schemas/warden.<command>.v1.json."""
    from jsonschema import Draft202012Validator

    schema = json.loads((REPO / "provision" / "schemas" / f"warden.{command}.v1.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    document: dict[str, Any] = json.loads(result.stdout)
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(document)]
    assert not errors, errors
    assert document["schema"] == f"warden.{command}.v1"
    return document


def sample_host(reg: Registry, tmp_path: Path) -> Path:
    """The bundled sample host, copied so a test can change its files; the inventory names it."""
    import shutil

    root = tmp_path / "host"
    shutil.copytree(REPO / "examples" / "host", root)
    reg.write_inventory(
        f"warden_hosts:\n  hosts:\n    example:\n      ansible_connection: local\n"
        f"      warden_sample_root: {root}\n      warden_ext_if: vtnet0\n"
    )
    return root


def test_list_and_check_json_follow_their_schemas(registry: Registry) -> None:
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nAGENT_PLACMENT=bhyve\n")
    registry.write_env("zed", "AGENT_NAME=zed\nAGENT_SUBNET_BASE=10.0.1\nCONTROLPLANE_API_PORT=3101\n")
    listed = validated(invoke(registry, "list", "--json"), "list")
    assert [a["name"] for a in listed["agents"]] == ["atlas", "zed"]
    assert listed["agents"][0]["jails"][0] == {"role": "git", "name": "atlasgit", "ip": "10.0.1.2"}
    result = invoke(registry, "check", "--json")
    assert result.returncode == 1
    checked = validated(result, "check")
    assert checked["errors"] >= 1 and checked["warnings"] >= 1
    rules = {p["rule"] for p in checked["problems"]}
    assert {"subnet-overlap", "key-typo"} <= rules


def test_plan_json_and_stat(registry: Registry, tmp_path: Path) -> None:
    sample_host(registry, tmp_path)
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nOPENAI_API_KEY=sk-secret-value\n")
    result = invoke(registry, "plan", "--json")
    assert result.returncode == 2, result.stderr
    planned = validated(result, "plan")
    assert planned["exit_status"] == 2
    (host,) = planned["hosts"]
    assert host["host"] == "example" and host["agents_added"] == ["atlas"]
    paths = {c["path"]: c for c in host["changes"]}
    assert paths["/usr/local/etc/rc.d/atlas"]["kind"] == "added"
    assert "sk-secret-value" not in result.stdout
    stat = invoke(registry, "plan", "--stat")
    assert stat.returncode == 2
    assert re.search(r"^added\s+/usr/local/etc/rc.d/atlas  \+\d+ -0", stat.stdout, re.M), stat.stdout
    assert "@@" not in stat.stdout  # no diff bodies


def test_status_and_doctor_json_follow_their_schemas(registry: Registry) -> None:
    registry.write_inventory(
        "warden_hosts:\n  hosts:\n    fbsd1:\n      ansible_host: 127.0.0.1\n      ansible_port: 1\n"
    )
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    env = {"PROVISION_SSH_CONFIG": str(registry.root / "ssh_config")}
    (registry.root / "ssh_config").write_text("")
    result = invoke(registry, "status", "--json", env=env)
    assert result.returncode == 1
    status = validated(result, "status")
    assert status["ok"] is False and [a["agent"] for a in status["agents"]] == ["atlas"]
    result = invoke(registry, "doctor", "--json", env=env)
    assert result.returncode == 1
    doctor = validated(result, "doctor")
    assert doctor["hosts"][0]["host"] == "fbsd1" and "cannot connect" in doctor["hosts"][0]["error"]


def test_doctor_json_of_evaluated_checks_follows_its_schema() -> None:
    """The checks themselves (evaluated from a probe's text) as --json writes them."""
    from jsonschema import Draft202012Validator

    from provision.doctor import evaluate
    from provision.models import Host

    from .test_operate import facts

    checks = evaluate(Host(name="fbsd1", ext_if="vtnet0"), [], facts())
    document = {
        "schema": "warden.doctor.v1",
        "ok": all(c.ok for c in checks),
        "hosts": [{"host": "fbsd1", "error": None, "checks": [c.as_json() for c in checks]}],
    }
    schema = json.loads((REPO / "provision" / "schemas" / "warden.doctor.v1.json").read_text(encoding="utf-8"))
    assert not list(Draft202012Validator(schema).iter_errors(document))


def test_piped_output_is_not_cut_at_80_columns_and_keeps_tabs(registry: Registry, tmp_path: Path) -> None:
    root = sample_host(registry, tmp_path)
    rc_conf = root / "etc" / "rc.conf"
    rc_conf.write_text(rc_conf.read_text(encoding="utf-8") + "#\tkept as a tab\n", encoding="utf-8")
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nAGENT_DIR=/home/atlas/" + "d" * 90 + "\n")
    env = {"COLUMNS": ""}
    listed = invoke(registry, "list", env=env)
    assert "atlasollama 10.0.1.4" in listed.stdout
    rendered = invoke(registry, "render", env=env)
    assert "/" + "d" * 90 + "/.env" in rendered.stdout  # the tree line is whole
    planned = invoke(registry, "plan", env=env)
    assert planned.returncode == 2
    assert " #\tkept as a tab\n" in planned.stdout


# -- item 11: set-agent ------------------------------------------------------------------


def test_set_agent_moves_the_subnet_and_every_derived_value_keeping_the_rest(registry: Registry) -> None:
    assert invoke(registry, "add-agent", "atlas", "--subnet", "10.0.1").returncode == 0
    assert invoke(registry, "add-agent", "hermes", "--subnet", "10.0.2", "--set", "APP_MODE=fast").returncode == 0
    path = registry.agents / "hermes" / ".env"
    path.write_text(path.read_text(encoding="utf-8").replace("AGENT_NAME=hermes\n", "AGENT_NAME=hermes\n# mine\n"))
    before = path.read_text(encoding="utf-8")
    result = invoke(registry, "set-agent", "hermes", "--subnet", "10.0.9")
    assert result.returncode == 0, result.stderr
    after = path.read_text(encoding="utf-8")
    got = values(registry, "hermes")
    assert got["AGENT_SUBNET_BASE"] == "10.0.9" and got["WARDEN_SUBNET"] == "10.0.9.0/24"
    assert got["WARDEN_GATEWAY"] == "10.0.9.1"
    assert [got[k] for k in ("WARDEN_GIT_IP", "WARDEN_CMS_IP", "WARDEN_OLLAMA_IP", "WARDEN_DB_IP")] == [
        "10.0.9.2",
        "10.0.9.3",
        "10.0.9.4",
        "10.0.9.5",
    ]
    assert "# mine\n" in after and got["APP_MODE"] == "fast"
    assert len(after.splitlines()) == len(before.splitlines())  # lines rewritten in place
    assert "10.0.2." not in after
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert invoke(registry, "check").returncode == 0


def test_set_agent_refuses_an_overlap_and_a_move_that_breaks_a_sharing_agent(registry: Registry) -> None:
    assert invoke(registry, "add-agent", "atlas", "--subnet", "10.0.1").returncode == 0
    assert invoke(registry, "add-agent", "iris", "--share-llm", "atlas").returncode == 0
    before = (registry.agents / "atlas" / ".env").read_text(encoding="utf-8")
    taken = invoke(registry, "set-agent", "atlas", "--subnet", values(registry, "iris")["AGENT_SUBNET_BASE"])
    assert taken.returncode == 1 and "overlaps" in taken.stderr
    assert error_lines(taken.stderr)[0].count("fix:") == 1
    breaks = invoke(registry, "set-agent", "atlas", "--subnet", "10.0.9")
    assert breaks.returncode == 1 and "iris" in breaks.stderr, breaks.stderr
    assert (registry.agents / "atlas" / ".env").read_text(encoding="utf-8") == before


def test_set_agent_moving_host_says_what_happens_to_the_old_host(registry: Registry) -> None:
    registry.write_inventory(TWO_HOSTS)
    assert invoke(registry, "add-agent", "atlas", "--host", "fbsd1").returncode == 0
    assert invoke(registry, "add-agent", "zed", "--host", "fbsd2").returncode == 0  # port 3100 on fbsd2
    result = invoke(registry, "set-agent", "atlas", "--host", "fbsd2")
    assert result.returncode == 0, result.stderr
    got = values(registry, "atlas")
    assert got["AGENT_HOST"] == "fbsd2" and got["CONTROLPLANE_API_PORT"] == "3101"
    assert "fbsd1 loses atlas's service, files and gateway address" in result.stdout
    assert "-e warden_destroy_jails=true" in result.stdout
    assert invoke(registry, "check").returncode == 0


def test_set_agent_refuses_to_rename_and_says_how(registry: Registry) -> None:
    assert invoke(registry, "add-agent", "atlas").returncode == 0
    result = invoke(registry, "set-agent", "atlas", "--rename", "apollo")
    assert result.returncode == 1
    assert "does not rename" in result.stderr and "add-agent apollo" in result.stderr
    assert "remove-agent atlas" in result.stderr
    assert not (registry.agents / "apollo").exists()
