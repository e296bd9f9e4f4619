"""Check what the node's audit log publishes, without the node's code.

Standalone on purpose: this module and ``registry/merkle.py`` import nothing else
of the node (only the standard library and ``cryptography``), so an auditor or a
top-level node can copy the two files and check, from the published formats alone:

- a **checkpoint**: its Ed25519 signature over its text, made with the node's
  audit key (pinned by the verifier, never taken from the checkpoint itself);
- an **inclusion proof** (RFC 9162 2.1.3) that an entry is in the signed tree;
- a **consistency proof** (RFC 9162 2.1.4) that a later tree extends an earlier one;
- a **filing report** (``idnode audit export``): its entries are exactly the
  leaves of a contiguous range of the signed tree, and its counts add up;
- a **whole log**, streamed entry by entry (``LogChecker``, used by
  ``idnode audit verify``), naming the first entry that does not match.

The leaf of an entry is built here from the entry's JSON fields, independently of
the SQL function ``audit_leaf`` that the node uses (``schemas/sql/006_audit.sql``):
a version byte 0x01; ``seq`` and the time in microseconds since 1970 as signed
64-bit big-endian integers; actor, client, operation and handle as UTF-8 with a
signed 32-bit length (-1 for an absent field); the value indexes as a count and
32-bit integers (-1 when absent); the before and after digests with a 32-bit
length (-1 when absent).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from registry import merkle

LEAF_VERSION = b"\x01"
FILING_FORMAT = "idnode-filing/1"
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


class VerificationError(Exception):
    """What was checked did not match; the message says what and where."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


# --- entries and their leaves ----------------------------------------------------------


def _text(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">i", -1)
    raw = value.encode()
    return struct.pack(">i", len(raw)) + raw


def _digest(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">i", -1)
    raw = bytes.fromhex(value)
    return struct.pack(">i", len(raw)) + raw


def micros(at: str) -> int:
    """Microseconds since 1970 of an RFC 3339 time (``2026-11-30T08:00:00.123456Z``)."""
    moment = datetime.datetime.fromisoformat(at)
    if moment.tzinfo is None:
        raise ValueError(f"time {at!r} has no time zone")
    return (moment - _EPOCH) // _MICROSECOND


def leaf_data(entry: Mapping[str, Any]) -> bytes:
    """The leaf data of an audit entry in its published JSON form."""
    indexes = entry.get("indexes")
    if indexes is None:
        packed_indexes = struct.pack(">i", -1)
    else:
        packed_indexes = struct.pack(f">i{len(indexes)}i", len(indexes), *indexes)
    return b"".join(
        (
            LEAF_VERSION,
            struct.pack(">qq", entry["seq"], micros(entry["at"])),
            _text(entry["actor"]),
            _text(entry.get("client")),
            _text(entry["operation"]),
            _text(entry["handle"]),
            packed_indexes,
            _digest(entry.get("before")),
            _digest(entry.get("after")),
        )
    )


def entry_leaf_hash(entry: Mapping[str, Any]) -> bytes:
    return merkle.leaf_hash(leaf_data(entry))


def content_digest(content: str) -> str:
    """The hex SHA-256 digest that an entry's ``after`` gives of its content."""
    return hashlib.sha256(content.encode()).hexdigest()


# --- checkpoints -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    time: str


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise VerificationError(f"{what} is not base64") from None


def parse_checkpoint(body: str) -> Checkpoint:
    """The fields of a checkpoint's signed text: origin, size, root hash, ``time …``."""
    lines = body.split("\n")
    if len(lines) != 5 or lines[4] != "" or not lines[3].startswith("time "):
        raise VerificationError("checkpoint text is not origin, size, root, time")
    origin, size, root, time = lines[0], lines[1], lines[2], lines[3][5:]
    if not size.isdigit():
        raise VerificationError(f"checkpoint size {size!r} is not a number")
    hashed = _b64(root, "checkpoint root")
    if len(hashed) != merkle.HASH_SIZE:
        raise VerificationError("checkpoint root is not a SHA-256 hash")
    return Checkpoint(origin, int(size), hashed, time)


def verify_checkpoint(checkpoint: Mapping[str, Any], public_key: bytes) -> Checkpoint:
    """Check a published checkpoint's signature with the pinned ``public_key``; answer it."""
    body = checkpoint.get("body")
    if not isinstance(body, str):
        raise VerificationError("checkpoint has no text")
    signature = _b64(str(checkpoint.get("signature")), "checkpoint signature")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, body.encode())
    except (InvalidSignature, ValueError):
        raise VerificationError(
            f"checkpoint of size {checkpoint.get('size')} is not signed by the audit key"
        ) from None
    parsed = parse_checkpoint(body)
    if checkpoint.get("size") != parsed.size or checkpoint.get("rootHash") != base64.b64encode(
        parsed.root
    ).decode("ascii"):
        raise VerificationError("checkpoint fields differ from its signed text")
    return parsed


# --- proofs ------------------------------------------------------------------------------


def _hashes(items: Any, what: str) -> list[bytes]:
    if not isinstance(items, list):
        raise VerificationError(f"{what} is not a list")
    return [_b64(str(item), what) for item in items]


def verify_inclusion_proof(
    proof: Mapping[str, Any], public_key: bytes, entry: Mapping[str, Any] | None = None
) -> Checkpoint:
    """Check an inclusion proof (``GET /api/audit/proof``) against its signed checkpoint.

    With ``entry``, also check that the proven leaf is that entry's.
    """
    checkpoint = verify_checkpoint(proof["checkpoint"], public_key)
    leaf = _b64(str(proof.get("leafHash")), "leaf hash")
    seq = proof.get("seq")
    if entry is not None and (entry.get("seq") != seq or entry_leaf_hash(entry) != leaf):
        raise VerificationError(f"entry {entry.get('seq')} is not the proven leaf", seq)
    if not isinstance(seq, int) or not merkle.verify_inclusion(
        leaf, seq, checkpoint.size, _hashes(proof.get("path"), "audit path"), checkpoint.root
    ):
        raise VerificationError(f"entry {seq} is not in the tree of {checkpoint.size}", seq)
    return checkpoint


def verify_consistency_proof(
    proof: Mapping[str, Any], public_key: bytes
) -> tuple[Checkpoint, Checkpoint]:
    """Check a consistency proof (``GET /api/audit/consistency``) between two checkpoints."""
    first = verify_checkpoint(proof["first"], public_key)
    second = verify_checkpoint(proof["second"], public_key)
    path = _hashes(proof.get("path"), "consistency path")
    if not merkle.verify_consistency(first.size, second.size, first.root, second.root, path):
        raise VerificationError(
            f"the tree of {second.size} does not extend the tree of {first.size}"
        )
    return first, second


def range_root(size: int, first: int, leaves: Sequence[bytes], proof: Sequence[bytes]) -> bytes:
    """The root of a tree of ``size`` leaves whose leaves [first, first + len(leaves)) are
    known, the hashes of the subtrees outside that range given by ``proof`` in the order
    in which the definition of MTH (RFC 9162 2.1.1) meets them, left to right."""
    end = first + len(leaves)
    given = iter(proof)

    def mth(start: int, stop: int) -> bytes:
        if stop <= first or start >= end:
            found = next(given, None)
            if found is None:
                raise VerificationError("range proof is too short")
            return found
        if stop - start == 1:
            return leaves[start - first]
        k = 1 << ((stop - start - 1).bit_length() - 1)
        return merkle.node_hash(mth(start, start + k), mth(start + k, stop))

    if size == 0:
        return merkle.EMPTY_ROOT
    root = mth(0, size)
    if next(given, None) is not None:
        raise VerificationError("range proof is too long")
    return root


# --- filing reports ------------------------------------------------------------------------

COUNTED = {
    "create": "registered",
    "home-prefix": "registered",
    "delete": "deleted",
}


def verify_filing(lines: Iterable[Mapping[str, Any]], public_key: bytes) -> dict[str, Any]:
    """Check a filing report, line by line; answer its header with the verified checkpoint.

    Every entry's leaf is recomputed; together with the leaves of entries reported
    only by hash (other prefixes') they must be exactly the range the header names,
    and with the range proof they must give the signed root. The per-prefix counts
    of registrations, changes and deletions must match the entries.
    """
    header: Mapping[str, Any] | None = None
    leaves: list[bytes] = []
    counted: dict[str, dict[str, int]] = {}
    counts = checkpoint = proof = None
    for line in lines:
        kind = line.get("type")
        if kind == "header":
            header = line
        elif kind in ("entry", "leaf"):
            if header is None:
                raise VerificationError("filing report does not start with its header")
            seq = header["firstSeq"] + len(leaves)
            if line.get("seq") != seq:
                raise VerificationError(f"entry {line.get('seq')} where {seq} was expected", seq)
            if kind == "entry":
                leaves.append(entry_leaf_hash(line))
                tally = counted.setdefault(str(line.get("prefix")), {})
                what = COUNTED.get(line["operation"], "changed")
                tally[what] = tally.get(what, 0) + 1
            else:
                leaves.append(_b64(str(line.get("leafHash")), f"leaf {seq}"))
        elif kind == "counts":
            counts = line
        elif kind == "checkpoint":
            checkpoint = line
        elif kind == "rangeProof":
            proof = line
    if header is None or header.get("format") != FILING_FORMAT:
        raise VerificationError(f"not a filing report of format {FILING_FORMAT}")
    if checkpoint is None or proof is None or counts is None:
        raise VerificationError("filing report lacks its counts, checkpoint or range proof")
    signed = verify_checkpoint(checkpoint, public_key)
    first, end = header["firstSeq"], header["endSeq"]
    if first + len(leaves) != end or end > signed.size:
        raise VerificationError(f"entries [{first}, {end}) are not all in the signed tree")
    nodes = _hashes(proof.get("hashes"), "range proof")
    if range_root(signed.size, first, leaves, nodes) != signed.root:
        raise VerificationError(f"entries [{first}, {end}) do not give the signed root")
    for prefix, mine in counted.items():
        theirs = counts.get("prefixes", {}).get(prefix, {})
        for what, number in mine.items():
            if theirs.get(what, 0) != number:
                raise VerificationError(f"prefix {prefix}: {what} is not {number}")
    for prefix, claimed in counts.get("prefixes", {}).items():
        for what in ("registered", "changed", "deleted"):
            if claimed.get(what, 0) != counted.get(prefix, {}).get(what, 0):
                raise VerificationError(f"prefix {prefix}: the report's {what} count is wrong")
    return {**header, "checkpoint": signed}


# --- a whole log -------------------------------------------------------------------------


class LogChecker:
    """Recomputes the tree of a log fed entry by entry, in order, and names the first
    entry or checkpoint that does not match.

    ``frontier`` resumes from a verified size: the hashes of the complete subtrees
    that make up the tree of that size, largest first.
    """

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = ()) -> None:
        self.size = size
        levels = [level for level in range(size.bit_length() - 1, -1, -1) if size >> level & 1]
        if len(levels) != len(frontier):
            raise VerificationError(f"a tree of {size} has not {len(frontier)} subtrees")
        self._stack: list[tuple[int, bytes]] = list(zip(levels, frontier, strict=True))

    def add(
        self,
        entry: Mapping[str, Any],
        content: str | None = None,
        stored_leaf: bytes | None = None,
    ) -> bytes:
        """Take the next entry (its content, and the leaf hash the node stored for it)."""
        seq = entry.get("seq")
        if seq != self.size:
            what = "missing" if isinstance(seq, int) and seq > self.size else "out of order"
            raise VerificationError(
                f"entry {self.size} is {what} (found entry {seq} in its place)", self.size
            )
        leaf = entry_leaf_hash(entry)
        if stored_leaf is not None and stored_leaf != leaf:
            raise VerificationError(
                f"entry {seq} does not match the leaf hash logged for it: it was changed", seq
            )
        after = entry.get("after")
        if content is not None and after is not None and content_digest(content) != after:
            raise VerificationError(f"entry {seq}: its content does not match its digest", seq)
        self._append(leaf)
        return leaf

    def _append(self, leaf: bytes) -> None:
        self._stack.append((0, leaf))
        while len(self._stack) > 1 and self._stack[-1][0] == self._stack[-2][0]:
            (level, left), (_, right) = self._stack[-2], self._stack[-1]
            self._stack[-2:] = [(level + 1, merkle.node_hash(left, right))]
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return merkle.EMPTY_ROOT
        hashed = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            hashed = merkle.node_hash(left, hashed)
        return hashed

    def check(self, checkpoint: Mapping[str, Any], public_key: bytes) -> Checkpoint:
        """Check a checkpoint of the current size: signed by the key, with this root."""
        signed = verify_checkpoint(checkpoint, public_key)
        if signed.size != self.size or signed.root != self.root():
            raise VerificationError(
                f"checkpoint of size {signed.size} does not match the log's entries"
                f" {max(0, self.size - 1)} and before",
                self.size - 1,
            )
        return signed
