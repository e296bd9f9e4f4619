"""Identifier syntax (registry.handle): parsing, ASCII case folding, prefixes, path decoding."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry import handle as hs
from registry.errors import InvalidHandle

# --- parse: table-driven ---------------------------------------------------------------------

GOOD = [
    # text, prefix, suffix
    ("88.118.8/abc", "88.118.8", "abc"),
    ("88/x", "88", "x"),
    ("88.118.8/a/b/c", "88.118.8", "a/b/c"),  # the first '/' separates; later ones are suffix
    ("88.118.8/ABC", "88.118.8", "ABC"),  # spelling kept
    ("0.NA/88.118.8", "0.NA", "88.118.8"),
    ("88.118.8/ é ü 中文", "88.118.8", " é ü 中文"),  # space is not a control character
    ("Ä.b/Ö", "Ä.b", "Ö"),
    ("1/" + "x" * 2046, "1", "x" * 2046),  # exactly 2048 bytes
    ("1/" + "é" * 1023, "1", "é" * 1023),  # exactly 2048 UTF-8 bytes (1025 characters)
    ("88.1/%2F", "88.1", "%2F"),  # no percent-decoding in parse
]

BAD = [
    # text, words the message must contain
    ("", "empty"),
    ("abc", "no '/'"),
    ("88.118.8", "no '/'"),
    ("/abc", "empty prefix"),
    ("/", "empty prefix"),
    ("88.1/", "empty suffix"),
    ("88.1/a\x00b", "U+0000"),
    ("88.1/a\tb", "U+0009"),
    ("88.1/a\nb", "U+000A"),
    ("88.1/a\x1fb", "U+001F"),
    ("88.1/a\x7fb", "U+007F"),
    ("8\x018/abc", "U+0001"),
    ("88.1/\ud800", "U+D800"),  # lone high surrogate
    ("88.1/x\udfff", "U+DFFF"),  # lone low surrogate
    ("1/" + "x" * 2047, "2048 bytes"),  # 2049 bytes
    ("1/" + "é" * 1024, "2048 bytes"),  # 2050 bytes but only 1026 characters
    ("88..1/x", "empty dotted segment"),
    (".88/x", "empty dotted segment"),
    ("88./x", "empty dotted segment"),
    ("./x", "empty dotted segment"),
]


@pytest.mark.parametrize(("text", "prefix", "suffix"), GOOD, ids=lambda v: repr(v)[:30])
def test_parse_good(text: str, prefix: str, suffix: str) -> None:
    h = hs.parse(text)
    assert (h.text, h.prefix, h.suffix) == (text, prefix, suffix)
    assert str(h) == text
    assert h.prefix_key == hs.fold(prefix)
    assert h.suffix_key == hs.fold(suffix)
    assert h.key == hs.fold(text)


@pytest.mark.parametrize(("text", "words"), BAD, ids=lambda v: repr(v)[:30])
def test_parse_bad(text: str, words: str) -> None:
    with pytest.raises(InvalidHandle) as err:
        hs.parse(text)
    assert words in err.value.message
    assert err.value.response_code == 102


def test_case_insensitive_key_keeps_spelling() -> None:
    upper, lower = hs.parse("88.118.8/ABC"), hs.parse("88.118.8/abc")
    assert upper.key == lower.key == "88.118.8/abc"
    assert upper.text == "88.118.8/ABC"
    assert upper != lower  # the spelling is part of the parsed value


def test_fold_leaves_non_ascii_letters_alone() -> None:
    assert hs.fold("ÄÖÜ/ABC/İ/Σ") == "ÄÖÜ/abc/İ/Σ"


def test_prefix_record() -> None:
    h = hs.parse("0.na/88.118.8")
    assert h.is_prefix_record
    assert h.homing_prefix == "88.118.8"
    ordinary = hs.parse("88.118.8/x")
    assert not ordinary.is_prefix_record
    assert ordinary.homing_prefix == "88.118.8"
    rec = hs.prefix_record("88.118.8")
    assert (rec.text, rec.prefix, rec.suffix) == ("0.NA/88.118.8", "0.NA", "88.118.8")
    assert rec == hs.parse("0.NA/88.118.8")


# --- check_prefix -------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["88", "88.118.8", "0.NA", "Ä.b", "1" * 2048])
def test_check_prefix_good(prefix: str) -> None:
    assert hs.check_prefix(prefix) == prefix


@pytest.mark.parametrize(
    ("prefix", "words"),
    [
        ("", "empty"),
        ("a/b", "'/'"),
        ("88.118.8/", "'/'"),
        ("88..1", "empty dotted segment"),
        (".88", "empty dotted segment"),
        ("88.", "empty dotted segment"),
        (".", "empty dotted segment"),
        ("88\n", "U+000A"),
        ("88\x7f", "U+007F"),
        ("88\ud800", "U+D800"),
        ("1" * 2049, "2048 bytes"),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_check_prefix_bad(prefix: str, words: str) -> None:
    with pytest.raises(InvalidHandle) as err:
        hs.check_prefix(prefix)
    assert words in err.value.message


# --- parent_prefixes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "parents"),
    [
        ("88.118.8", ["88.118.8", "88.118", "88"]),
        ("88", ["88"]),
        ("0.NA", ["0.NA", "0"]),
        ("1.2.3.4", ["1.2.3.4", "1.2.3", "1.2", "1"]),
    ],
)
def test_parent_prefixes(prefix: str, parents: list[str]) -> None:
    assert hs.parent_prefixes(prefix) == parents


# --- decode_path --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("88.118.8%2Fabc", "88.118.8/abc"),
        ("88.118.8/abc", "88.118.8/abc"),
        ("88.1/%C3%A9", "88.1/é"),
        ("88.1/%e4%b8%ad", "88.1/中"),
        ("88.1/a+b", "88.1/a+b"),  # a path, not a form: '+' stays '+'
        ("88.1/%2525", "88.1/%25"),  # decoded once only
        ("88.1/é", "88.1/é"),
    ],
)
def test_decode_path_good(raw: str, text: str) -> None:
    assert hs.decode_path(raw) == text


@pytest.mark.parametrize(
    "raw",
    [
        "88.1/%FF",  # not UTF-8 at all
        "88.1/%C3",  # truncated sequence
        "88.1/%C0%AF",  # overlong '/'
        "88.1/%ED%A0%80",  # an encoded surrogate
    ],
)
def test_decode_path_bad(raw: str) -> None:
    with pytest.raises(InvalidHandle) as err:
        hs.decode_path(raw)
    assert "UTF-8" in err.value.message


# --- properties ---------------------------------------------------------------------------------

# Every code point, lone surrogates included.
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
ANY_TEXT = st.text(ANY_CHAR, max_size=40)
# Characters valid in a handle: no control character (C0, DEL, C1) and no surrogate.
VALID_CHAR = st.characters(exclude_categories=["Cs", "Cc"])  # C1 controls left undecided
SEGMENT = st.text(VALID_CHAR.filter(lambda c: c not in "./"), min_size=1, max_size=8)
PREFIX = st.lists(SEGMENT, min_size=1, max_size=4).map(".".join)
SUFFIX = st.text(VALID_CHAR, min_size=1, max_size=30)
VALID_HANDLE = st.builds(lambda p, s: f"{p}/{s}", PREFIX, SUFFIX)


@given(VALID_HANDLE)
def test_valid_handles_are_accepted(text: str) -> None:
    h = hs.parse(text)
    assert h.text == text
    assert f"{h.prefix}/{h.suffix}" == text
    assert "/" not in h.prefix


@given(st.one_of(ANY_TEXT, VALID_HANDLE, ANY_TEXT.map(lambda t: "88.1/" + t)))
def test_parse_key_is_fold_of_text(text: str) -> None:
    try:
        h = hs.parse(text)
    except InvalidHandle:
        return  # the only exception parse may raise
    assert h.text == text
    assert h.key == hs.fold(text)
    assert h.key == f"{h.prefix_key}/{h.suffix_key}"


@given(ANY_TEXT)
def test_fold_changes_only_ascii_capitals(text: str) -> None:
    folded = hs.fold(text)
    assert len(folded) == len(text)
    for before, after in zip(text, folded, strict=True):
        if "A" <= before <= "Z":
            assert after == chr(ord(before) + 32)
        else:
            assert after == before


@given(ANY_TEXT)
def test_fold_is_idempotent(text: str) -> None:
    assert hs.fold(hs.fold(text)) == hs.fold(text)


@given(VALID_HANDLE)
def test_decode_path_round_trips_quote(text: str) -> None:
    assert hs.decode_path(quote(text)) == text
    assert hs.decode_path(quote(text, safe="")) == text
