"""The collection warden.provision as Ansible's tooling sees it: ansible-test sanity, and
roles whose every input is in their argument_specs (README.md#use-it-from-your-own-ansible-repository)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import COLLECTION, REPO

ROLES = sorted(p.name for p in (COLLECTION / "roles").iterdir() if (p / "meta/argument_specs.yml").is_file())
CONDITIONALS = {"when", "changed_when", "failed_when", "until", "that"}
JINJA = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.S)
QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
# a variable, not an attribute (`.warden_x`) nor a filter of the collection (`warden.provision.warden_x`)
NAME = re.compile(r"(?<![\w.])warden_\w+")


def expressions(node: Any, key: str = "") -> list[str]:
    """Every Jinja expression in a task file: `{{ … }}`/`{% … %}` and the bare conditionals."""
    if isinstance(node, dict):
        return [e for k, v in node.items() for e in expressions(v, str(k))]
    if isinstance(node, list):
        return [e for item in node for e in expressions(item, key)]
    if isinstance(node, str):
        if key in CONDITIONALS:
            return [node]
        return [a or b for a, b in JINJA.findall(node)]
    return []


def defined(node: Any) -> set[str]:
    """Variables a task list sets itself: set_fact keys, register, task vars, loop_var."""
    out: set[str] = set()
    if isinstance(node, list):
        for item in node:
            out |= defined(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in ("ansible.builtin.set_fact", "set_fact", "vars") and isinstance(value, dict):
                out |= set(value)
            elif key in ("register", "loop_var") and isinstance(value, str):
                out.add(value)
            out |= defined(value)
    return out


def role_inputs(role: str) -> tuple[set[str], set[str]]:
    """(variables the role reads that it neither sets nor prefixes with its name, its declared options)."""
    base = COLLECTION / "roles" / role
    read: set[str] = set()
    own: set[str] = set()
    for sub in ("tasks", "vars", "defaults"):
        for path in sorted((base / sub).glob("*.yml")):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            if sub in ("vars", "defaults") and isinstance(data, dict):
                own |= set(data)
            own |= defined(data)
            for expr in expressions(data):
                read |= set(NAME.findall(QUOTED.sub("", expr)))
    specs = yaml.safe_load((base / "meta/argument_specs.yml").read_text(encoding="utf-8"))
    declared = set(specs["argument_specs"]["main"].get("options") or {})
    return {n for n in read - own if not n.startswith(f"{role}_")}, declared


@pytest.mark.parametrize("role", ROLES)
def test_every_variable_a_role_reads_from_outside_is_declared_in_its_argument_specs(role: str) -> None:
    outside, declared = role_inputs(role)
    assert outside, f"{role}: expected inputs from the play (warden_host_dir at least)"
    missing = sorted(outside - declared)
    assert not missing, f"{role} reads {missing} without declaring them in meta/argument_specs.yml"
    stale = sorted(n for n in declared - outside if not n.startswith(f"{role}_"))
    assert not stale, f"{role} declares {stale} in meta/argument_specs.yml but never reads them"


def test_the_role_input_scan_sees_reads_and_ignores_filters_attributes_and_literals() -> None:
    tasks = [
        {"name": "x", "when": "warden_a | length > 0", "register": "warden_r"},
        {"ansible.builtin.set_fact": {"warden_s": "{{ warden_b | warden.provision.warden_f }}"}},
        {"debug": {"msg": "{{ x.warden_attr ~ 'warden_lit' ~ warden_r ~ warden_s }} warden_text"}},
    ]
    found = {n for e in expressions(tasks) for n in NAME.findall(QUOTED.sub("", e))}
    assert found == {"warden_a", "warden_b", "warden_r", "warden_s"}
    assert defined(tasks) == {"warden_r", "warden_s"}


def test_ansible_test_sanity_passes_for_the_collection() -> None:
    """validate-modules, ansible-doc, yamllint, compile and import on Python 3.11, with
    tests/sanity/ignore-2.19.txt (each entry explained there)."""
    ansible_test = shutil.which("ansible-test", path=str(Path(sys.executable).parent))
    assert ansible_test, "ansible-test comes with ansible-core (pyproject.toml)"
    # ansible-test bootstraps pip in each sanity virtualenv with a script it downloads from a
    # host that is not a package registry; tests/sanity/get_pip.py does it from Python's own
    # pip wheel instead (its docstring), at the path ansible-test reads it from.
    pip_version = pinned_pip_version()
    cache = Path.home() / ".ansible/test/cache" / f"get_pip_{pip_version.replace('.', '_')}.py"
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "tests/sanity/get_pip.py", cache)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    tests = ("validate-modules", "ansible-doc", "yamllint", "compile", "import")
    started = time.monotonic()
    result = subprocess.run(
        [ansible_test, "sanity", "--python", "3.11", *(a for t in tests for a in ("--test", t))],
        cwd=COLLECTION,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    for test in tests:
        assert f'Running sanity test "{test}"' in result.stdout, result.stdout[-3000:]
    print(f"ansible-test sanity: {time.monotonic() - started:.1f} s")


def pinned_pip_version() -> str:
    """The pip version ansible-test pins for its sanity virtualenvs (get_venv_packages)."""
    from ansible_test._internal.host_configs import NativePythonConfig
    from ansible_test._internal.python_requirements import get_venv_packages

    return str(get_venv_packages(NativePythonConfig(version="3.11", path=sys.executable))["pip"])


def test_the_filters_load_without_provision_and_say_what_to_install() -> None:
    """Without the package (ansible-doc, the import sanity test, a forgotten pip install) the
    filter plugin still loads; a filter used then fails with the fix, not with an ImportError."""
    script = f"""
import importlib.util, sys
sys.modules["provision"] = None  # import provision -> ImportError, as where it is not installed
spec = importlib.util.spec_from_file_location("warden_filters", {str(COLLECTION / "plugins/filter/warden.py")!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
from ansible.errors import AnsibleFilterError
filters = mod.FilterModule().filters()
assert "warden_manifest" in filters and len(filters) > 10, filters
try:
    filters["warden_manifest"]("/nonexistent")
except AnsibleFilterError as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "warden.provision.warden_manifest needs the warden-provision Python package" in result.stdout
    assert "pip install warden-provision" in result.stdout


def test_the_collection_and_the_package_agree_on_version_ansible_core_and_dependencies() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    galaxy = yaml.safe_load((COLLECTION / "galaxy.yml").read_text(encoding="utf-8"))
    runtime = yaml.safe_load((COLLECTION / "meta/runtime.yml").read_text(encoding="utf-8"))
    assert galaxy["version"] == project["version"]
    core = [d for d in project["dependencies"] if re.match(r"ansible(-core)?\b", d)]
    assert core == ["ansible-core>=2.19,<2.20"], "ansible-core alone, not the `ansible` bundle"
    assert runtime["requires_ansible"] == ">=2.19.0,<2.20.0"
    # ansible.builtin only: no collection to depend on, here or in requirements.yml
    assert galaxy["dependencies"] == {}
    assert yaml.safe_load((REPO / "requirements.yml").read_text(encoding="utf-8")) == {"collections": []}
    used = {
        m.group(1)
        for path in COLLECTION.rglob("*.yml")
        for m in re.finditer(r"^\s*-?\s*([a-z_]+\.[a-z_]+)\.[a-z_]+:", path.read_text(encoding="utf-8"), re.M)
    }
    assert used == {"ansible.builtin", "warden.provision"}, used
