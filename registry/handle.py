"""Identifier syntax: ``<prefix>/<suffix>``, matched ASCII case-insensitively.

A handle keeps the caller's spelling (``text``) for answers and a key
(``prefix_key``, ``suffix_key``) with ASCII letters folded to lower case for
lookups, as Handle.Net servers do: ``88.118.8/ABC`` and ``88.118.8/abc`` are
one identifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from registry.errors import InvalidHandle

MAX_HANDLE_BYTES = 2048
"""Longest handle accepted, in UTF-8 bytes."""

NA_PREFIX = "0.NA"
"""The prefix under which the records of prefixes (``0.NA/88.118.8``) live."""

_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(text: str) -> str:
    """Lower-case ASCII letters only (Handle matching leaves other letters alone)."""
    return text.translate(_ASCII_FOLD)


_FORBIDDEN = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
"""Control characters and lone surrogates, which no handle may contain."""


def _check_text(text: str, what: str) -> None:
    if not text:
        raise InvalidHandle(f"{what} is empty", handle=text)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_HANDLE_BYTES:
        raise InvalidHandle(f"{what} is longer than {MAX_HANDLE_BYTES} bytes", handle=text[:64])
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        raise InvalidHandle(
            f"{what} contains the control character U+{ord(bad.group()):04X}", handle=text[:64]
        )


def check_prefix(prefix: str) -> str:
    """Validate a prefix such as ``88.118.8``; answer it unchanged."""
    _check_text(prefix, "prefix")
    if "/" in prefix:
        raise InvalidHandle("prefix must not contain '/'", handle=prefix)
    if any(not part for part in prefix.split(".")):
        raise InvalidHandle("prefix has an empty dotted segment", handle=prefix)
    return prefix


@dataclass(frozen=True, slots=True)
class Handle:
    """A parsed identifier."""

    text: str
    prefix: str
    suffix: str
    key: str = field(init=False, compare=False)
    """``text`` with ASCII letters folded: what lookups match on."""
    prefix_key: str = field(init=False, compare=False)
    suffix_key: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        key = fold(self.text)
        set_field = object.__setattr__
        set_field(self, "key", key)
        set_field(self, "prefix_key", key[: len(self.prefix)])
        set_field(self, "suffix_key", key[len(self.prefix) + 1 :])

    @property
    def is_prefix_record(self) -> bool:
        """True for ``0.NA/<prefix>``, the record of a prefix."""
        return self.prefix_key == fold(NA_PREFIX)

    @property
    def homing_prefix(self) -> str:
        """The prefix that must be homed here for this node to serve the handle."""
        return self.suffix if self.is_prefix_record else self.prefix

    def __str__(self) -> str:
        return self.text


def parse(text: str) -> Handle:
    """Parse a handle; raise ``InvalidHandle`` naming what is wrong."""
    _check_text(text, "handle")
    prefix, slash, suffix = text.partition("/")
    if not slash:
        raise InvalidHandle("handle has no '/' between prefix and suffix", handle=text)
    if not prefix:
        raise InvalidHandle("handle has an empty prefix", handle=text)
    if not suffix:
        raise InvalidHandle("handle has an empty suffix", handle=text)
    check_prefix(prefix)
    return Handle(text, prefix, suffix)


def decode_path(raw: str) -> str:
    """Percent-decode a raw URL path segment as strict UTF-8."""
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidHandle(
            f"handle is not valid UTF-8 after percent-decoding (byte {exc.start})"
        ) from None


def prefix_record(prefix: str) -> Handle:
    """The handle of a prefix's own record, ``0.NA/<prefix>``."""
    return Handle(f"{NA_PREFIX}/{prefix}", NA_PREFIX, prefix)


def parent_prefixes(prefix: str) -> list[str]:
    """``88.118.8`` → ``['88.118.8', '88.118', '88']``."""
    parts = prefix.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]
