"""Handle values: parsing what writers send, and the one JSON form readers get.

A value is ``{"index", "type", "data": {"format", "value"}, "ttl", "timestamp"}``
plus ``permissions`` (admin-read, admin-write, public-read, public-write) when
it is not ``1110``. Writers may send ``data`` as a plain string and ``index`` as
a numeric string; the node sets ``timestamp`` itself.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from registry import handle as handle_syntax
from registry.errors import InvalidHandle, InvalidValue

DEFAULT_TTL = 86400
DEFAULT_PERMISSIONS = "1110"
SECRET_PERMISSIONS = "1100"
MAX_INDEX = 2**31 - 1
MAX_TTL = 2**31 - 1
MAX_TYPE_LENGTH = 256
MAX_VALUES = 2048
"""Values one record may hold (the Handle protocol's limit)."""
MAX_DATA_BYTES = 65536
"""Largest value data, in bytes of its JSON encoding."""
MAX_REFERENCES = 1024
"""Most entries of one value's ``references`` list (RFC 3651 §3.1)."""

ADMIN_TYPE = "HS_ADMIN"
SECKEY_TYPE = "HS_SECKEY"
VLIST_TYPE = "HS_VLIST"

FORMATS = frozenset({"string", "base64", "hex", "admin", "vlist", "site", "key"})
_PERMISSIONS_RE = re.compile(r"[01]{4}")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_ADMIN_PERMISSIONS_RE = re.compile(r"[01]{12}")


@dataclass(frozen=True, slots=True)
class Value:
    """One handle value as stored and served."""

    index: int
    type: str
    format: str
    data: Any
    ttl: int = DEFAULT_TTL
    timestamp: str = ""
    permissions: str = DEFAULT_PERMISSIONS
    references: tuple[tuple[str, int], ...] = ()
    """RFC 3651 §3.1 references: (handle, index) pairs, index 0 meaning the whole handle."""

    @property
    def public_read(self) -> bool:
        return self.permissions[2] == "1"

    @property
    def admin_read(self) -> bool:
        return self.permissions[0] == "1"

    def same_content(self, other: Value) -> bool:
        """Equal apart from the timestamp."""
        return replace(self, timestamp="") == replace(other, timestamp="")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "type": self.type,
            "data": {"format": self.format, "value": _ordered(self.format, self.data)},
            "ttl": self.ttl,
            "timestamp": self.timestamp,
        }
        if self.permissions != DEFAULT_PERMISSIONS:
            out["permissions"] = self.permissions
        if self.references:
            out["references"] = [{"handle": h, "index": i} for h, i in self.references]
        return out


def _reference_json(ref: Mapping[str, Any]) -> dict[str, Any]:
    out = {"handle": ref.get("handle"), "index": ref.get("index")}
    if "permissions" in ref:
        out["permissions"] = ref["permissions"]
    return out


def _ordered(fmt: str, data: Any) -> Any:
    """References in Handle.Net's key order (handle, index, permissions), however sent."""
    if fmt == "admin" and isinstance(data, Mapping):
        return _reference_json(data)
    if fmt == "vlist" and isinstance(data, list):
        return [_reference_json(r) if isinstance(r, Mapping) else r for r in data]
    return data


def from_stored(item: Mapping[str, Any]) -> Value:
    """Rebuild a value from its stored JSON (which is the served form)."""
    data = item["data"]
    return Value(
        index=item["index"],
        type=item["type"],
        format=data["format"],
        data=data["value"],
        ttl=item["ttl"],
        timestamp=item["timestamp"],
        permissions=item.get("permissions", DEFAULT_PERMISSIONS),
        references=tuple((r["handle"], r["index"]) for r in item.get("references", ())),
    )


def matches_type(value_type: str, wanted: str) -> bool:
    """Type filter: ASCII case-insensitive; ``wanted`` ending in ``.`` matches subtypes."""
    vt, w = handle_syntax.fold(value_type), handle_syntax.fold(wanted)
    if w.endswith("."):
        return vt == w[:-1] or vt.startswith(w)
    return vt == w


def filter_values(
    values: Iterable[Value], indexes: Iterable[int], types: Iterable[str]
) -> list[Value]:
    """Values of a matching index or a matching type; all values when both are empty."""
    idx, typ = set(indexes), list(types)
    if not idx and not typ:
        return list(values)
    return [v for v in values if v.index in idx or any(matches_type(v.type, t) for t in typ)]


# --- parsing what writers send -------------------------------------------------------------


def is_number(text: str) -> bool:
    """A short run of ASCII digits: what ``int()`` reads safely.

    ``str.isdigit`` also accepts '²' and other digits ``int()`` refuses, and
    ``int()`` refuses strings of more than 4300 digits; no field here needs more
    than a few.
    """
    return text.isascii() and text.isdigit() and len(text) <= 18


def parse_index(raw: Any, *, where: str = "index") -> int:
    """An index as an int in 1..2^31-1; numeric strings are accepted."""
    if isinstance(raw, bool):
        raise InvalidValue(f"{where} must be an integer, got a boolean")
    if isinstance(raw, str) and is_number(raw.strip().removeprefix("+")):
        raw = int(raw.strip())
    if not isinstance(raw, int):
        raise InvalidValue(f"{where} must be an integer, got {type(raw).__name__}")
    if not 1 <= raw <= MAX_INDEX:
        raise InvalidValue(f"{where} must be between 1 and {MAX_INDEX}, got {raw}", index=raw)
    return raw


def _parse_ttl(raw: Any, index: int) -> int:
    if raw is None:
        return DEFAULT_TTL
    if isinstance(raw, str) and is_number(raw.strip()):
        raw = int(raw.strip())
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_TTL:
        raise InvalidValue(
            f"value {index}: ttl must be an integer number of seconds from 0 to {MAX_TTL}",
            index=index,
        )
    return raw


def _parse_permissions(raw: Any, index: int, default: str) -> str:
    if raw is None:
        return default
    if not isinstance(raw, str) or not _PERMISSIONS_RE.fullmatch(raw):
        raise InvalidValue(
            f"value {index}: permissions must be four characters of 0 and 1 "
            "(admin-read, admin-write, public-read, public-write)",
            index=index,
        )
    return raw


def _reference(raw: Any, index: int, what: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise InvalidValue(f"value {index}: {what} must be an object with handle and index")
    ref_handle = raw.get("handle")
    if not isinstance(ref_handle, str):
        raise InvalidValue(f"value {index}: {what} needs a string 'handle'", index=index)
    try:
        handle_syntax.parse(ref_handle)
    except InvalidHandle as exc:
        raise InvalidValue(f"value {index}: {what} handle: {exc.message}", index=index) from None
    ref_index = raw.get("index")
    if (type(ref_index) is int and ref_index == 0) or ref_index == "0":
        ref_index_int = 0  # index 0 in a reference means "any index of that handle"
    else:
        ref_index_int = parse_index(ref_index, where=f"value {index}: {what} index")
    return {"handle": ref_handle, "index": ref_index_int}


def _parse_references(raw: Any, index: int) -> tuple[tuple[str, int], ...]:
    """A value's ``references``: ``[{"handle": "88.1/x", "index": 0}]``, index optional (0)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidValue(f"value {index}: references must be an array", index=index)
    if len(raw) > MAX_REFERENCES:
        raise InvalidValue(
            f"value {index}: at most {MAX_REFERENCES} references, not {len(raw)}", index=index
        )
    refs = []
    for item in raw:
        if isinstance(item, Mapping) and "index" not in item:
            item = {**item, "index": 0}
        ref = _reference(item, index, "reference")
        refs.append((ref["handle"], ref["index"]))
    if len(orjson.dumps(refs)) > MAX_DATA_BYTES:
        raise InvalidValue(
            f"value {index}: references are larger than {MAX_DATA_BYTES} bytes", index=index
        )
    return tuple(refs)


def _parse_data(fmt: str, raw: Any, index: int) -> Any:
    if fmt == "string":
        if not isinstance(raw, str):
            raise InvalidValue(f"value {index}: data of format string must be a string")
        return raw
    if fmt in ("base64", "hex"):
        if not isinstance(raw, str):
            raise InvalidValue(f"value {index}: data of format {fmt} must be a string")
        try:
            if fmt == "base64":
                base64.b64decode(raw, validate=True)
            else:
                bytes.fromhex(raw)
        except (binascii.Error, ValueError):
            raise InvalidValue(f"value {index}: data is not valid {fmt}", index=index) from None
        return raw
    if fmt == "admin":
        ref = _reference(raw, index, "admin")
        perms = raw.get("permissions", "111111111111")
        if not isinstance(perms, str) or not _ADMIN_PERMISSIONS_RE.fullmatch(perms):
            raise InvalidValue(
                f"value {index}: admin permissions must be twelve characters of 0 and 1",
                index=index,
            )
        return {**ref, "permissions": perms}
    if fmt == "vlist":
        if not isinstance(raw, list):
            raise InvalidValue(f"value {index}: data of format vlist must be an array")
        return [_reference(item, index, "vlist entry") for item in raw]
    # site and key: structured data kept as sent (decoded by later issues)
    if not isinstance(raw, (str, Mapping, list)):
        raise InvalidValue(f"value {index}: data of format {fmt} must be a string or object")
    return raw


def check_size(payload: Any, index: int) -> Any:
    """``payload`` unless its JSON form is larger than ``MAX_DATA_BYTES``."""
    small = isinstance(payload, str) and len(payload) * 6 + 2 <= MAX_DATA_BYTES  # JSON's worst
    if not small and len(orjson.dumps(payload)) > MAX_DATA_BYTES:
        raise InvalidValue(
            f"value {index}: data is larger than {MAX_DATA_BYTES} bytes", index=index
        )
    return payload


def parse_value(raw: Any, *, timestamp: str) -> Value:
    """Parse one value as a writer sends it."""
    if not isinstance(raw, dict) and not isinstance(raw, Mapping):  # dict first: ABCs are slow
        raise InvalidValue(f"each value must be a JSON object, got {type(raw).__name__}")
    if "index" not in raw:
        raise InvalidValue("value has no 'index'")
    index = parse_index(raw["index"])
    vtype = raw.get("type")
    if not isinstance(vtype, str) or not vtype:
        raise InvalidValue(f"value {index}: 'type' must be a non-empty string", index=index)
    if len(vtype) > MAX_TYPE_LENGTH or _CONTROL.search(vtype):
        raise InvalidValue(f"value {index}: 'type' is too long or has control characters")
    if "data" not in raw:
        raise InvalidValue(f"value {index}: value has no 'data'", index=index)
    data = raw["data"]
    if isinstance(data, dict) or isinstance(data, Mapping):
        fmt = data.get("format", "string")
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise InvalidValue(
                f"value {index}: unknown data format {fmt!r} (one of {', '.join(sorted(FORMATS))})",
                index=index,
            )
        if "value" not in data:
            raise InvalidValue(f"value {index}: data has no 'value'", index=index)
        payload = _parse_data(fmt, data["value"], index)
    elif isinstance(data, str):
        fmt, payload = "string", data
    else:
        raise InvalidValue(
            f"value {index}: 'data' must be a string or an object with format and value",
            index=index,
        )
    check_size(payload, index)
    if vtype.upper() == ADMIN_TYPE and fmt != "admin":
        raise InvalidValue(f"value {index}: HS_ADMIN data must have format admin", index=index)
    default_perms = SECRET_PERMISSIONS if vtype.upper() == SECKEY_TYPE else DEFAULT_PERMISSIONS
    return Value(
        index=index,
        type=vtype,
        format=fmt,
        data=payload,
        ttl=_parse_ttl(raw.get("ttl"), index),
        timestamp=timestamp,
        permissions=_parse_permissions(raw.get("permissions"), index, default_perms),
        references=_parse_references(raw.get("references"), index),
    )


def check_count(count: int) -> None:
    """Refuse a record of more than ``MAX_VALUES`` values."""
    if count > MAX_VALUES:
        raise InvalidValue(f"a record holds at most {MAX_VALUES} values, not {count}")


def parse_values(raw: Any, *, timestamp: str) -> list[Value]:
    """Parse a request body: ``{"values": [...]}``, a bare array, or one value."""
    if isinstance(raw, Mapping) and "values" in raw:
        raw = raw["values"]
    elif isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list):
        raise InvalidValue('body must be {"values": [...]}, an array of values, or one value')
    check_count(len(raw))
    values = [parse_value(item, timestamp=timestamp) for item in raw]
    seen: set[int] = set()
    for v in values:
        if v.index in seen:
            raise InvalidValue(f"index {v.index} appears more than once", index=v.index)
        seen.add(v.index)
    return values
