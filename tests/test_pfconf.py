"""Hooking the warden anchor into an operator's pf.conf in pfctl's order (docs/freebsd.md#pf-statement-order)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from provision.pfconf import MARKER, hook, is_hooked, section_order_errors, unhook

OPERATOR = """\
ext_if = "vtnet0"
jail_net = "10.17.89.0/24"
table <bruteforce> persist
set skip on lo0
set block-policy drop
scrub in all
nat on $ext_if from $jail_net to any -> ($ext_if:0)
rdr pass on $ext_if proto tcp to port 8080 -> 10.17.89.2 port 80
block in all
pass out all keep state
pass in on $ext_if proto tcp to port ssh flags S/SA keep state \\
    (max-src-conn 10, overload <bruteforce> flush global)
"""


def test_nat_anchor_opens_the_translation_section() -> None:
    # translation is first-match: ahead of the operator's nat, ours decides the agent networks
    lines = hook(OPERATOR).splitlines()
    assert (
        lines.index(f'nat-anchor "warden"  {MARKER}')
        == lines.index("nat on $ext_if from $jail_net to any -> ($ext_if:0)") - 1
    )


def test_filter_anchor_and_load_open_the_filter_section() -> None:
    # every deciding rule in the anchor is quick, so the operator's later rules cannot
    # open or close agent traffic (docs/isolation.md)
    lines = hook(OPERATOR).splitlines()
    at = lines.index("block in all")
    assert lines[at - 2 : at] == [
        f'anchor "warden"  {MARKER}',
        f'load anchor "warden" from "/etc/pf.warden.conf"  {MARKER}',
    ]


def test_a_file_hooked_at_the_end_by_an_older_version_is_rehooked_first() -> None:
    old = OPERATOR + f'anchor "warden"  {MARKER}\nload anchor "warden" from "/etc/pf.warden.conf"  {MARKER}\n'
    old = old.replace("rdr pass", f'nat-anchor "warden"  {MARKER}\nrdr pass')
    assert hook(old) == hook(OPERATOR)


def test_hooks_the_operator_wrote_by_hand_are_left_where_they_are() -> None:
    text = OPERATOR + 'nat-anchor "warden"\nanchor "warden"\nload anchor "warden" from "/etc/pf.warden.conf"\n'
    assert hook(text) == text


def test_operators_lines_are_untouched_and_in_order() -> None:
    hooked = hook(OPERATOR)
    assert [ln for ln in hooked.splitlines() if MARKER not in ln] == OPERATOR.splitlines()
    assert section_order_errors(hooked) == []


def test_hook_is_idempotent_and_unhook_restores_the_original() -> None:
    once = hook(OPERATOR)
    assert hook(once) == once
    assert is_hooked(once)
    assert unhook(once) == OPERATOR


def test_a_file_without_nat_rules_gets_the_nat_anchor_before_the_first_filter_rule() -> None:
    text = "set skip on lo0\nblock in all\npass out all keep state\n"
    lines = hook(text).splitlines()
    assert lines[1].startswith('nat-anchor "warden"') and lines[2].startswith('anchor "warden"')
    assert lines[4] == "block in all"
    assert section_order_errors(hook(text)) == []


def test_an_empty_pf_conf_gets_all_three_lines_in_order() -> None:
    assert [ln.split("  #")[0] for ln in hook("").splitlines()] == [
        'nat-anchor "warden"',
        'anchor "warden"',
        'load anchor "warden" from "/etc/pf.warden.conf"',
    ]


def test_order_checker_uses_pfctls_wording() -> None:
    errors = section_order_errors("pass out all\nnat on em0 from any to any -> (em0)\n")
    assert errors == [(2, "Rules must be in order: options, ethernet, normalization, queueing, translation, filtering")]


sections = [
    ["set skip on lo0", "set block-policy return"],
    ["scrub in all"],
    [
        "nat on $ext_if from 10.1.0.0/24 to any -> ($ext_if)",
        "rdr on $ext_if proto tcp to port 80 -> 10.1.0.2",
        'nat-anchor "other/*"',
    ],
    ["block in all", "pass out all keep state", 'anchor "other/*"', "pass in proto tcp to port ssh"],
]
noise = st.sampled_from(["", "# a comment", 'lan = "10.9.0.0/24"', "table <t> persist"])


@settings(max_examples=300, deadline=None)
@given(
    picks=st.tuples(*[st.lists(st.sampled_from(sec), max_size=3) for sec in sections]),
    extra=st.lists(noise, max_size=4),
)
def test_hook_output_is_always_in_section_order_and_keeps_every_line(
    picks: tuple[list[str], ...], extra: list[str]
) -> None:
    lines = list(extra) + [line for sec in picks for line in sec]
    text = "".join(f"{line}\n" for line in lines)
    hooked = hook(text)
    assert section_order_errors(hooked) == []
    assert [ln for ln in hooked.splitlines() if MARKER not in ln] == lines
    assert hook(hooked) == hooked
