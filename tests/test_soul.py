"""Soul repos with real git: validation rules, pinning, scaffolding, bundles, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision.envfile import EnvFile
from provision.problems import Problem
from provision.soul import SoulError, bundle, check_agent_soul, fetch, init, pin, prepare_bundles, validate
from provision.soul_manifest import SCHEMA_FILE, json_schema

from .conftest import REPO, Registry

TOKEN = "tok-live-7c1f9e2ab44d0b88"
GOOD_MANIFEST = {
    "schema": "clawdie.layered-soul.v1",
    "agent_id": "atlas",
    "display_name": "Atlas",
    "provenance": {"origin": "https://example.invalid/souls/atlas", "author": "ops"},
    "privacy": {"private": ["memories/curated/**"], "sharing": [{"path": "skills/**", "share_with": ["harness:*"]}]},
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def make_repo(path: Path, files: dict[str, str], manifest: dict[str, object] | None = None) -> Path:
    path.mkdir(parents=True)
    content = {
        "SOUL.md": "# Atlas\n",
        "USER.md": "# User\nlikes short answers\n",
        "IDENTITY.md": "# Atlas\n",
        "manifest.json": json.dumps(manifest or GOOD_MANIFEST, indent=2),
    }
    content.update(files)
    for rel, text in content.items():
        if text is None:
            continue
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    for rel in [k for k, v in files.items() if v is None]:
        (path / rel).unlink(missing_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "soul")
    return path


def problems(tmp_path: Path, files: dict[str, str], manifest: dict[str, object] | None = None) -> list[str]:
    repo = make_repo(tmp_path / "soul", files, manifest)
    fetched = fetch(str(repo), None, tmp_path / "cache")
    found = validate(fetched.path, "atlas", {"API_TOKEN": TOKEN, "AGENT_NAME": "atlas"}, tmp_path / ".env")
    assert all(TOKEN not in str(p) for p in found)
    return [p.rule for p in found]


def test_a_good_repo_passes(tmp_path: Path) -> None:
    assert problems(tmp_path, {"skills/search.md": "# search\n", "AGENTS.md": "# agents\n"}) == []


def test_a_missing_core_file_is_named(tmp_path: Path) -> None:
    assert problems(tmp_path, {"USER.md": None}) == ["soul-core-file"]  # type: ignore[dict-item]


def test_wrong_schema_id_and_agent_id_are_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, {}, {**GOOD_MANIFEST, "schema": "clawdie.soul.v0"}) == ["soul-manifest"]


def test_a_soul_of_another_agent_is_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, {}, {**GOOD_MANIFEST, "agent_id": "hermes"}) == ["soul-agent-id"]


def test_an_api_key_in_user_md_is_found_by_detect_secrets_with_file_and_line(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "soul", {"USER.md": "# User\n\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"})
    found = validate(fetch(str(repo), None, tmp_path / "c").path, "atlas", {}, tmp_path / ".env")
    (p,) = found
    assert p.rule == "soul-secret" and str(p.locations[0]) == "USER.md:3"
    assert "AKIAIOSFODNN7EXAMPLE" not in str(p)


def test_the_agents_own_token_is_refused_without_being_printed(tmp_path: Path) -> None:
    assert problems(tmp_path, {"memories/curated/notes.md": f"remember {TOKEN}\n"}) == ["soul-agent-secret"]


@pytest.mark.parametrize(
    "rel,rule",
    [
        ("package-lock.json", "soul-lock-file"),
        ("chat-2026-11-01.log", "soul-chat-log"),
        ("conversations/1.json", "soul-chat-log"),
        ("state/session.db", "soul-runtime-state"),
        (".env", "soul-runtime-state"),
    ],
)
def test_lock_files_chat_logs_and_runtime_state_are_refused(tmp_path: Path, rel: str, rule: str) -> None:
    assert rule in problems(tmp_path, {rel: "x\n"})


def test_fetch_honours_branches_tags_and_commits_and_pin_resolves_a_full_hash(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "soul", {})
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    (repo / "SOUL.md").write_text("# Atlas, revised\n")
    git(repo, "commit", "-qam", "revise")
    second = git(repo, "rev-parse", "HEAD")
    cache = tmp_path / "cache"
    assert pin(str(repo), "main", cache) == second
    assert fetch(str(repo), "v1", cache).commit == first
    assert (fetch(str(repo), first[:10], cache).path / "SOUL.md").read_text() == "# Atlas\n"
    with pytest.raises(Exception, match="ref 'nope' not found"):
        fetch(str(repo), "nope", cache)


def test_init_scaffolds_a_repo_that_validates(tmp_path: Path) -> None:
    commit = init(tmp_path / "new", "atlas", "Atlas", "sl-SI", "ops")
    fetched = fetch(str(tmp_path / "new"), commit, tmp_path / "cache")
    assert fetched.commit == commit
    assert validate(fetched.path, "atlas", {}, tmp_path / ".env") == []


def test_a_bundle_clones_to_the_pinned_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "soul", {})
    commit = git(repo, "rev-parse", "HEAD")
    out = bundle(str(repo), commit, tmp_path / "atlas.bundle", tmp_path / "cache")
    subprocess.run(
        ["git", "clone", "-q", "--no-checkout", str(out), str(tmp_path / "clone")], check=True, capture_output=True
    )
    git(tmp_path / "clone", "checkout", "-q", commit)
    assert git(tmp_path / "clone", "rev-parse", "HEAD") == commit


def test_published_schema_matches_the_model() -> None:
    """Regenerate with: python -m provision.soul_manifest"""
    assert SCHEMA_FILE.read_text() == json_schema()


def test_check_agent_soul_is_a_no_op_without_soul_repo(tmp_path: Path) -> None:
    assert check_agent_soul("atlas", tmp_path / ".env", {"AGENT_NAME": "atlas"}, tmp_path) == []


def invoke(reg: Registry, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **reg.env(), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_soul_init_then_pin_then_check_through_invoke(registry: Registry, tmp_path: Path) -> None:
    registry.write_env("atlas", f"AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nAPI_TOKEN={TOKEN}\n")
    assert invoke(registry, "soul-init", "atlas", "--dest", str(tmp_path / "soul")).returncode == 0
    values = EnvFile.load(registry.agents / "atlas/.env").values()
    assert values["SOUL_REPO"] == str((tmp_path / "soul").resolve()) and len(values["SOUL_REF"]) == 40
    assert invoke(registry, "soul-check", "atlas").returncode == 0
    (tmp_path / "soul" / "USER.md").write_text(f"token {TOKEN}\n")
    git(tmp_path / "soul", "commit", "-qam", "oops")
    assert invoke(registry, "soul-check", "atlas").returncode == 0  # still pinned to the good commit
    env = EnvFile.load(registry.agents / "atlas/.env")
    env.set("SOUL_REF", git(tmp_path / "soul", "rev-parse", "--abbrev-ref", "HEAD"))
    env.write()
    result = invoke(registry, "soul-check", "atlas")
    assert result.returncode == 1 and "soul-agent-secret" not in result.stdout  # rule names are not shown...
    assert "USER.md:1" in result.stdout and TOKEN not in result.stdout + result.stderr
    check = invoke(registry, "check")
    assert check.returncode == 1 and "USER.md:1" in check.stdout
    assert invoke(registry, "soul-pin", "atlas").returncode == 0
    assert EnvFile.load(registry.agents / "atlas/.env").values()["SOUL_REF"] == git(
        tmp_path / "soul", "rev-parse", "HEAD"
    )


# -- what ships is exactly what was checked (docs/security.md) ---------------------------

AWS_EXAMPLE = "AKIAIOSFODNN7EXAMPLE"  # AWS's documented example key, not a credential


def soul_problems(tmp_path: Path, files: dict[str, str]) -> list[Problem]:
    repo = make_repo(tmp_path / "soul", files)
    return check_agent_soul(
        "atlas", tmp_path / ".env", {"SOUL_REPO": str(repo), "AGENT_NAME": "atlas"}, tmp_path / "cache"
    )


def test_an_allowlist_pragma_does_not_hide_a_secret(tmp_path: Path) -> None:
    found = soul_problems(tmp_path, {"USER.md": f"aws_access_key_id = {AWS_EXAMPLE}  # pragma: allowlist secret\n"})
    assert [(p.rule, str(p.locations[1])) for p in found] == [("soul-secret", "USER.md:1")]


def test_a_secret_in_an_svg_is_found(tmp_path: Path) -> None:
    found = soul_problems(tmp_path, {"skills/logo.svg": f"<svg><!-- aws_access_key_id = {AWS_EXAMPLE} --></svg>\n"})
    assert [(p.rule, str(p.locations[1])) for p in found] == [("soul-secret", "skills/logo.svg:1")]


def test_a_key_split_over_two_lines_is_found(tmp_path: Path) -> None:
    text = f'notes\naws_access_key_id = "{AWS_EXAMPLE[:10]}" +\n    "{AWS_EXAMPLE[10:]}"\n'
    found = soul_problems(tmp_path, {"skills/aws.md": text})
    assert [(p.rule, str(p.locations[1])) for p in found] == [("soul-secret", "skills/aws.md:2")]
    assert "split over lines 2-3" in found[0].message and AWS_EXAMPLE not in str(found[0])


def test_export_ignore_does_not_hide_a_file_from_the_check(tmp_path: Path) -> None:
    found = soul_problems(
        tmp_path, {".gitattributes": "secret.md export-ignore\n", "secret.md": f"aws_access_key_id = {AWS_EXAMPLE}\n"}
    )
    assert [(p.rule, str(p.locations[1])) for p in found] == [("soul-secret", "secret.md:1")]


@pytest.mark.parametrize("target", ["/etc/shadow", "../../..", "../outside.md", "skills/../../x"])
def test_symlinks_leaving_the_repo_are_refused(tmp_path: Path, target: str) -> None:
    repo = tmp_path / "soul"
    make_repo(repo, {})
    (repo / "link.md").symlink_to(target)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "link")
    found = check_agent_soul(
        "atlas", tmp_path / ".env", {"SOUL_REPO": str(repo), "AGENT_NAME": "atlas"}, tmp_path / "cache"
    )
    assert [(p.rule, str(p.locations[1])) for p in found] == [("soul-symlink", "link.md")]


def test_a_symlink_inside_the_repo_is_fine(tmp_path: Path) -> None:
    repo = tmp_path / "soul"
    make_repo(repo, {})
    (repo / "ME.md").symlink_to("IDENTITY.md")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "link")
    assert check_agent_soul("atlas", tmp_path / ".env", {"SOUL_REPO": str(repo)}, tmp_path / "cache") == []


def test_a_file_over_the_size_cap_is_refused_without_being_scanned(tmp_path: Path) -> None:
    started = time.monotonic()
    found = soul_problems(tmp_path, {"memories/curated/dump.md": "x" * (3 << 20) + "\n"})
    assert [(p.rule, str(p.locations[1])) for p in found] == [("soul-size", "memories/curated/dump.md")]
    assert time.monotonic() - started < 30


def test_soul_repo_fd_3_neither_hangs_nor_fetches(tmp_path: Path) -> None:
    script = (
        "import sys\nfrom pathlib import Path\nfrom provision.soul import SoulError, fetch\n"
        "try:\n    fetch('fd::3', None, Path(sys.argv[1]))\nexcept SoulError as exc:\n    print(exc)\n"
    )
    r, w = os.pipe()  # an fd 3 that never says anything: git would wait on it forever
    try:
        result = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "cache")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            pass_fds=(r,) if r == 3 else (),
            preexec_fn=(lambda: os.dup2(r, 3)) if r != 3 else None,
        )
    finally:
        os.close(r)
        os.close(w)
    assert "cannot fetch" in result.stdout, result.stderr


def test_an_option_looking_soul_repo_is_never_run(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    with pytest.raises(SoulError):
        fetch(f"--upload-pack=touch {canary}", None, tmp_path / "cache")
    assert not canary.exists()


def test_bundling_refuses_a_branch_and_ships_one_commit_of_the_checked_tree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "soul", {"memories/curated/notes.md": f"aws_access_key_id = {AWS_EXAMPLE}\n"})
    (repo / "memories/curated/notes.md").write_text("nothing to see\n")
    git(repo, "commit", "-qam", "remove the key")  # the key stays in the history
    checked = git(repo, "rev-parse", "HEAD")
    values = {"AGENT_NAME": "atlas"}
    cache = tmp_path / "cache"
    assert check_agent_soul("atlas", tmp_path / ".env", {**values, "SOUL_REPO": str(repo)}, cache) == []
    (repo / "USER.md").write_text(f"aws_access_key_id = {AWS_EXAMPLE}\n")
    git(repo, "commit", "-qam", "a newer head, never checked")
    with pytest.raises(SoulError, match="soul-pin atlas"):
        prepare_bundles([("fbsd1", "atlas", str(repo), "main", values)], tmp_path / "build", cache)
    (entry,) = prepare_bundles([("fbsd1", "atlas", str(repo), checked, values)], tmp_path / "build", cache)
    assert entry["source"] == checked and entry["commit"] != checked
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", entry["bundle"], str(clone)], check=True, capture_output=True)
    git(clone, "checkout", "-q", entry["commit"])
    assert git(clone, "rev-list", "--all", "--count") == "1"  # no history rides along
    assert AWS_EXAMPLE not in git(clone, "log", "--all", "-p")
    assert git(clone, "rev-parse", "HEAD^{tree}") == git(repo, "rev-parse", f"{checked}^{{tree}}")
    # The same checked tree gives the same snapshot: hosts that have it are left alone.
    (again,) = prepare_bundles([("fbsd1", "atlas", str(repo), checked, values)], tmp_path / "build2", cache)
    assert again["commit"] == entry["commit"]


def test_a_branch_soul_ref_is_refused_by_check_with_soul_pin_as_the_fix(registry: Registry, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "soul", {})
    registry.write_env("atlas", f"AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nSOUL_REPO={repo}\nSOUL_REF=master\n")
    result = invoke(registry, "check")
    assert result.returncode == 1 and "SOUL_REF=master is not a full commit hash" in result.stdout
    assert "invoke soul-pin atlas" in result.stdout


def test_a_git_timeout_ends_the_helpers_git_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A hung transport (here a stand-in for ssh that leaves a child holding git's pipes):
    # the timeout must end it and return, not wait for the child to close the pipes.
    import signal
    import threading

    from provision import soul

    pids = tmp_path / "pids"
    helper = tmp_path / "fake-ssh"
    helper.write_text(f"#!/bin/sh\nsleep 300 &\necho $! >> {pids}\necho $$ >> {pids}\nwait\n")
    helper.chmod(0o755)
    monkeypatch.setattr(soul, "GIT_TIMEOUT", 8)  # room for the helper to start on a loaded machine
    errors: list[BaseException] = []

    def call() -> None:
        try:
            soul._git_run("ls-remote", "ssh://soul.invalid/repo", env={"GIT_SSH_COMMAND": str(helper)})
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(60)
    started = [int(p) for p in pids.read_text().split()] if pids.exists() else []

    def running(pid: int) -> bool:  # a killed child may linger as a zombie until reaped
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
        except (FileNotFoundError, IndexError):
            return False

    # SIGKILL is delivered when the victim is next scheduled: give a loaded machine a moment
    # (without the process group kill they live for the helper's 300 s)
    for _ in range(100):
        alive = [pid for pid in started if running(pid)]
        if not alive:
            break
        time.sleep(0.1)
    for pid in alive:  # leave nothing behind, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert not worker.is_alive(), "git's timeout waited for the helper's child"
    assert len(started) == 2 and not alive
    assert len(errors) == 1 and isinstance(errors[0], SoulError) and "timed out after 8 s" in str(errors[0])


def test_a_pinned_soul_checked_and_bundled_before_needs_no_git_call_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """site.yml checks and bundles every soul on every run: a full commit hash names its
    content for good, so once its clean tree is exported and bundled, the next run reads the
    cache (no fetch of the origin, no git process), and build/ gets the same bundle."""
    import provision.soul as soul

    repo = make_repo(tmp_path / "soul", {})
    commit = git(repo, "rev-parse", "HEAD")
    values = {"AGENT_NAME": "atlas", "SOUL_REPO": str(repo), "SOUL_REF": commit}
    cache = tmp_path / "cache"
    assert check_agent_soul("atlas", tmp_path / ".env", values, cache) == []
    (first,) = prepare_bundles([("fbsd1", "atlas", str(repo), commit, values)], tmp_path / "build", cache / "souls")

    calls: list[tuple[str, ...]] = []
    real = soul._git_run

    def counted(*args: str, **kwargs: object) -> bytes:
        calls.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(soul, "_git_run", counted)
    git(repo, "commit", "-q", "--allow-empty", "-m", "the origin moves on; the pinned commit does not")
    assert check_agent_soul("atlas", tmp_path / ".env", values, cache) == []
    (again,) = prepare_bundles([("fbsd1", "atlas", str(repo), commit, values)], tmp_path / "build2", cache / "souls")
    assert calls == [] and again["commit"] == first["commit"]
    assert Path(again["bundle"]).read_bytes() == Path(first["bundle"]).read_bytes()
    assert fetch(str(repo), "main", cache / "souls").commit != commit  # a branch is always fetched
    assert calls


def test_a_tree_with_problems_is_never_taken_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "soul", {"big.bin": "x" * 10})
    commit = git(repo, "rev-parse", "HEAD")
    monkeypatch.setattr("provision.soul.MAX_TREE_BYTES", 5)
    cache = tmp_path / "cache"
    assert fetch(str(repo), commit, cache).problems
    assert fetch(str(repo), commit, cache).problems  # found again, not a clean cached tree
