"""HS_SECKEY secrets: stored as salted PBKDF2-HMAC-SHA256 hashes, never in plain text.

A stored secret looks like ``pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>``,
optionally followed by ``$<sealed>``: the secret encrypted with the node's
sealing key (AES-GCM, bound to the hash before it), which the Handle
challenge-response needs (its answers are keyed by the secret itself). A copy
of the database alone reveals no secret; HTTP Basic checks only the hash.
Checks run in constant time. A successful check is remembered for the life of
the process under an HMAC of the presented secret with a per-process key, so a
busy client does not pay the slow hash on every request; the memo is keyed by
the stored hash too, so a changed secret is never matched by an old entry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

if TYPE_CHECKING:
    from registry.keys import Sealer

SCHEME = "pbkdf2-sha256"
ITERATIONS = 600_000
_MEMO_LIMIT = 4096
_memo_key = os.urandom(32)
_verified: dict[tuple[str, bytes], None] = {}


def _derive(secret: bytes, salt: bytes, iterations: int) -> bytes:
    return PBKDF2HMAC(hashes.SHA256(), 32, salt, iterations).derive(secret)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_secret(secret: str, *, iterations: int = ITERATIONS, sealer: Sealer | None = None) -> str:
    """The stored form of a secret: its hash, and sealed when a sealer is given."""
    salt = os.urandom(16)
    digest = _derive(secret.encode("utf-8"), salt, iterations)
    hashed = f"{SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"
    if sealer is None:
        return hashed
    return f"{hashed}${sealer.seal(secret.encode('utf-8'), hashed.encode('ascii'))}"


def is_hashed(stored: object) -> bool:
    """True when ``stored`` is already in the stored form."""
    if not isinstance(stored, str) or not stored.startswith(SCHEME + "$"):
        return False
    parts = stored.split("$")
    return len(parts) in (4, 5) and parts[1].isascii() and parts[1].isdigit()


def unseal(stored: str, sealer: Sealer | None) -> bytes | None:
    """The secret itself, when it was stored sealed with ``sealer``'s key; else None."""
    if sealer is None or not is_hashed(stored) or stored.count("$") != 4:
        return None
    hashed, _, sealed = stored.rpartition("$")
    return sealer.open(sealed, hashed.encode("ascii"))


def verify_secret(secret: str, stored: str) -> bool:
    """Check a presented secret against a stored hash, in constant time."""
    if not is_hashed(stored):
        return False
    try:
        secret.encode("utf-8")
    except UnicodeEncodeError:
        return False
    memo = (stored, hmac.new(_memo_key, secret.encode("utf-8"), hashlib.sha256).digest())
    if memo in _verified:
        return True
    _, iterations, salt, digest = stored.split("$")[:4]
    try:
        expected = base64.b64decode(digest, validate=True)
        derived = _derive(
            secret.encode("utf-8"), base64.b64decode(salt, validate=True), int(iterations)
        )
    except ValueError:
        return False
    if not hmac.compare_digest(derived, expected):
        return False
    if len(_verified) >= _MEMO_LIMIT:
        _verified.clear()
    _verified[memo] = None
    return True
