"""Merkle tree hashing and proof verification of RFC 9162 (Certificate Transparency 2.0).

Standalone on purpose: it imports only ``hashlib``, so anyone can check what the
node publishes (tree heads, inclusion and consistency proofs) without the node's
code. Written from RFC 9162 section 2.1:

- ``MTH({}) = SHA-256()``; a leaf is ``SHA-256(0x00 || d)``; an interior node is
  ``SHA-256(0x01 || left || right)``, the left subtree holding the largest power of
  two of the leaves smaller than their count (2.1.1);
- inclusion proofs are verified by the algorithm of 2.1.3.2, consistency proofs by
  that of 2.1.4.2.

This is the first piece of the audit log's tamper evidence (issue 8); the log,
its stored subtree hashes and the signed checkpoints are not built yet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH of the leaf hashes ``leaves`` (already hashed with ``leaf_hash``)."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def _up_the_right_edge(fn: int, sn: int) -> tuple[int, int]:
    """Both algorithms' step "if LSB(fn) is not set, right-shift fn and sn equally until
    either LSB(fn) is set or fn is 0"."""
    while fn and not fn & 1:
        fn >>= 1
        sn >>= 1
    return fn, sn


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], expected_root: bytes
) -> bool:
    """RFC 9162 2.1.3.2: is the leaf hash ``leaf`` at ``index`` of the tree of ``size``
    leaves whose root is ``expected_root``, by the inclusion ``path``?"""
    if not 0 <= index < size or any(len(p) != HASH_SIZE for p in path):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _up_the_right_edge(fn, sn)
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2: is the tree of ``first`` leaves (``first_root``) a prefix of the
    tree of ``second`` leaves (``second_root``), by the consistency ``path``?"""
    if any(len(p) != HASH_SIZE for p in path) or not 0 <= first <= second:
        return False
    if first == second:
        return not path and first_root == second_root
    if first == 0:
        return not path  # the empty tree is a prefix of every tree
    if not path:
        return False
    proof = list(path)
    if first & (first - 1) == 0:  # an exact power of two: its root is a node of the proof
        proof.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            fn, sn = _up_the_right_edge(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0
