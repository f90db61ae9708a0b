"""The package reads as the pipeline: every import points down it, none back up.

ea46a99 had three cycles (cli → plan → cli.print_problems, plan ↔ diffview, checks ↔
registry); this test counts every relative import — module level, inside functions and
under TYPE_CHECKING — so a cycle cannot come back through a lazy import.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "provision"


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        deps = graph.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(alias.name for alias in node.names)
    return graph


def test_package_imports_have_no_cycle() -> None:
    graph = import_graph()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle in provision/: {' -> '.join(exc.args[1])}") from None
    assert order.index("models") < order.index("checks") < order.index("registry") < order.index("cli")
    assert order.index("plan") < order.index("diffview") < order.index("cli")


def test_output_is_above_the_pipeline_and_fleet_lives_with_the_models() -> None:
    graph = import_graph()
    for module in ("checks", "plan", "render", "registry", "models"):
        assert not graph[module] & {"cli", "output", "diffview"}, module
    assert "registry" not in graph["checks"]
    from provision.models import Fleet

    assert Fleet.__module__ == "provision.models"
