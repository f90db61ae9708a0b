"""rc.conf edits with sysrc(8) semantics (docs/freebsd.md#sysrc), checked against a real sh."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provision.rcconf import Append, Delete, Edit, Remove, Set, alias_edits, apply, edits_needed, read_vars

BSDINSTALL = """\
hostname="fbsd1.example.home.arpa"
ifconfig_vtnet0="DHCP"
sshd_enable="YES"
# Set dumpdev to "AUTO" to enable crash dumps, "NO" to disable
dumpdev="AUTO"
zfs_enable="YES"
cloned_interfaces="lo1"
sshd_enable=NO   # turned off again later
"""


def sh_value(tmp_path: Path, text: str, name: str) -> str:
    script = tmp_path / "rc.conf"
    script.write_text(text)
    out = subprocess.run(["sh", "-c", f'. "{script}"; printf %s "${{{name}}}"'], capture_output=True, text=True)
    return out.stdout


@pytest.mark.parametrize("name", ["hostname", "ifconfig_vtnet0", "sshd_enable", "dumpdev", "cloned_interfaces"])
def test_read_vars_agrees_with_sh(tmp_path: Path, name: str) -> None:
    assert read_vars(BSDINSTALL)[name] == sh_value(tmp_path, BSDINSTALL, name)


def test_set_replaces_last_assignment_only_and_keeps_the_rest() -> None:
    out = apply(BSDINSTALL, [Set("sshd_enable", "YES")])
    assert out.splitlines()[2] == 'sshd_enable="YES"'  # the first one untouched
    assert out.splitlines()[-1] == 'sshd_enable="YES"'  # the last one replaced, comment gone with it
    assert out.splitlines()[:-1] == BSDINSTALL.splitlines()[:-1]


def test_set_of_a_new_variable_appends_it() -> None:
    out = apply(BSDINSTALL, [Set("pf_enable", "YES")])
    assert out == BSDINSTALL + 'pf_enable="YES"\n'


def test_set_to_the_same_value_leaves_the_operators_quoting() -> None:
    text = "zfs_enable=YES\n"
    assert apply(text, [Set("zfs_enable", "YES")]) == text


def test_append_merges_into_cloned_interfaces_and_is_idempotent() -> None:
    once = apply(BSDINSTALL, [Append("cloned_interfaces", "bridge0")])
    assert read_vars(once)["cloned_interfaces"] == "lo1 bridge0"
    assert apply(once, [Append("cloned_interfaces", "bridge0")]) == once


def test_remove_takes_one_item_out() -> None:
    text = 'cloned_interfaces="lo1 bridge0"\n'
    assert read_vars(apply(text, [Remove("cloned_interfaces", "bridge0")]))["cloned_interfaces"] == "lo1"


def test_delete_removes_every_assignment() -> None:
    out = apply(BSDINSTALL, [Delete("sshd_enable")])
    assert "sshd_enable" not in out and "hostname" in out


def test_file_without_final_newline_gets_one_before_an_append() -> None:
    assert apply("a=1", [Set("b", "2")]) == 'a=1\nb="2"\n'


@pytest.mark.parametrize("bad", ['a"b', "$(x)", "`x`", "a\\b", "a\nb"])
def test_values_sysrc_cannot_write_safely_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        apply("", [Set("x", bad)])


def test_names_that_are_not_shell_identifiers_are_refused() -> None:
    with pytest.raises(ValueError, match="atlas-2_enable"):
        apply("", [Set("atlas-2_enable", "YES")])


def test_aliases_renumbered_without_gap_after_removal() -> None:
    live = read_vars(
        'ifconfig_warden0_alias0="inet 10.0.2.1/24"\nifconfig_warden0_alias1="inet 10.0.3.1/24"\n'
        'ifconfig_warden0_alias2="inet 10.0.4.1/24"\n'
    )
    edits = alias_edits("warden0", ["10.0.2.1/24", "10.0.4.1/24"], live)
    assert edits == [
        Set("ifconfig_warden0_alias0", "inet 10.0.2.1/24"),
        Set("ifconfig_warden0_alias1", "inet 10.0.4.1/24"),
        Delete("ifconfig_warden0_alias2"),
    ]


def test_edits_needed_lists_only_changes() -> None:
    edits: list[Edit] = [Set("zfs_enable", "YES"), Set("pf_enable", "YES"), Append("cloned_interfaces", "lo1")]
    assert edits_needed(BSDINSTALL, edits) == [Set("pf_enable", "YES")]


names = st.sampled_from(["a_enable", "b_flags", "cloned_interfaces", "c"])
values = st.text(alphabet="abcXYZ019 ._-/", max_size=12)
edit = st.one_of(
    st.builds(Set, names, values),
    st.builds(Delete, names),
    st.builds(Append, names, st.text(alphabet="abc019", min_size=1, max_size=4)),
)
operator_line = st.one_of(
    st.just("# comment"),
    st.just(""),
    st.builds(lambda n, v: f'{n}="{v}"', names, values),
    st.builds(lambda n, v: f"{n}='{v}'", names, values),
    st.just('other_var="keep me" # note'),
)


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(operator_line, max_size=8), edits=st.lists(edit, max_size=6))
def test_apply_then_read_gives_the_expected_values_and_keeps_unrelated_lines(lines: list[str], edits: list) -> None:  # type: ignore[type-arg]
    text = "\n".join(lines) + ("\n" if lines else "")
    expected = read_vars(text)
    for e in edits:
        if isinstance(e, Set):
            expected[e.name] = e.value
        elif isinstance(e, Delete):
            expected.pop(e.name, None)
        else:
            items = expected.get(e.name, "").split()
            if e.item not in items:
                expected[e.name] = " ".join([*items, e.item])
    out = apply(text, edits)
    assert read_vars(out) == expected
    touched = {e.name for e in edits}
    assert [ln for ln in out.splitlines() if not any(ln.startswith(n + "=") for n in touched)] == [
        ln for ln in text.splitlines() if not any(ln.startswith(n + "=") for n in touched)
    ]
    assert apply(out, edits) == out or any(isinstance(e, Delete) for e in edits)


tricky_line = st.one_of(
    operator_line,
    st.builds(lambda n: f'{n}="x\\"y z"', names),  # an escaped quote inside double quotes
    st.builds(lambda n: f"{n}=a\\ b", names),  # an escaped blank
    st.builds(lambda n: f"export {n}='q r'", names),
    st.builds(lambda n, v: f"  {n}={v}", names, st.text(alphabet="abc019", max_size=4)),
)
any_edit = st.one_of(edit, st.builds(Remove, names, st.text(alphabet="abc019", min_size=1, max_size=4)))


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(tricky_line, max_size=10), edits=st.lists(any_edit, max_size=10))
def test_a_batch_of_edits_is_the_same_as_the_edits_one_by_one(lines: list[str], edits: list) -> None:  # type: ignore[type-arg]
    """apply reads the file once and follows each edit (it used to read it again per edit)."""
    text = "\n".join(lines) + ("\n" if lines else "")
    one_by_one = text
    for e in edits:
        one_by_one = apply(one_by_one, [e])
    assert apply(text, edits) == one_by_one
