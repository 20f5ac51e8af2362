"""Properties of rename, select and transplant over random trees (every dtype, zero-size axes, unicode names)."""

from __future__ import annotations

import fnmatch
import glob as globlib
import re

from hypothesis import assume, given
from hypothesis import strategies as st

from surgery.ops.names import rename, select
from surgery.ops.transplant import transplant

from .strategies import signature, tensor_bytes, trees

# Rules that leave every name as it is: an empty match replaced by nothing, or every match by itself.
IDENTITY_RULES = [("^", ""), (r"\Z", ""), ("(?s).+", r"\g<0>"), ("x", "x")]
# A rule and its inverse; \A and \Z anchor at the very ends, even in names holding newlines.
ROUND_TRIPS = [
    ((r"\A", "pre/"), (r"\Apre/", "")),
    ((r"\Z", ".sfx"), (r"\.sfx\Z", "")),
    ((r"(?s)\A(.*)\Z", r"[\1]"), (r"(?s)\A\[(.*)\]\Z", r"\1")),
]


@given(trees(), st.sampled_from(IDENTITY_RULES))
def test_identity_rule_is_the_identity(tree, rule):
    assume(len(tree) and any(re.search(rule[0], name) for name in tree))
    new, report = rename(tree, [rule])
    assert signature(new) == signature(tree)
    assert tensor_bytes(new) == tensor_bytes(tree)
    assert report.changes == []
    assert all(new[name] is tree[name] for name in tree)  # entries shared, nothing re-made


@given(trees(), st.sampled_from(ROUND_TRIPS))
def test_rename_then_inverse_rename_round_trips(tree, pair):
    assume(len(tree))
    forward, inverse = pair
    there, report = rename(tree, [forward])
    assert len(report.changes) == len(tree)
    back, _ = rename(there, [inverse])
    assert signature(back) == signature(tree)
    assert tensor_bytes(back) == tensor_bytes(tree)
    assert back.convention == tree.convention and {k: v for k, v in back.metadata.items() if k != "surgery.provenance"} == {
        k: v for k, v in tree.metadata.items() if k != "surgery.provenance"
    }


@given(trees(), st.data())
def test_keep_and_drop_of_one_glob_partition_the_names(tree, data):
    assume(len(tree))
    name = data.draw(st.sampled_from(list(tree)))
    glob = globlib.escape(name[: data.draw(st.integers(0, len(name)))]) + data.draw(st.sampled_from(["*", "", "?*"]))
    assume(any(fnmatch.fnmatchcase(n, glob) for n in tree))
    kept, _ = select(tree, keep=[glob])
    if len(kept) == len(tree):
        return  # every name matches: dropping them all is refused (tested in the examples)
    dropped, report = select(tree, drop=[glob])
    assert set(kept) | set(dropped) == set(tree) and not set(kept) & set(dropped)
    assert report.names("dropped") == list(kept)
    for part in (kept, dropped):  # order kept, entries shared
        assert list(part) == [n for n in tree if n in part]
        assert all(part[n] is tree[n] for n in part)


@given(trees())
def test_transplant_of_a_tree_into_itself_copies_everything_bit_exactly(tree):
    new, report = transplant(tree, tree, strict=True)
    assert report.names("copied") == list(tree)
    assert report.facts == {"copied": len(tree), "cast": 0, "missing": 0, "unexpected": 0, "mismatched": 0}
    assert signature(new) == signature(tree)
    assert tensor_bytes(new) == tensor_bytes(tree)
    assert new.convention == tree.convention and new.format == tree.format
