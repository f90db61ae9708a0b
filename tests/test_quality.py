"""The repository's own code stays ruff-clean, formatted, mypy-strict and shellcheck-clean.

Not style for its own sake: mypy catches the None that a FreeBSD host hands back where
we expected a string, and shellcheck the unquoted word that an operator's value splits.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import COLLECTION, REPO

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, f"{name} comes with the [test] extras (pyproject.toml)"
    return found


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_check_and_format() -> None:
    check = run(tool("ruff"), "check", "--output-format=concise", ".")
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = run(tool("ruff"), "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.parametrize(
    "targets",
    [(), ("tasks.py", "collections/ansible_collections/warden/provision/plugins", "tests", "bench")],
    ids=["package", "tasks-plugins-tests-bench"],
)
def test_mypy_strict(targets: tuple[str, ...]) -> None:
    result = run(tool("mypy"), *targets)  # () checks `packages` from pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_we_ship_pass_shellcheck() -> None:
    scripts = [
        REPO / "scripts/bootstrap.sh",
        REPO / "scripts/demo",
        REPO / "scripts/test",
        *sorted((COLLECTION / "roles").glob("*/files/*.sh")),
    ]
    assert len(scripts) >= 4
    result = run(tool("shellcheck"), "--shell=sh", "--severity=style", *map(str, scripts))
    assert result.returncode == 0, result.stdout + result.stderr


# -- the project documents itself ------------------------------------------------------
# Split so that this file does not match itself.
OUTSIDE_NOTES = re.compile("FREEBSD" + r"\.md|SPEC" + r" §|SPEC" + r"\.md|\.\./" + r"shared|§" + r"\d")
DOC_REF = re.compile(r"(?<![\w/.-])((?:docs/[\w/-]+|README)\.md)(#[\w-]+)?")
MD_LINK_ANCHOR = re.compile(r"\]\((#[\w-]+)\)")


def project_files() -> dict[str, str]:
    """Text of every file git tracks, or would track (new, not ignored), by its path."""
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    assert listed.returncode == 0, listed.stderr
    texts: dict[str, str] = {}
    for name in sorted(set(filter(None, listed.stdout.split("\0")))):
        path = REPO / name
        if not path.is_file():
            continue  # deleted in the work tree, not yet committed
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
    return texts


def github_anchors(markdown: str) -> set[str]:
    """`#anchor` of every heading, as GitHub makes it: lowercase, punctuation dropped, `-` for spaces."""
    anchors: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6} +(.*?) *#* *$", line)
        if fenced or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return {f"#{a}" for a in anchors}


def test_github_anchors_follow_githubs_rule() -> None:
    text = "# The agent `.env`\n## What `invoke check` refuses\n```\n# not a heading\n```\n## rctl\n## rctl\n"
    assert github_anchors(text) == {"#the-agent-env", "#what-invoke-check-refuses", "#rctl", "#rctl-1"}


def test_no_file_cites_a_document_outside_the_project() -> None:
    found = [
        f"{name}:{n}: {line.strip()}"
        for name, text in project_files().items()
        for n, line in enumerate(text.splitlines(), 1)
        if OUTSIDE_NOTES.search(line)
    ]
    assert not found, "cite a man page, an upstream source path or docs/ instead:\n" + "\n".join(found)


def test_every_cited_doc_and_anchor_exists() -> None:
    texts = project_files()
    broken: list[str] = []
    for name, text in texts.items():
        for n, line in enumerate(text.splitlines(), 1):
            refs = [(doc, anchor) for doc, anchor in DOC_REF.findall(line)]
            if name.endswith(".md"):
                refs += [(name, anchor) for anchor in MD_LINK_ANCHOR.findall(line)]
            for doc, anchor in refs:
                if doc not in texts:
                    broken.append(f"{name}:{n}: {doc} does not exist")
                elif anchor and anchor not in github_anchors(texts[doc]):
                    broken.append(f"{name}:{n}: {doc} has no heading {anchor}")
    assert not broken, "\n".join(broken)
