"""Keys: HS_PUBKEY values, challenge answers, and the node's own key material.

Public keys are read from HS_PUBKEY values in either of two forms:

- the Handle binary key encoding (format ``base64`` or ``hex``): length-prefixed
  byte arrays (4-byte big-endian length), first the key type ``RSA_PUB_KEY``
  (then a 2-byte flags field, the exponent and the modulus) or ``DSA_PUB_KEY``
  (flags, then q, p, g, y), as CNRI's ``Util.getBytesFromPublicKey`` writes it;
- a JSON Web Key (format ``key``, RFC 7517/8037): ``RSA``, ``EC`` P-256 and
  ``OKP`` Ed25519.

A challenge answer proves an identity over ``nonce ‖ cnonce`` (the server's
nonce, then the client's): a signature by the private key for HS_PUBKEY, or a
digest or MAC keyed by the secret for HS_SECKEY, as CNRI's ``Util.doMac``
computes them.

The node has a signing key (RSA, so that every Handle client can check the
server signatures it asks for) and a sealing key that keeps HS_SECKEY secrets
encrypted at rest in the form the challenge-response needs. Both live in files
of mode 600, created on first use.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from registry import values as hv

PublicKey = (
    rsa.RSAPublicKey | dsa.DSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
)
PUBKEY_TYPE = "HS_PUBKEY"
NODE_KEY_INDEX = 301
"""Index of the node's own HS_PUBKEY in the record ``0.NA/<prefix>`` of every homed prefix."""
MAX_PBKDF2_ITERATIONS = 200_000
"""A client chooses the PBKDF2 work; more than this would let it burn the server's CPU."""

_RSA = b"RSA_PUB_KEY"
_DSA = b"DSA_PUB_KEY"


class KeyError_(ValueError):
    """A key or answer that cannot be read; the message says why."""


# --- algorithms ---------------------------------------------------------------------------


def _canonical_alg(alg: str) -> str:
    """``sha-256``, ``SHA256``, ``Sha_2`` → ``SHA256``: letters and digits only, upper case."""
    return "".join(ch for ch in alg.upper() if ch.isalnum())


_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "SHA1": hashes.SHA1,
    "SHA": hashes.SHA1,
    "SHA256": hashes.SHA256,
    "SHA2": hashes.SHA256,
}


def signature_hash(alg: str) -> hashes.HashAlgorithm:
    try:
        return _HASHES[_canonical_alg(alg)]()
    except KeyError:
        raise KeyError_(f"unsupported signature hash algorithm {alg!r}") from None


# --- public keys --------------------------------------------------------------------------


def _read_array(buf: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(buf):
        raise KeyError_("truncated key encoding")
    (length,) = struct.unpack_from(">I", buf, offset)
    end = offset + 4 + length
    if end > len(buf):
        raise KeyError_("truncated key encoding")
    return buf[offset + 4 : end], end


def _int(raw: bytes) -> int:
    return int.from_bytes(raw, "big", signed=False)


def parse_handle_key(buf: bytes) -> PublicKey:
    """A public key from the Handle binary key encoding."""
    kind, offset = _read_array(buf, 0)
    offset += 2  # flags, reserved
    try:
        if kind == _RSA:
            e, offset = _read_array(buf, offset)
            n, offset = _read_array(buf, offset)
            return rsa.RSAPublicNumbers(_int(e), _int(n)).public_key()
        if kind == _DSA:
            q, offset = _read_array(buf, offset)
            p, offset = _read_array(buf, offset)
            g, offset = _read_array(buf, offset)
            y, offset = _read_array(buf, offset)
            params = dsa.DSAParameterNumbers(_int(p), _int(q), _int(g))
            return dsa.DSAPublicNumbers(_int(y), params).public_key()
    except ValueError as exc:
        raise KeyError_(f"invalid {kind.decode('ascii', 'replace')} key: {exc}") from None
    raise KeyError_(f"unsupported key type {kind[:32].decode('ascii', 'replace')!r}")


def _array(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def _java_bytes(n: int) -> bytes:
    """Big-endian two's complement, as Java's ``BigInteger.toByteArray``."""
    return n.to_bytes(n.bit_length() // 8 + 1, "big")


def encode_handle_key(key: rsa.RSAPublicKey | dsa.DSAPublicKey) -> bytes:
    """The Handle binary key encoding of an RSA or DSA public key."""
    if isinstance(key, rsa.RSAPublicKey):
        n = key.public_numbers()
        parts = [_RSA, None, _java_bytes(n.e), _java_bytes(n.n)]
    else:
        d = key.public_numbers()
        p = d.parameter_numbers
        parts = [_DSA, None, *(_java_bytes(x) for x in (p.q, p.p, p.g, d.y))]
    return b"".join(b"\0\0" if part is None else _array(part) for part in parts)


def _b64url(text: object) -> bytes:
    if not isinstance(text, str):
        raise KeyError_("JWK members must be base64url strings")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise KeyError_("JWK member is not base64url") from None


def parse_jwk(jwk: Any) -> PublicKey:
    """A public key from a JSON Web Key (RSA, EC P-256, OKP Ed25519)."""
    if not isinstance(jwk, dict):
        raise KeyError_("a key value must be a JWK object")
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            return rsa.RSAPublicNumbers(
                _int(_b64url(jwk.get("e"))), _int(_b64url(jwk.get("n")))
            ).public_key()
        if kty == "EC" and jwk.get("crv") == "P-256":
            x, y = _int(_b64url(jwk.get("x"))), _int(_b64url(jwk.get("y")))
            return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(_b64url(jwk.get("x")))
    except ValueError as exc:
        raise KeyError_(f"invalid {kty} JWK: {exc}") from None
    raise KeyError_(f"unsupported JWK (kty {kty!r}, crv {jwk.get('crv')!r})")


def public_key(value: hv.Value) -> PublicKey:
    """The public key held by an HS_PUBKEY value."""
    if value.format == "key":
        return parse_jwk(value.data)
    if value.format in ("base64", "hex"):
        raw = (
            base64.b64decode(value.data) if value.format == "base64" else bytes.fromhex(value.data)
        )
        return parse_handle_key(raw)
    raise KeyError_(f"an HS_PUBKEY value in format {value.format!r} holds no key")


def check_public_key_value(value: hv.Value) -> None:
    """Refuse an HS_PUBKEY value whose key cannot be read (raises ``KeyError_``)."""
    public_key(value)


def same_key(a: PublicKey, b: PublicKey) -> bool:
    """True when ``a`` and ``b`` are the same public key."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(*spki) == b.public_bytes(*spki)


def verify_signature(key: PublicKey, alg: str, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``key``'s signature of ``message``.

    RSA uses PKCS#1 v1.5; DSA and ECDSA accept DER or the raw ``r ‖ s`` form;
    Ed25519 ignores ``alg``.
    """
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), signature_hash(alg))
        elif isinstance(key, dsa.DSAPublicKey):
            key.verify(
                _der(signature, key.parameters().parameter_numbers().q.bit_length()),
                message,
                signature_hash(alg),
            )
        else:
            key.verify(_der(signature, key.curve.key_size), message, ec.ECDSA(signature_hash(alg)))
    except (InvalidSignature, ValueError):
        return False
    return True


def _der(signature: bytes, bits: int) -> bytes:
    """A DSA/ECDSA signature in DER, converting the raw ``r ‖ s`` form if that is what came."""
    size = (bits + 7) // 8
    if len(signature) == 2 * size and signature[:1] != b"\x30":
        return encode_dss_signature(_int(signature[:size]), _int(signature[size:]))
    return signature


# --- secret-key answers -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pbkdf2Params:
    salt: bytes
    iterations: int
    length_bits: int


def seckey_answer(
    alg: str, secret: bytes, nonce: bytes, cnonce: bytes, pbkdf2: Pbkdf2Params | None = None
) -> bytes:
    """The answer a holder of ``secret`` gives to the challenge ``nonce ‖ cnonce``."""
    message = nonce + cnonce
    name = _canonical_alg(alg)
    if name in ("SHA1", "SHA"):
        return hashlib.sha1(secret + message + secret).digest()
    if name in ("SHA256", "SHA2"):
        return hashlib.sha256(secret + message + secret).digest()
    if name == "HMACSHA1":
        return hmac.new(secret, message, hashlib.sha1).digest()
    if name == "HMACSHA256":
        return hmac.new(secret, message, hashlib.sha256).digest()
    if name in ("PBKDF2HMACSHA1", "PBKDF2WITHHMACSHA1"):
        if pbkdf2 is None:
            raise KeyError_("PBKDF2-HMAC-SHA1 needs salt, iterations and length")
        if not 1 <= pbkdf2.iterations <= MAX_PBKDF2_ITERATIONS:
            raise KeyError_(f"PBKDF2 iterations must be from 1 to {MAX_PBKDF2_ITERATIONS}")
        if pbkdf2.length_bits % 8 or not 64 <= pbkdf2.length_bits <= 512:
            raise KeyError_("PBKDF2 length must be a multiple of 8 from 64 to 512 bits")
        derived = hashlib.pbkdf2_hmac(
            "sha1", secret, pbkdf2.salt, pbkdf2.iterations, pbkdf2.length_bits // 8
        )
        return hmac.new(derived, message, hashlib.sha1).digest()
    if name == "MD5":
        raise KeyError_("MD5 answers are not accepted; use SHA256 or HMAC-SHA256")
    raise KeyError_(f"unsupported secret-key algorithm {alg!r}")


# --- the node's key material --------------------------------------------------------------


def _create_exclusively(path: Path, content: bytes) -> None:
    """Write ``path`` (mode 600) unless it exists; safe when several processes race."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)
    finally:
        temp.unlink()


def _read_private(path: Path) -> bytes:
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} is readable by others; chmod 600 it")
    return path.read_bytes()


class Sealer:
    """AES-256-GCM: HS_SECKEY secrets kept recoverable only with the node's sealing key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def load_or_create(cls, path: Path) -> Sealer:
        if not path.exists():
            _create_exclusively(path, base64.b64encode(AESGCM.generate_key(256)) + b"\n")
        try:
            key = base64.b64decode(_read_private(path).strip(), validate=True)
        except binascii.Error:
            raise ValueError(f"{path} does not hold a base64 key") from None
        if len(key) != 32:
            raise ValueError(f"{path} must hold a 32-byte key")
        return cls(key)

    def seal(self, plain: bytes, context: bytes) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, plain, context)).decode("ascii")

    def open(self, sealed: str, context: bytes) -> bytes | None:
        """The plain bytes, or None when ``sealed`` was not made with this key and context."""
        try:
            raw = base64.b64decode(sealed, validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], context)
        except Exception:  # noqa: BLE001 - any failure means "cannot open"
            return None


class NodeKey:
    """The node's RSA signing key: server signatures and its published HS_PUBKEY."""

    ALG = "SHA256"

    def __init__(self, private: rsa.RSAPrivateKey) -> None:
        self._private = private
        self.public = private.public_key()

    @classmethod
    def load_or_create(cls, path: Path) -> NodeKey:
        if not path.exists():
            fresh = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = fresh.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _create_exclusively(path, pem)
        private = serialization.load_pem_private_key(_read_private(path), password=None)
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ValueError(f"{path} must hold an RSA private key")
        return cls(private)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message, padding.PKCS1v15(), hashes.SHA256())

    def value(self, timestamp: str) -> hv.Value:
        """The HS_PUBKEY value publishing this key (Handle binary encoding, public read)."""
        encoded = base64.b64encode(encode_handle_key(self.public)).decode("ascii")
        return hv.Value(NODE_KEY_INDEX, PUBKEY_TYPE, "base64", encoded, timestamp=timestamp)


class AuditKey:
    """The node's Ed25519 key that signs the audit log's checkpoints.

    A key of its own, apart from the RSA node key: checkpoints are read by auditors
    and top-level nodes that may pin it for years, and it never signs anything else.
    """

    def __init__(self, private: ed25519.Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def load_or_create(cls, path: Path) -> AuditKey:
        if not path.exists():
            pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _create_exclusively(path, pem)
        private = serialization.load_pem_private_key(_read_private(path), password=None)
        if not isinstance(private, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path} must hold an Ed25519 private key")
        return cls(private)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)
