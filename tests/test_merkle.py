"""RFC 9162 Merkle tree verification (``registry.merkle``) against proofs built from the RFC's
own definitions (section 2.1.3.1 PATH, 2.1.4.1 PROOF/SUBPROOF), written here independently."""

from __future__ import annotations

import hashlib

import pytest

from registry import merkle

# The data of the test tree used by Certificate Transparency's reference implementations.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]


def mth(data: list[bytes]) -> bytes:
    """MTH of RFC 9162 2.1.1, straight from its definition."""
    if not data:
        return hashlib.sha256(b"").digest()
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < len(data):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(data[:k]) + mth(data[k:])).digest()


def path(m: int, data: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 2.1.3.1."""
    if len(data) <= 1:
        return []
    k = 1
    while k * 2 < len(data):
        k *= 2
    if m < k:
        return path(m, data[:k]) + [mth(data[k:])]
    return path(m - k, data[k:]) + [mth(data[:k])]


def subproof(m: int, data: list[bytes], complete: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 2.1.4.1."""
    if m == len(data):
        return [] if complete else [mth(data)]
    k = 1
    while k * 2 < len(data):
        k *= 2
    if m <= k:
        return subproof(m, data[:k], complete) + [mth(data[k:])]
    return subproof(m - k, data[k:], False) + [mth(data[:k])]


DATA = [f"entry {i}".encode() for i in range(33)]


def test_roots_match_the_definition_and_known_values() -> None:
    assert merkle.root([]) == hashlib.sha256(b"").digest()
    for n in range(len(DATA) + 1):
        assert merkle.root([merkle.leaf_hash(d) for d in DATA[:n]]) == mth(DATA[:n])
    leaves = [merkle.leaf_hash(d) for d in CT_LEAVES]
    assert merkle.root(leaves[:1]).hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert merkle.root(leaves).hex() == (
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    )


@pytest.mark.parametrize("n", range(1, len(DATA) + 1))
def test_every_inclusion_proof_verifies_and_no_altered_one_does(n: int) -> None:
    data = DATA[:n]
    top = mth(data)
    for m in range(n):
        proof = path(m, data)
        leaf = merkle.leaf_hash(data[m])
        assert merkle.verify_inclusion(leaf, m, n, proof, top)
        assert not merkle.verify_inclusion(leaf, m, n, proof, mth(data[: n - 1] + [b"x"]))
        assert not merkle.verify_inclusion(merkle.leaf_hash(b"forged"), m, n, proof, top)
        if proof:
            flipped = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
            assert not merkle.verify_inclusion(leaf, m, n, flipped, top)
            assert not merkle.verify_inclusion(leaf, m, n, proof[:-1], top)
            assert not merkle.verify_inclusion(leaf, m, n, [*proof, proof[0]], top)
        if n > 1:
            assert not merkle.verify_inclusion(leaf, (m + 1) % n, n, proof, top)
    assert not merkle.verify_inclusion(merkle.leaf_hash(data[0]), n, n, [], top)  # out of range


@pytest.mark.parametrize("n", range(1, len(DATA) + 1))
def test_every_consistency_proof_verifies_and_no_altered_one_does(n: int) -> None:
    second = DATA[:n]
    second_root = mth(second)
    for m in range(1, n):
        first_root = mth(DATA[:m])
        proof = subproof(m, second, True)
        assert merkle.verify_consistency(m, n, first_root, second_root, proof)
        assert not merkle.verify_consistency(m, n, first_root, mth(DATA[: n - 1] + [b"x"]), proof)
        assert not merkle.verify_consistency(m, n, mth([b"y"] + DATA[1:m]), second_root, proof)
        assert not merkle.verify_consistency(m, n, first_root, second_root, proof[:-1])
        flipped = [*proof[:-1], bytes([proof[-1][0] ^ 1]) + proof[-1][1:]]
        assert not merkle.verify_consistency(m, n, first_root, second_root, flipped)
        assert not merkle.verify_consistency(m, n, first_root, second_root, [])
    assert merkle.verify_consistency(n, n, second_root, second_root, [])
    assert not merkle.verify_consistency(n, n, second_root, mth(DATA[: n - 1] + [b"z"]), [])
    assert merkle.verify_consistency(0, n, merkle.EMPTY_ROOT, second_root, [])
    assert not merkle.verify_consistency(n, n - 1, second_root, mth(DATA[: n - 1]), [])
