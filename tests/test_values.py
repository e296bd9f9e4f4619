"""Handle values (registry.values), stored secrets (registry.secrets), HS_ADMIN bits
(registry.permissions): pure functions, no database."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from registry import permissions as perms
from registry import secrets
from registry import values as hv
from registry.errors import InvalidValue
from registry.permissions import Perm

TS = "2024-05-01T12:00:00Z"


def value(raw: dict[str, Any]) -> hv.Value:
    return hv.parse_value(raw, timestamp=TS)


# --- parse_value: what writers may send ------------------------------------------------------


def test_data_as_plain_string() -> None:
    v = value({"index": 1, "type": "URL", "data": "https://example.com/"})
    assert v == hv.Value(1, "URL", "string", "https://example.com/", 86400, TS, "1110")


def test_data_as_format_and_value() -> None:
    v = value({"index": 1, "type": "URL", "data": {"format": "string", "value": "https://e/"}})
    assert v == hv.Value(1, "URL", "string", "https://e/", 86400, TS, "1110")


def test_data_object_without_format_is_string() -> None:
    assert value({"index": 1, "type": "URL", "data": {"value": "x"}}).format == "string"


@pytest.mark.parametrize(("raw", "index"), [("200", 200), (" 200 ", 200), ("+7", 7), (3, 3)])
def test_index_may_be_a_numeric_string(raw: Any, index: int) -> None:
    assert value({"index": raw, "type": "URL", "data": "x"}).index == index


def test_index_bounds_accepted() -> None:
    assert value({"index": 1, "type": "URL", "data": "x"}).index == 1
    assert value({"index": 2**31 - 1, "type": "URL", "data": "x"}).index == 2**31 - 1
    assert value({"index": str(2**31 - 1), "type": "URL", "data": "x"}).index == 2**31 - 1


def test_defaults() -> None:
    v = value({"index": 1, "type": "URL", "data": "x"})
    assert v.ttl == 86400 == hv.DEFAULT_TTL
    assert v.permissions == "1110" == hv.DEFAULT_PERMISSIONS
    assert v.timestamp == TS  # the node's timestamp, not the writer's
    assert v.public_read and v.admin_read


def test_writer_timestamp_is_ignored() -> None:
    v = value({"index": 1, "type": "URL", "data": "x", "timestamp": "1970-01-01T00:00:00Z"})
    assert v.timestamp == TS


@pytest.mark.parametrize("vtype", ["HS_SECKEY", "hs_seckey", "Hs_SecKey"])
def test_seckey_defaults_to_not_public(vtype: str) -> None:
    v = value({"index": 300, "type": vtype, "data": "s"})
    assert v.permissions == "1100" == hv.SECRET_PERMISSIONS
    assert not v.public_read


def test_explicit_ttl_and_permissions() -> None:
    v = value({"index": 2, "type": "EMAIL", "data": "a@b", "ttl": "60", "permissions": "1011"})
    assert (v.ttl, v.permissions) == (60, "1011")
    assert value({"index": 2, "type": "X", "data": "a", "ttl": 0}).ttl == 0
    assert value({"index": 2, "type": "X", "data": "a", "ttl": 2**31 - 1}).ttl == 2**31 - 1
    seckey = value({"index": 300, "type": "HS_SECKEY", "data": "s", "permissions": "1110"})
    assert seckey.permissions == "1110"


def test_admin_value() -> None:
    v = value(
        {
            "index": 100,
            "type": "HS_ADMIN",
            "data": {"format": "admin", "value": {"handle": "0.NA/88.1", "index": "300"}},
        }
    )
    assert v.format == "admin"
    assert v.data == {"handle": "0.NA/88.1", "index": 300, "permissions": "111111111111"}
    given_perms = value(
        {
            "index": 100,
            "type": "HS_ADMIN",
            "data": {
                "format": "admin",
                "value": {"handle": "0.NA/88.1", "index": 0, "permissions": "011111110011"},
            },
        }
    )
    assert given_perms.data == {"handle": "0.NA/88.1", "index": 0, "permissions": "011111110011"}


@pytest.mark.parametrize(
    ("fmt", "data", "stored"),
    [
        ("base64", "aGVsbG8=", "aGVsbG8="),
        ("hex", "deadBEEF", "deadBEEF"),
        ("vlist", [{"handle": "88.1/g", "index": "300"}], [{"handle": "88.1/g", "index": 300}]),
        ("vlist", [], []),
        ("site", {"servers": []}, {"servers": []}),
        ("key", "AAAA", "AAAA"),
    ],
)
def test_other_formats(fmt: str, data: Any, stored: Any) -> None:
    v = value({"index": 5, "type": "T", "data": {"format": fmt, "value": data}})
    assert (v.format, v.data) == (fmt, stored)


# --- parse_values ------------------------------------------------------------------------------

A = {"index": 1, "type": "URL", "data": "https://a/"}
B = {"index": "2", "type": "EMAIL", "data": {"format": "string", "value": "b@c"}}


@pytest.mark.parametrize("body", [{"values": [A, B]}, [A, B]], ids=["object", "array"])
def test_parse_values_list_forms(body: Any) -> None:
    vs = hv.parse_values(body, timestamp=TS)
    assert [(v.index, v.type, v.data) for v in vs] == [
        (1, "URL", "https://a/"),
        (2, "EMAIL", "b@c"),
    ]
    assert all(v.timestamp == TS for v in vs)


def test_parse_values_single_value() -> None:
    assert hv.parse_values(A, timestamp=TS) == [value(A)]


def test_parse_values_duplicate_index() -> None:
    with pytest.raises(InvalidValue) as err:
        hv.parse_values([A, {**B, "index": "1"}], timestamp=TS)
    assert "index 1" in err.value.message
    assert err.value.index == 1


@pytest.mark.parametrize(
    "body", ["x", 5, None, True, {"values": "x"}, {"values": {"index": 1}}, [A, "x"]]
)
def test_parse_values_bad_body(body: Any) -> None:
    with pytest.raises(InvalidValue):
        hv.parse_values(body, timestamp=TS)


# --- parse_value: every bad input is an InvalidValue -----------------------------------------

OK = {"index": 1, "type": "URL", "data": "x"}


def with_(**changes: Any) -> dict[str, Any]:
    return {**OK, **changes}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in OK.items() if k != key}


def admin(ref: Any) -> dict[str, Any]:
    return {"index": 100, "type": "HS_ADMIN", "data": {"format": "admin", "value": ref}}


BAD_VALUES: list[tuple[str, Any]] = [
    ("not an object", "x"),
    ("array", [OK]),
    ("null", None),
    ("no index", without("index")),
    ("index 0", with_(index=0)),
    ("index -1", with_(index=-1)),
    ("index 2^31", with_(index=2**31)),
    ("index '2147483648'", with_(index="2147483648")),
    ("index '0'", with_(index="0")),
    ("index '-1'", with_(index="-1")),
    ("index 'abc'", with_(index="abc")),
    ("index ''", with_(index="")),
    ("index '1.0'", with_(index="1.0")),
    ("index '²'", with_(index="²")),  # a Unicode digit int() would take
    ("index '١'", with_(index="١")),  # Arabic-Indic one
    ("index true", with_(index=True)),
    ("index 1.0", with_(index=1.0)),
    ("index null", with_(index=None)),
    ("index list", with_(index=[1])),
    ("index '++200'", with_(index="++200")),
    ("index of 5000 digits", with_(index="9" * 5000)),
    ("no type", without("type")),
    ("type ''", with_(type="")),
    ("type 5", with_(type=5)),
    ("type null", with_(type=None)),
    ("type too long", with_(type="T" * 257)),
    ("type with newline", with_(type="UR\nL")),
    ("type with NUL", with_(type="URL\x00")),
    ("type with DEL", with_(type="URL\x7f")),
    ("no data", without("data")),
    ("data 5", with_(data=5)),
    ("data null", with_(data=None)),
    ("data array", with_(data=["x"])),
    ("data true", with_(data=True)),
    ("unknown format", with_(data={"format": "nope", "value": "x"})),
    ("format 5", with_(data={"format": 5, "value": "x"})),
    ("format as a list", with_(data={"format": ["string"], "value": "x"})),
    ("format as an object", with_(data={"format": {}, "value": "x"})),
    ("no value", with_(data={"format": "string"})),
    ("string value 5", with_(data={"format": "string", "value": 5})),
    ("string value object", with_(data={"format": "string", "value": {}})),
    ("bad base64", with_(data={"format": "base64", "value": "!!!"})),
    ("base64 non-ASCII", with_(data={"format": "base64", "value": "é"})),
    ("base64 not a string", with_(data={"format": "base64", "value": 5})),
    ("bad hex", with_(data={"format": "hex", "value": "xyz"})),
    ("odd hex", with_(data={"format": "hex", "value": "abc"})),
    ("admin not an object", admin("0.NA/88.1")),
    ("admin without handle", admin({"index": 300})),
    ("admin handle not a string", admin({"handle": 5, "index": 300})),
    ("admin invalid handle", admin({"handle": "nohandle", "index": 300})),
    ("admin bad index", admin({"handle": "0.NA/88.1", "index": "x"})),
    ("admin no index", admin({"handle": "0.NA/88.1"})),
    ("admin short permissions", admin({"handle": "0.NA/88.1", "index": 300, "permissions": "1"})),
    (
        "admin permissions not bits",
        admin({"handle": "0.NA/88.1", "index": 300, "permissions": "1111111111x1"}),
    ),
    ("HS_ADMIN as a string", {"index": 100, "type": "HS_ADMIN", "data": "0.NA/88.1"}),
    ("hs_admin as a string", {"index": 100, "type": "hs_admin", "data": "0.NA/88.1"}),
    ("vlist not a list", with_(data={"format": "vlist", "value": "88.1/a"})),
    ("vlist bad entry", with_(data={"format": "vlist", "value": [{"handle": "x"}]})),
    ("vlist entry not an object", with_(data={"format": "vlist", "value": ["88.1/a"]})),
    ("site number", with_(data={"format": "site", "value": 5})),
    ("ttl -1", with_(ttl=-1)),
    ("ttl 2^31", with_(ttl=2**31)),
    ("ttl 'abc'", with_(ttl="abc")),
    ("ttl '-5'", with_(ttl="-5")),
    ("ttl 1.5", with_(ttl=1.5)),
    ("ttl true", with_(ttl=True)),
    ("ttl of 5000 digits", with_(ttl="9" * 5000)),
    ("permissions '111'", with_(permissions="111")),
    ("permissions '11100'", with_(permissions="11100")),
    ("permissions '11a1'", with_(permissions="11a1")),
    ("permissions 1110", with_(permissions=1110)),
]


@pytest.mark.parametrize("raw", [raw for _, raw in BAD_VALUES], ids=[i for i, _ in BAD_VALUES])
def test_bad_value_is_invalid_value(raw: Any) -> None:
    with pytest.raises(InvalidValue) as err:
        hv.parse_value(raw, timestamp=TS)
    assert err.value.response_code == 202
    assert err.value.message


# --- to_json / from_stored ---------------------------------------------------------------------


def test_to_json_default_permissions_omitted() -> None:
    assert value(OK).to_json() == {
        "index": 1,
        "type": "URL",
        "data": {"format": "string", "value": "x"},
        "ttl": 86400,
        "timestamp": TS,
    }


def test_to_json_other_permissions_included() -> None:
    out = value({"index": 300, "type": "HS_SECKEY", "data": "s"}).to_json()
    assert out["permissions"] == "1100"
    assert value(with_(permissions="1111")).to_json()["permissions"] == "1111"


def test_to_json_always_has_timestamp() -> None:
    assert hv.Value(1, "URL", "string", "x").to_json()["timestamp"] == ""
    assert "timestamp" in value(OK).to_json()


def test_same_content_ignores_timestamp_only() -> None:
    a = hv.parse_value(OK, timestamp="t1")
    assert a.same_content(hv.parse_value(OK, timestamp="t2"))
    assert not a.same_content(hv.parse_value(with_(data="y"), timestamp="t1"))


# --- filter_values -----------------------------------------------------------------------------

VALUES = [
    hv.Value(1, "URL", "string", "u"),
    hv.Value(2, "URL.x", "string", "u"),
    hv.Value(3, "url.Y.z", "string", "u"),
    hv.Value(4, "URLX", "string", "u"),
    hv.Value(5, "EMAIL", "string", "e"),
    hv.Value(100, "HS_ADMIN", "admin", {}),
    hv.Value(6, "ÜRL", "string", "u"),
]


@pytest.mark.parametrize(
    ("indexes", "types", "expected"),
    [
        ([], [], [1, 2, 3, 4, 5, 100, 6]),
        ([], ["URL."], [1, 2, 3]),
        ([], ["url."], [1, 2, 3]),
        ([], ["URL"], [1]),
        ([], ["url"], [1]),
        ([], ["URL.X"], [2]),
        ([], ["URL.Y."], [3]),
        ([], ["URLX"], [4]),
        ([], ["ürl"], []),  # only ASCII letters fold
        ([], ["ÜRL"], [6]),
        ([], ["hs_admin"], [100]),
        ([], ["NOPE"], []),
        ([5], [], [5]),
        ([5, 100], [], [5, 100]),
        ([7], [], []),
        ([5], ["URL"], [1, 5]),
        ([1], ["URL."], [1, 2, 3]),
        ([], ["EMAIL", "URL"], [1, 5]),
    ],
)
def test_filter_values(indexes: list[int], types: list[str], expected: list[int]) -> None:
    assert [v.index for v in hv.filter_values(VALUES, indexes, types)] == expected


# --- round trip --------------------------------------------------------------------------------

TYPES = st.one_of(
    st.sampled_from(["URL", "EMAIL", "HS_SECKEY", "hs_vlist", "T" * hv.MAX_TYPE_LENGTH]),
    st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=12),
)
PERMS = st.sampled_from([None] + [format(i, "04b") for i in range(16)])
REF = st.fixed_dictionaries(
    {
        "handle": st.sampled_from(["0.NA/88.1", "88.1/Group", "88.118.8/é"]),
        "index": st.integers(1, hv.MAX_INDEX),
    }
)


@st.composite
def raw_values(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["plain", "string", "base64", "hex", "admin", "vlist", "site"]))
    vtype = "HS_ADMIN" if kind == "admin" else draw(TYPES)
    assume(kind == "admin" or vtype.upper() != "HS_ADMIN")
    data: Any
    if kind == "plain":
        data = draw(st.text())
    elif kind == "string":
        data = {"format": "string", "value": draw(st.text())}
    elif kind == "base64":
        data = {"format": "base64", "value": base64.b64encode(draw(st.binary())).decode()}
    elif kind == "hex":
        data = {"format": "hex", "value": draw(st.binary()).hex()}
    elif kind == "admin":
        ref = draw(REF)
        bits = draw(st.text(st.sampled_from("01"), min_size=12, max_size=12))
        data = {"format": "admin", "value": {**ref, "permissions": bits}}
    elif kind == "vlist":
        data = {"format": "vlist", "value": draw(st.lists(REF, max_size=4))}
    else:
        data = {"format": "site", "value": draw(st.dictionaries(st.text(), st.text()))}
    index = draw(st.integers(1, hv.MAX_INDEX))
    raw: dict[str, Any] = {
        "index": draw(st.sampled_from([index, str(index)])),
        "type": vtype,
        "data": data,
    }
    ttl = draw(st.one_of(st.none(), st.integers(0, hv.MAX_TTL)))
    if ttl is not None:
        raw["ttl"] = ttl
    permissions = draw(PERMS)
    if permissions is not None:
        raw["permissions"] = permissions
    return raw


@given(raw_values(), st.text())
def test_round_trip_through_stored_json(raw: dict[str, Any], timestamp: str) -> None:
    v = hv.parse_value(raw, timestamp=timestamp)
    assert hv.from_stored(v.to_json()) == v
    # what PostgreSQL's jsonb keeps is JSON: the served form survives a JSON round trip too
    assert hv.from_stored(json.loads(json.dumps(v.to_json()))) == v


# --- secrets -----------------------------------------------------------------------------------

FAST = 1000  # iterations for tests that are not about the cost


@pytest.fixture(scope="module")
def stored() -> str:
    return secrets.hash_secret("correct horse")  # the real default cost, paid once


def test_hash_format(stored: str) -> None:
    assert stored.startswith(f"pbkdf2-sha256${secrets.ITERATIONS}$")
    assert secrets.ITERATIONS >= 600_000
    assert "correct horse" not in stored
    assert secrets.is_hashed(stored)


def test_verify_right_and_wrong_secret(stored: str) -> None:
    assert secrets.verify_secret("correct horse", stored)
    assert secrets.verify_secret("correct horse", stored)  # again (memoised path)
    assert not secrets.verify_secret("correct horsE", stored)
    assert not secrets.verify_secret("", stored)


def test_two_hashes_of_one_secret_differ() -> None:
    a, b = secrets.hash_secret("s", iterations=FAST), secrets.hash_secret("s", iterations=FAST)
    assert a != b
    assert a.split("$")[2] != b.split("$")[2]  # different salts
    assert secrets.verify_secret("s", a) and secrets.verify_secret("s", b)


def _tamper(stored: str, part: int) -> str:
    parts = stored.split("$")
    raw = bytearray(base64.b64decode(parts[part]))
    raw[0] ^= 0x01
    parts[part] = base64.b64encode(bytes(raw)).decode()
    return "$".join(parts)


@pytest.mark.parametrize("part", [2, 3], ids=["salt", "digest"])
def test_tampered_hash_fails(part: int) -> None:
    good = secrets.hash_secret("s3cret", iterations=FAST)
    assert secrets.verify_secret("s3cret", good)  # remembered as verified under ``good``
    assert not secrets.verify_secret("s3cret", _tamper(good, part))


def test_tampered_iterations_fail() -> None:
    good = secrets.hash_secret("s3cret", iterations=FAST)
    assert secrets.verify_secret("s3cret", good)
    assert not secrets.verify_secret("s3cret", good.replace(f"${FAST}$", f"${FAST + 1}$", 1))


@pytest.mark.parametrize(
    "bad",
    [
        "s3cret",  # the secret itself, unhashed
        "pbkdf2-sha256$1000$!!!$!!!",
        "pbkdf2-sha256$1000$c2FsdA==",
        "pbkdf2-sha1$1000$c2FsdA==$ZGlnZXN0",
        "",
    ],
)
def test_verify_against_non_hash_fails(bad: str) -> None:
    assert not secrets.verify_secret("s3cret", bad)


@pytest.mark.parametrize(
    ("candidate", "hashed"),
    [
        ("pbkdf2-sha256$1000$c2FsdA==$ZGlnZXN0", True),
        ("s3cret", False),
        ("", False),
        (None, False),
        (5, False),
        ("pbkdf2-sha256$abc$c2FsdA==$ZGlnZXN0", False),
        ("pbkdf2-sha256$²$c2FsdA==$ZGlnZXN0", False),
        ("pbkdf2-sha256$1000$c2FsdA==", False),
        ("pbkdf2-sha256$1000$a$b$sealed", True),
        ("pbkdf2-sha256$1000$a$b$c$d", False),
    ],
)
def test_is_hashed(candidate: object, hashed: bool) -> None:
    assert secrets.is_hashed(candidate) is hashed


# --- permissions -------------------------------------------------------------------------------


def _only(bit: int) -> str:
    """Twelve characters with only ``bit`` set; bit 11 is the first character."""
    return "".join("1" if 11 - position == bit else "0" for position in range(12))


def test_bit_order_bit_11_first() -> None:
    assert _only(11) == "100000000000" and _only(0) == "000000000001"
    assert perms.has("100000000000", Perm.LIST_HANDLES)
    assert not perms.has("100000000000", Perm.ADD_HANDLE)
    assert perms.has("000000000001", Perm.ADD_HANDLE)
    assert not perms.has("000000000001", Perm.LIST_HANDLES)
    assert perms.has("010000000000", Perm.READ_VALUE)  # bit 10, as CNRI numbers them
    assert perms.has("001000000000", Perm.ADD_ADMIN)
    assert perms.has("000000000010", Perm.DELETE_HANDLE)


@pytest.mark.parametrize("perm", list(Perm), ids=lambda p: p.name)
def test_each_bit_grants_only_its_permission(perm: Perm) -> None:
    granted = [p for p in Perm if perms.has(_only(perm), p)]
    assert granted == [perm]
    assert perms.has(perms.ALL, perm)
    assert not perms.has("000000000000", perm)


def test_handle_admin_default() -> None:
    granted = {p for p in Perm if perms.has(perms.HANDLE_ADMIN_DEFAULT, p)}
    assert granted == set(Perm) - {Perm.LIST_HANDLES, Perm.ADD_NA, Perm.DELETE_NA}
    everything_but_listing = {p for p in Perm if perms.has("011111111111", p)}
    assert everything_but_listing == set(Perm) - {Perm.LIST_HANDLES}


@pytest.mark.parametrize("bad", ["", "1111", "1" * 11, "1" * 13])
def test_wrong_length_grants_nothing(bad: str) -> None:
    assert not any(perms.has(bad, p) for p in Perm)
