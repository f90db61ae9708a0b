"""plan.py's pure parts: masked unified diffs, the .env mask, one host compared with plain values."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provision.manifest import LIVE_MANIFEST_PATH, FileEntry, Manifest
from provision.plan import MASK, HostPlan, _env_shown, exit_status, mask_comment, mask_secrets, plan_host, unified
from provision.remote import LiveFiles, Stat

lines = st.lists(st.sampled_from(["a\n", "b\n", "c\n", "pass out all\n", "\n", "x"]), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(old=lines, new=lines)
def test_without_secrets_the_diff_is_exactly_difflibs(old: str, new: str) -> None:
    expected = list(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile="live:/etc/pf.conf",
            tofile="rendered:/etc/pf.conf",
        )
    )
    got = unified(old, new, "/etc/pf.conf")
    if old == new:
        assert expected == []
        return
    assert "".join(got).replace("\n\\ No newline at end of file\n", "\n") == "".join(
        ln if ln.endswith("\n") else ln + "\n" for ln in expected
    )


def test_a_changed_secret_shows_as_a_changed_masked_line() -> None:
    old = "AGENT_NAME=atlas\nANTHROPIC_API_KEY=sk-old-111\n"
    new = "AGENT_NAME=atlas\nANTHROPIC_API_KEY=sk-new-222\n"
    diff = "".join(unified(old, new, "/home/atlas/clawdie/.env", secret=True))
    assert f"-ANTHROPIC_API_KEY={MASK}\n+ANTHROPIC_API_KEY={MASK}\n" in diff
    assert " AGENT_NAME=atlas\n" in diff and "sk-" not in diff


def test_in_a_secret_file_only_the_tools_own_keys_show_their_values() -> None:
    text = (
        "# atlas: token is sk-in-a-comment\n"
        "\n"
        "AGENT_NAME=atlas\n"
        "export CONTROLPLANE_API_PORT=3100\n"
        "DATABASE_URL=postgres://atlas:hunter2@db/atlas\n"
        'PRIVATE_PEM="-----BEGIN KEY-----\n'
        "AGENT_NAME=not-a-key\n"
        '-----END KEY-----"\n'
        "WEBHOOK=https://hooks.example/abc\n"
        "not even a binding\n"
    )
    shown = _env_shown(text)
    assert len(shown) == len(text.splitlines())
    assert shown == [
        f"# atlas: token is {MASK}\n",
        "\n",
        "AGENT_NAME=atlas\n",
        "export CONTROLPLANE_API_PORT=3100\n",
        f"DATABASE_URL={MASK}\n",
        f"PRIVATE_PEM={MASK}\n",
        f"{MASK}\n",
        f"{MASK}\n",
        f"WEBHOOK={MASK}\n",
        f"{MASK}\n",
    ]


def test_outside_secret_files_secret_keys_and_url_passwords_are_masked() -> None:
    text = 'sshd_enable="YES"\nfoo_password="hunter2"\nSOUL_REPO=https://bot:ghp_x@github.com/a/b\nPLAIN=1\n'
    assert mask_secrets(text) == (
        f'sshd_enable="YES"\nfoo_password={MASK}\nSOUL_REPO=https://{MASK}@github.com/a/b\nPLAIN=1\n'
    )


# -- one host, plain values ------------------------------------------------------------


def rendered(tmp_path: Path, files: dict[str, str], agents: list[str], *entries: FileEntry) -> Manifest:
    """A build tree holding FILES; entries default to root-owned 0644 files."""
    given = {e.path: e for e in entries}
    for path, text in files.items():
        target = tmp_path / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return Manifest("fbsd1", "warden0", agents=agents, files=[given.get(p, FileEntry(p, "0644")) for p in files])


def test_a_file_with_the_wrong_mode_or_owner_is_a_change_even_with_the_same_bytes(tmp_path: Path) -> None:
    env = FileEntry("/home/atlas/.env", "0600", owner="atlas", group="atlas", agent="atlas", secret=True)
    m = rendered(tmp_path, {"/home/atlas/.env": "AGENT_NAME=atlas\n"}, ["atlas"], env)
    live = LiveFiles(
        files={
            "/home/atlas/.env": b"AGENT_NAME=atlas\n",
            "/etc/passwd": b"root:*:0:0::/root:/bin/sh\natlas:*:1001:1001::/home/atlas:/bin/sh\n",
            "/etc/group": b"wheel:*:0:root\natlas:*:1001:\n",
        },
        stats={"/home/atlas/.env": Stat(0o644, 0, 1001)},
    )
    plan = plan_host(m, tmp_path, live)
    [change] = [c for c in plan.changes if c.path == "/home/atlas/.env"]
    assert change.kind == "changed" and change.diff == []
    assert change.meta == ["mode 0644 → 0600", "owner root → atlas"]


def test_an_owner_the_host_does_not_know_yet_is_not_compared(tmp_path: Path) -> None:
    m = rendered(tmp_path, {"/etc/x": "x\n"}, [])
    live = LiveFiles(files={"/etc/x": b"x\n"}, stats={"/etc/x": Stat(0o644, 0, 0)})  # no /etc/group: no wheel
    assert [c for c in plan_host(m, tmp_path, live).changes if c.path == "/etc/x"] == []


def test_files_of_the_previous_apply_not_rendered_any_more_are_removed_masked(tmp_path: Path) -> None:
    m = rendered(tmp_path, {"/etc/x": "x\n"}, ["atlas"])
    previous = Manifest(
        "fbsd1",
        "warden0",
        agents=["atlas", "iris"],
        # as render.py records it (manifest.check_record): the agent's file is the agent's
        files=[FileEntry("/home/iris/.env", "0600", owner="iris", group="iris", secret=True, agent="iris")],
    )
    live = {
        "/etc/x": b"x\n",
        "/home/iris/.env": b"IRIS_TOKEN=abc123\n",
        LIVE_MANIFEST_PATH: previous.to_json().encode(),
    }
    plan = plan_host(m, tmp_path, live)
    [removed] = [c for c in plan.changes if c.kind == "removed"]
    assert removed.path == "/home/iris/.env" and f"-IRIS_TOKEN={MASK}\n" in removed.diff
    assert "abc123" not in "".join(removed.diff)
    assert plan.agents_removed == ["iris"] and plan.agents_added == []


def test_an_unreadable_record_of_the_last_apply_is_an_error_not_a_guess(tmp_path: Path) -> None:
    m = rendered(tmp_path, {"/etc/x": "x\n"}, [])
    plan = plan_host(m, tmp_path, {LIVE_MANIFEST_PATH: b"{not json"})
    assert plan.error is not None and plan.error.startswith(f"fbsd1: {LIVE_MANIFEST_PATH}")


def test_exit_status_is_terraforms_detailed_exitcode() -> None:
    clean, pending, failed = HostPlan("a"), HostPlan("b"), HostPlan("c", error="c: down")
    pending.changes = [None]  # type: ignore[list-item]
    assert exit_status([clean]) == 0
    assert exit_status([clean, pending]) == 2
    assert exit_status([pending, failed]) == 1


@pytest.mark.parametrize(
    ("comment", "shown"),
    [
        (
            "# atlas: written by `invoke add-agent`; derived values are spelled out and may be edited.\n",
            "# atlas: written by `invoke add-agent`; derived values are spelled out and may be edited.\n",
        ),
        ("# Zadnja sprememba: Iris, 2026 — ročno\n", "# Zadnja sprememba: Iris, 2026 — ročno\n"),
        ("# old key sk-ant-api03-AbC123xyz was rotated\n", f"# old key {MASK} was rotated\n"),
        ("#token=abcdefgh\n", f"{MASK}\n"),
        ("# see https://deploy:glpat-secret@git.example/x.git\n", f"# see {MASK}\n"),
        ("# pass: hunter2 (temporary)\n", f"# pass: {MASK} (temporary)\n"),
        ("  # indented note\r\n", "  # indented note\r\n"),
    ],
)
def test_env_comments_are_shown_with_secret_looking_words_masked(comment: str, shown: str) -> None:
    assert mask_comment(comment) == shown
    assert _env_shown(f"AGENT_NAME=atlas\n{comment}")[1] == shown


def test_a_value_in_rc_conf_local_that_overrides_ours_is_reported(example: Path) -> None:
    """rc_conf_files reads /etc/rc.conf.local after /etc/rc.conf (docs/freebsd.md#where-rcconf-values-come-from)."""
    manifest = Manifest.load(example / "fbsd1")
    local = b'pf_enable="NO"\ncloned_interfaces="lo1"\nsshd_enable="YES"\n'
    hp = plan_host(manifest, example / "fbsd1", {"/etc/rc.conf.local": local})
    assert len(hp.warnings) == 2
    assert any('pf_enable="NO"' in w and '"YES"' in w for w in hp.warnings)
    assert any('cloned_interfaces="lo1" (lacks bridge0' in w for w in hp.warnings)
    assert all("edit /etc/rc.conf.local" in w for w in hp.warnings)
    assert plan_host(manifest, example / "fbsd1", {"/etc/rc.conf.local": b'pf_enable="YES"\n'}).warnings == []
