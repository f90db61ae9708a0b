"""The .env reader/writer: python-dotenv's reading, byte-for-byte rewriting, file:line errors."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values
from hypothesis import given, settings
from hypothesis import strategies as st

from provision.envfile import EnvFile, EnvFileError, atomic_write, quote

HAND_WRITTEN = (
    "# atlas — edited by hand\n"
    "export AGENT_NAME=atlas\n"
    "\n"
    "ANTHROPIC_API_KEY='sk-ant-xyz'   # the app's key\n"
    'GREETING="hello world"\n'
    "AGENT_SUBNET_BASE=10.0.1\n"
)


def test_unchanged_file_is_rewritten_byte_for_byte(tmp_path: Path) -> None:
    env = EnvFile.parse(HAND_WRITTEN, tmp_path / ".env")
    assert env.render() == HAND_WRITTEN


def test_values_are_read_as_python_dotenv_reads_them(tmp_path: Path) -> None:
    env = EnvFile.parse(HAND_WRITTEN, tmp_path / ".env")
    assert env.values() == dotenv_values(stream=io.StringIO(HAND_WRITTEN), interpolate=False)


def test_set_changes_only_that_line_and_keeps_export_comments_and_order(tmp_path: Path) -> None:
    env = EnvFile.parse(HAND_WRITTEN, tmp_path / ".env")
    assert env.set("AGENT_NAME", "hermes")
    assert env.set("NEW_KEY", "v")
    assert not env.set("GREETING", "hello world")
    text = env.render()
    assert text.splitlines() == [
        "# atlas — edited by hand",
        "export AGENT_NAME=hermes",
        "",
        "ANTHROPIC_API_KEY='sk-ant-xyz'   # the app's key",
        'GREETING="hello world"',
        "AGENT_SUBNET_BASE=10.0.1",
        "NEW_KEY=v",
    ]


def test_crlf_and_bom_survive_a_rewrite(tmp_path: Path) -> None:
    text = "\ufeffA=1\r\n# c\r\nB=2\r\n"
    env = EnvFile.parse(text, tmp_path / ".env")
    assert env.values() == {"A": "1", "B": "2"}
    env.set("B", "3")
    env.set("C", "4")
    assert env.render() == "\ufeffA=1\r\n# c\r\nB=3\r\nC=4\r\n"


def test_malformed_line_is_an_error_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("A=1\r\n\r\nthis is not an assignment\r\nB=2\r\n")
    with pytest.raises(EnvFileError) as err:
        EnvFile.load(path)
    assert err.value.line == 3
    assert f"{path}:3:" in str(err.value)


def test_non_utf8_bytes_are_an_error_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(b"A=1\nB=\xff\xfe\n")
    with pytest.raises(EnvFileError) as err:
        EnvFile.load(path)
    assert err.value.line == 2


@pytest.mark.parametrize("value", ["plain", "with space", "$(touch /tmp/x)", "it's", 'say "hi"', "a\\b", "", "x=y&z"])
def test_quoted_values_read_back_identically_by_dotenv_and_sh(tmp_path: Path, value: str) -> None:
    line = f"K={quote(value)}\n"
    assert dotenv_values(stream=io.StringIO(line), interpolate=False)["K"] == value
    script = tmp_path / "env.sh"
    script.write_text(line)
    out = subprocess.run(["sh", "-c", f'. "{script}"; printf %s "$K"'], capture_output=True, text=True, check=True)
    assert out.stdout == value


def test_atomic_write_sets_mode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "agents" / "a" / ".env"
    atomic_write(target, "A=1\n", 0o600)
    assert target.read_text() == "A=1\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in target.parent.iterdir()] == [".env"]


# -- fuzzing: thousands of inputs, no crash other than our own EnvFileError -------------

env_lines = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40),
    st.builds(
        lambda k, v: f"{k}={v}", st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), st.text(max_size=20)
    ),
    st.builds(
        lambda k, v: f"export {k}='{v}'",
        st.from_regex(r"[A-Z_]{1,6}", fullmatch=True),
        st.text(alphabet=st.characters(blacklist_characters="'"), max_size=20),
    ),
    st.just("# comment"),
    st.just(""),
)


@settings(max_examples=3000, deadline=None)
@given(lines=st.lists(env_lines, max_size=12), crlf=st.booleans(), bom=st.booleans())
def test_fuzz_reader_never_crashes_and_round_trips(lines: list[str], crlf: bool, bom: bool) -> None:
    text = ("\ufeff" if bom else "") + ("\r\n" if crlf else "\n").join(lines)
    try:
        env = EnvFile.parse(text, Path("fuzz.env"))
    except EnvFileError as exc:
        assert exc.line >= 1
        return
    assert env.render() == text
    expected = dotenv_values(stream=io.StringIO(text.lstrip("\ufeff")), interpolate=False)
    assert env.values() == {k: ("" if v is None else v) for k, v in expected.items()}


@settings(max_examples=1000, deadline=None)
@given(
    key=st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True),
    value=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=30),
)
def test_fuzz_set_then_read_gives_the_value_back(key: str, value: str) -> None:
    env = EnvFile.parse(HAND_WRITTEN, Path("x.env"))
    env.set(key, value)
    again = EnvFile.parse(env.render(), Path("x.env"))
    assert again.values()[key] == value
