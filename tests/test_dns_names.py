"""The handle <-> DNS name mapping: examples, round trips for any UTF-8, refusals."""

from __future__ import annotations

import dns.name
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from registry.errors import InvalidHandle
from registry.handle import Handle, parse
from resolver.dns_names import (
    Ancestor,
    NameTooLong,
    Unmapped,
    classify,
    escape,
    from_name,
    to_name,
    unescape,
)

ZONE = dns.name.from_text("id.example.")
LDH_ = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


@pytest.mark.parametrize(
    ("handle", "expected"),
    [
        ("88.118.8/JXDY2106023", "JXDY2106023._.8.118.88.id.example."),
        ("88.118.8/a/b.c", "a_2fb_2ec._.8.118.88.id.example."),
        ("88.118.8/Bäume", "B_c3_a4ume._.8.118.88.id.example."),
        ("88.118.8/_ x", "_5f_20x._.8.118.88.id.example."),
        ("0.NA/88.118.8", "88_2e118_2e8._.NA.0.id.example."),
        ("88.118.8/..", "_2e_2e._.8.118.88.id.example."),
    ],
)
def test_examples(handle: str, expected: str) -> None:
    assert to_name(parse(handle), ZONE) == name(expected)
    assert from_name(name(expected), ZONE).text == handle


def test_a_long_suffix_is_cut_into_labels_last_part_first() -> None:
    h = parse("88.118.8/" + "a" * 130)
    labels = to_name(h, ZONE).relativize(ZONE).labels
    assert [len(label) for label in labels] == [6, 63, 63, 1, 1, 3, 2]
    assert labels[1].endswith(b"_") and labels[2].endswith(b"_")
    assert from_name(to_name(h, ZONE), ZONE) == h
    # the upper parts of the name are an ancestor, not a handle
    assert classify(to_name(h, ZONE).parent(), ZONE) == Ancestor()


def test_cuts_never_split_an_escape() -> None:
    h = parse("88.118.8/" + "é" * 30)  # 60 bytes, 180 escaped
    labels = to_name(h, ZONE).relativize(ZONE).labels
    for label in labels[:-4]:
        payload = label.removesuffix(b"_")
        assert len(payload) % 3 == 0 and payload.startswith(b"_")
    assert from_name(to_name(h, ZONE), ZONE) == h


def test_names_over_255_bytes_are_refused_clearly() -> None:
    with pytest.raises(NameTooLong, match="too long to be a DNS name"):
        to_name(parse("88.118.8/" + "é" * 45), ZONE)
    segment = "x" * 64
    with pytest.raises(NameTooLong, match="prefix segment is longer than a DNS label"):
        to_name(parse(f"88.{segment}/a"), ZONE)


def test_dns_case_folding_is_handle_case_folding() -> None:
    lower = from_name(name("jxdy2106023._.8.118.88.id.example."), ZONE)
    upper = from_name(name("JXDY2106023._.8.118.88.ID.EXAMPLE."), ZONE)
    assert lower.key == upper.key and lower.text != upper.text
    # escapes' hex digits in either case are one character
    assert from_name(name("a_2Fb._.8.id.example."), ZONE).text == "8/a/b"
    # é and É differ in both systems (neither folds beyond ASCII)
    assert from_name(name("_c3_a9._.8.id.example."), ZONE).key != (
        from_name(name("_c3_89._.8.id.example."), ZONE).key
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("x_61._.8.id.example.", "not canonical"),
        ("a_2G._.8.id.example.", "neither literal nor an _XX escape"),
        ("a_ff._.8.id.example.", "invalid start byte"),
        ("a._.id.example.", "no prefix labels"),
        ("A.b._.8.id.example.", "does not end in '_'"),
        ("b.a_._.8.id.example.", "not the canonical name"),
        ("a._._.8.id.example.", "neither literal"),
        ("a_01._.8.id.example.", "control character"),
        ("a._.8_2e1.id.example.", "not the canonical name"),
        ("a._.\\255.id.example.", "neither literal"),
        ("a b._.8.id.example.", "neither literal"),
    ],
)
def test_names_that_map_to_no_handle(text: str, reason: str) -> None:
    meaning = classify(name(text), ZONE)
    assert isinstance(meaning, Unmapped)
    assert reason in meaning.reason
    with pytest.raises(InvalidHandle, match=reason):
        from_name(name(text), ZONE)


@pytest.mark.parametrize(
    "text",
    ["id.example.", "8.118.88.id.example.", "_.8.118.88.id.example.", "x_.a_._.8.id.example."],
)
def test_ancestors_of_handle_names(text: str) -> None:
    assert classify(name(text), ZONE) == Ancestor()


_segment = st.text(st.characters(codec="utf-8", exclude_characters="./"), min_size=1, max_size=8)
_prefix = st.lists(_segment, min_size=1, max_size=4).map(".".join)
_suffix = st.text(st.characters(codec="utf-8"), min_size=1, max_size=60)


def _handle(prefix: str, suffix: str) -> Handle | None:
    try:
        return parse(f"{prefix}/{suffix}")
    except InvalidHandle:
        return None


@settings(max_examples=400, deadline=None)
@given(_prefix, _suffix)
@example("88.118.8", "a" * 62 + "é")
@example("88.118.8", "/" * 21 + "a")
@example("0.NA", " ")
def test_round_trip_any_utf8(prefix: str, suffix: str) -> None:
    h = _handle(prefix, suffix)
    if h is None:
        return
    try:
        n = to_name(h, ZONE)
    except NameTooLong:
        segments = [len(escape(s)) for s in h.prefix.split(".")]
        suffix = len(escape(h.suffix))
        most = suffix + 3 * (suffix // 60 + 1) + 2 + sum(n + 1 for n in segments)
        assert max(segments) > 63 or most + len(ZONE.to_wire()) > 255
        return
    assert len(n.to_wire()) <= 255
    for label in n.relativize(ZONE).labels:
        assert 0 < len(label) <= 63 and set(label) <= LDH_
    assert from_name(n, ZONE) == h
    # any ASCII case change of the name names the same handle (a different spelling)
    flipped = dns.name.Name([label.swapcase() for label in n.labels])
    assert from_name(flipped, ZONE).key == h.key


@given(st.text(st.characters(codec="utf-8"), min_size=1, max_size=40))
def test_escape_round_trips(text: str) -> None:
    assert unescape(escape(text)) == text
    assert unescape(escape(text).upper()).lower() == text.lower() or not text.isascii()
