"""The mapping between handles and DNS names under the node's zone (pure, no I/O).

A handle ``<prefix>/<suffix>`` is the name::

    <suffix labels> . _ . <prefix segments, reversed> . <zone>

    88.118.8/JXDY2106023  under id.example.  ->  JXDY2106023._.8.118.88.id.example.
    88.118.8/a/b.c        ->  a_2fb_2ec._.8.118.88.id.example.
    88.118.8/Bäume        ->  B_c3_a4ume._.8.118.88.id.example.

- **Prefix segments reversed**, most significant label nearest the zone, as in
  ``in-addr.arpa``: every prefix is a subtree of its parent's.
- **The separator label ``_``** ends the prefix (a prefix has any number of
  segments). No escaped text is ever a bare ``_``, so it cannot be mistaken.
- **Escaping**: ASCII letters, digits and ``-`` stand for themselves; every other
  byte of the UTF-8 text is ``_`` and two hex digits (``/`` is ``_2f``, ``.`` is
  ``_2e``, a space ``_20``, ``_`` itself ``_5f``). This is percent-encoding with
  ``_`` for ``%``, chosen over base32 or punycode because it keeps the common
  identifier readable and typeable in ``dig``, and because it respects case
  folding on both sides: DNS compares names ignoring ASCII case, Handle matching
  ignores ASCII case only, letters are never escaped, and hex digits mean the same
  in either case. So names that DNS treats as one are exactly the spellings of one
  handle. Only the canonical form decodes (``_61`` for ``a`` does not), so each
  handle has one name.
- **Long suffixes** are cut into labels of at most 63 bytes, never inside an
  escape, and written last part first (like the prefix, read right to left from
  the zone): ``<last>.<middle>_.<first>_._.…``. Every label but the leftmost ends
  in ``_``, which marks it as a continuation (the parts are 60 to 62 bytes, and
  may split a character's UTF-8 bytes between them), so a name whose leftmost
  label ends in ``_`` is an ancestor of handle names, never a handle's own name.
- A name is at most 255 bytes; handles whose name would be longer have none
  (:class:`NameTooLong`).

``to_name`` and ``from_name`` are inverses: ``from_name(to_name(h)) == h`` for
every handle that has a name. ``classify`` tells the front-end what an arbitrary
name under the zone is: a handle's name, an ancestor of handle names (an empty
non-terminal), or neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dns.name

from registry.errors import InvalidHandle
from registry.handle import Handle, fold, parse

SEPARATOR = b"_"
MAX_LABEL = 63
_LITERAL = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_ESCAPE_RE = re.compile(rb"_([0-9a-fA-F]{2})")
_CANONICAL_RE = re.compile(rb"(?:[A-Za-z0-9-]|_[0-9a-fA-F]{2})+")


class NameTooLong(InvalidHandle):
    """The handle is too long to be a DNS name (255 bytes at most)."""


@dataclass(frozen=True, slots=True)
class Ancestor:
    """A name above handle names (the zone's inner nodes): it exists but holds no records."""


@dataclass(frozen=True, slots=True)
class Unmapped:
    """A name under the zone that is no handle's name and no ancestor of one."""

    reason: str


Meaning = Handle | Ancestor | Unmapped


def escape(text: str) -> bytes:
    """The escaped form of ``text``: letters, digits and ``-`` as they are, ``_XX`` else."""
    out = bytearray()
    for byte in text.encode("utf-8", "surrogatepass"):
        if byte in _LITERAL:
            out.append(byte)
        else:
            out += b"_%02x" % byte
    return bytes(out)


def unescape(data: bytes) -> str:
    """Invert ``escape``; ``ValueError`` unless ``data`` is canonical escaped UTF-8."""
    if not _CANONICAL_RE.fullmatch(data):
        raise ValueError("a label holds a character that is neither literal nor an _XX escape")
    raw = _ESCAPE_RE.sub(lambda m: bytes([int(m.group(1), 16)]), data)
    text = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if fold(escape(text).decode()) != fold(data.decode()):
        raise ValueError("an escape stands for a character written as itself (not canonical)")
    return text


def _chunks(escaped: bytes) -> list[bytes]:
    """Cut escaped text into label payloads of at most 62 bytes (63 for the last), never
    inside an escape; first part first."""
    parts, start = [], 0
    while len(escaped) - start > MAX_LABEL:
        end = start + MAX_LABEL - 1
        for back in (1, 2):  # do not cut "_XX" apart
            if escaped[end - back : end - back + 1] == b"_":
                end -= back
                break
        parts.append(escaped[start:end])
        start = end
    parts.append(escaped[start:])
    return parts


def to_name(h: Handle, zone: dns.name.Name) -> dns.name.Name:
    """The DNS name of ``h`` under ``zone``; ``NameTooLong`` if it has none."""
    segments = [escape(s) for s in h.prefix.split(".")]
    if any(len(s) > MAX_LABEL for s in segments):
        raise NameTooLong("a prefix segment is longer than a DNS label (63 bytes)", handle=h.text)
    parts = _chunks(escape(h.suffix))
    suffix_labels = [parts[-1]] + [p + SEPARATOR for p in reversed(parts[:-1])]
    labels = [*suffix_labels, SEPARATOR, *reversed(segments)]
    try:
        return dns.name.Name(labels).concatenate(zone)
    except dns.name.NameTooLong:
        raise NameTooLong(handle=h.text[:64]) from None


def from_name(name: dns.name.Name, zone: dns.name.Name) -> Handle:
    """The handle named by ``name``; ``InvalidHandle`` if it names none."""
    meaning = classify(name, zone)
    if not isinstance(meaning, Handle):
        reason = meaning.reason if isinstance(meaning, Unmapped) else "names no handle"
        raise InvalidHandle(f"{name}: {reason}")
    return meaning


def classify(name: dns.name.Name, zone: dns.name.Name) -> Meaning:
    """What ``name`` (a name at or under ``zone``) stands for."""
    labels = name.relativize(zone).labels
    if SEPARATOR not in labels:
        return _prefix_path(labels)
    at = labels.index(SEPARATOR)
    prefix_labels, suffix_labels = labels[at + 1 :], labels[:at]
    prefix = _prefix_path(prefix_labels)
    if not isinstance(prefix, Ancestor):
        return prefix
    if not prefix_labels:
        return Unmapped("no prefix labels between the separator '_' and the zone")
    if not suffix_labels:
        return Ancestor()
    if suffix_labels[0].endswith(SEPARATOR):
        return _continuations(suffix_labels)
    if not all(label.endswith(SEPARATOR) for label in suffix_labels[1:]):
        return Unmapped("a suffix label other than the first does not end in '_'")
    escaped = b"".join(label[:-1] for label in reversed(suffix_labels[1:])) + suffix_labels[0]
    try:
        prefix_text = ".".join(unescape(s) for s in reversed(prefix_labels))
        text = prefix_text + "/" + unescape(escaped)
        h = parse(text)
        canonical = to_name(h, zone).relativize(zone).labels
    except (ValueError, InvalidHandle) as exc:
        return Unmapped(getattr(exc, "message", None) or str(exc))
    if [label.lower() for label in canonical] != [label.lower() for label in labels]:
        return Unmapped("not the canonical name of its handle (labels cut or escaped otherwise)")
    return h


def _prefix_path(labels: tuple[bytes, ...]) -> Meaning:
    """Labels that are all escaped prefix segments: an ancestor; else unmapped."""
    for label in labels:
        try:
            unescape(label)
        except ValueError as exc:
            return Unmapped(f"label {label!r}: {exc}")
    return Ancestor()


def _continuations(labels: tuple[bytes, ...]) -> Meaning:
    """Suffix labels that all end in ``_``: the upper parts of a long suffix's name."""
    for label in labels:
        if not (label.endswith(SEPARATOR) and _CANONICAL_RE.fullmatch(label[:-1])):
            return Unmapped(f"label {label!r} is not a continuation of a long suffix")
    return Ancestor()
