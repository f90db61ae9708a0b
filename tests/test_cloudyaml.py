"""The guests' cloud-config emitter (provision/cloudyaml.py): block-style YAML that FreeBSD
14's yaml.lua and libyaml read alike (docs/freebsd.md#nuageinit-yaml), and a refusal for
every value it cannot write that way."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from provision.cloudyaml import RESERVED, Node, UnsafeYaml, dump, extend, ssh_host_key
from provision.guestseed import user_data

from .conftest import COLLECTION, REPO

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMa5+OOUOeHAgro0I6znJPof6D+xT8E4zWauLN9ut7qn op@x"
# What the emitter may write, and nothing else: block collections, `'…'` one-line strings,
# `|-` literal blocks, and plain scalars only for keys and true/false.
ALLOWED_STYLES = {"'", "|"}


def styles(text: str) -> list[tuple[str, str | None, str]]:
    """(event, style, value) for every node PyYAML (libyaml's grammar) reads in TEXT."""
    out: list[tuple[str, str | None, str]] = []
    for event in yaml.parse(text):
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            out.append((type(event).__name__, "flow" if event.flow_style else "block", ""))
        elif isinstance(event, yaml.ScalarEvent):
            out.append(("ScalarEvent", event.style, event.value))
    return out


def assert_conservative(text: str) -> None:
    seen = styles(text)
    flow = [e for e in seen if e[1] == "flow"]
    assert not flow, f"flow collections (yaml.lua misreads `false,` in them): {flow}"
    for kind, style, value in seen:
        if kind == "ScalarEvent" and style is None:
            # plain: a key, or a boolean at the end of its line
            assert value in ("true", "false") or (value.replace("_", "").isalnum() and value.islower()), value
        elif kind == "ScalarEvent":
            assert style in ALLOWED_STYLES, (style, value)


def keypair(directory: Path, kind: str) -> tuple[str, str]:
    key = directory / f"host_{kind}"
    argv = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "novavm", "-f", str(key)]
    subprocess.run(argv + (["-b", "3072"] if kind == "rsa" else []), check=True)
    return key.read_text(), (directory / f"host_{kind}.pub").read_text()


def test_the_guest_user_data_is_block_yaml_with_no_flow_collection_and_no_double_quote() -> None:
    text = user_data(KEY, "Managed by warden-provision.\n# Rendered from agents/nova/.env.")
    assert text.startswith("#cloud-config\n# Managed by warden-provision.\n# Rendered from agents/nova/.env.\n")
    assert_conservative(text)
    assert "ssh_pwauth: false\n" in text  # a plain boolean at the end of its line
    assert '"' not in text and "\\" not in text  # yaml.lua never unescapes


def test_the_private_host_key_round_trips_byte_for_byte(tmp_path: Path) -> None:
    """What the module seeds (extend + ssh_host_key), read back: nuageinit writes the value
    and a line break (nuageinit ssh_keys), which must be ssh-keygen's file exactly."""
    base = user_data(KEY, "Managed by warden-provision.")
    for kind in ("ed25519", "rsa"):
        private, public = keypair(tmp_path, kind)
        text = extend(base, ssh_host_key(kind, private, public))
        assert_conservative(text)
        data = yaml.safe_load(text)
        assert (data["ssh_keys"][f"{kind}_private"] + "\n").encode() == private.encode()
        assert data["ssh_keys"][f"{kind}_public"] + "\n" == public
        assert f"    {private.splitlines()[1]}\n" in text  # a `|-` literal block, not an escaped string
        assert "\\n" not in text
        assert data["users"] == [{"name": "root", "ssh_authorized_keys": [KEY]}]


def test_the_seed_refuses_a_second_ssh_keys_or_a_file_that_is_not_ours(tmp_path: Path) -> None:
    private, public = keypair(tmp_path, "ed25519")
    seeded = extend(user_data(KEY), ssh_host_key("ed25519", private, public))
    with pytest.raises(UnsafeYaml, match="already has a top-level 'ssh_keys'"):
        extend(seeded, ssh_host_key("ed25519", private, public))
    with pytest.raises(UnsafeYaml, match="#cloud-config"):
        extend('{"users": []}\n', ssh_host_key("ed25519", private, public))
    with pytest.raises(UnsafeYaml, match="does not end with a line break"):
        ssh_host_key("ed25519", private.rstrip("\n"), public)


# Hostile text inside what the emitter accepts: YAML indicators, words YAML 1.1 or yaml.lua
# read as booleans, null or numbers, `- `, `: `, `---`, `|`, `>`, anchors, backslashes.
TRICKY = [
    "true",
    "no",
    "on",
    "off",
    "~",
    "null",
    "- x",
    "a: b",
    "---",
    "|",
    ">",
    "&a",
    "*a",
    "\\n",
    "\\",
    "%",
    "1",
    "-1.5",
]
TRICKY += ["2024-01-01 10:00", ",", "@", "!tag", "?", ":", "enabled"]
LINE_CHARS = st.sampled_from([c for c in map(chr, range(32, 127)) if c != "'"])
BLOCK_CHARS = st.sampled_from([c for c in map(chr, range(33, 127)) if c not in "\"#'[]{}"])
one_line = st.lists(st.one_of(st.sampled_from([*TRICKY, "#c", '"q"', "{a: 1}", "[b]"]), LINE_CHARS), max_size=8).map(
    "".join
)
block_line = st.builds(
    lambda a, mid, b: a + mid + b,
    BLOCK_CHARS,
    st.lists(st.one_of(st.sampled_from([*TRICKY, " "]), BLOCK_CHARS), max_size=8).map("".join),
    BLOCK_CHARS,
).filter(lambda s: not s.endswith(" "))
multi_line = st.lists(block_line, min_size=2, max_size=5).map("\n".join)
keys = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(lambda k: k not in RESERVED)
scalars = st.one_of(one_line, multi_line, st.booleans())


def _entry(mapping: dict[str, Any]) -> bool:
    return any(isinstance(v, bool) or (isinstance(v, str) and "\n" not in v) for v in mapping.values())


nodes = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.dictionaries(keys, inner, min_size=1, max_size=3),
        st.lists(
            st.one_of(
                one_line,
                st.booleans(),
                st.dictionaries(keys, inner, min_size=1, max_size=3).filter(_entry),
            ),
            min_size=1,
            max_size=3,
        ),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, nodes, min_size=1, max_size=4))
def test_what_the_emitter_writes_reads_back_as_given(data: dict[str, Node]) -> None:
    text = dump(data, "Managed by warden-provision.")
    assert yaml.safe_load(text) == data
    assert_conservative(text)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"a": "it's"}, "single quote"),
        ({"a": 'say "hi"\nthen'}, "quotes"),
        ({"a": "key\n#comment"}, "`#`"),
        ({"a": "line\n\nafter a blank line"}, "empty"),
        ({"a": "line\n  indented"}, "starts or ends with a space"),
        ({"a": "trailing \nspace"}, "starts or ends with a space"),
        ({"a": "ends with a line break\n"}, "empty"),
        ({"a": "tab\there"}, "printable ASCII"),
        ({"a": "caf\u00e9"}, "printable ASCII"),
        ({"a": "{a\nb}"}, "brackets"),
        ({"a": "since 2024-01-01\n12 days"}, "ends with a date"),
        ({"on": "x"}, "reads as a boolean"),
        ({"Users": "x"}, "lowercase word"),
        ({"a": []}, "empty sequence"),
        ({"a": {}}, "empty mapping"),
        ({"a": None}, "NoneType"),
        ({"a": 3}, "int"),
        ({"a": [["nested"]]}, "sequence entry"),
        ({"a": ["x\ny"]}, "sequence entry"),
        ({"a": [{"content": "x\ny"}]}, "one-line value first"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_value_the_emitter_cannot_write_safely_is_refused(data: dict[str, Any], why: str) -> None:
    with pytest.raises(UnsafeYaml, match=why.replace("`", "`?")):
        dump(data)


def test_the_module_runs_the_same_emitter_from_the_collection_and_the_built_collection(tmp_path: Path) -> None:
    """plugins/module_utils/cloudyaml.py is a link to provision/cloudyaml.py; ansible-galaxy
    stores a link that leaves the collection as the file it points to."""
    link = COLLECTION / "plugins/module_utils/cloudyaml.py"
    assert link.is_symlink() and link.resolve() == (REPO / "provision/cloudyaml.py").resolve()
    galaxy = str(Path(sys.executable).with_name("ansible-galaxy"))
    subprocess.run(
        [galaxy, "collection", "build", "--output-path", str(tmp_path), str(COLLECTION)],
        check=True,
        capture_output=True,
    )
    (built,) = tmp_path.glob("warden-provision-*.tar.gz")
    with tarfile.open(built) as tar:
        member = tar.getmember("plugins/module_utils/cloudyaml.py")
        assert member.isfile()
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == (REPO / "provision/cloudyaml.py").read_bytes()
