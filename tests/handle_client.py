"""An independent client for the HANDLE.NET v9 ``Authorization: Handle`` scheme.

Written from the protocol description (HANDLE.NET v9 technical manual, chapter 14, "JSON
REST API", authentication), not from the node's code, so that the end-to-end tests built on
it catch server mistakes instead of sharing them.

The protocol, from the client's side:

* The server issues a session: ``POST /api/sessions`` (201, ``{"sessionId", "nonce"}``), or a
  401 answer to any request carrying ``WWW-Authenticate: Handle sessionId="…", nonce="…"``.
* The client proves an identity ``<index>:<handle>`` by signing ``nonce ‖ cnonce`` (nonce from
  the server, cnonce its own random bytes) and sends, on ``PUT /api/sessions/this`` or on any
  request, ``Authorization: Handle version="0", sessionId="…", id="…", type="HS_SECKEY" |
  "HS_PUBKEY", cnonce="<b64>", alg="…", signature="<b64>"``.
* Afterwards ``Authorization: Handle version="0", sessionId="…"`` alone authenticates.
* A header with ``cnonce`` but no ``id`` asks the server to prove itself: the answer carries
  ``serverAlg`` and ``serverSignature``, the node's signature over ``nonce ‖ cnonce``.

Only ``cryptography``, ``hashlib``, ``hmac``, ``base64``, ``os`` and ``aiohttp`` are used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PrivateKey = (
    rsa.RSAPrivateKey | dsa.DSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
)
PublicKey = (
    rsa.RSAPublicKey | dsa.DSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
)
Json = dict[str, Any]

SECKEY_ALGS = ("SHA1", "SHA256", "HMAC-SHA1", "HMAC-SHA256", "PBKDF2-HMAC-SHA1")
RSA_KEY_TYPE = b"RSA_PUB_KEY"
DSA_KEY_TYPE = b"DSA_PUB_KEY"
DEFAULT_PBKDF2_ITERATIONS = 10000
DEFAULT_PBKDF2_LENGTH = 160  # bits

# The names the manual uses for the challenge's auth-params (matched case-insensitively).
CHALLENGE_PARAMS = ("sessionId", "nonce", "serverAlg", "serverSignature", "error", "version")


class ProtocolError(Exception):
    """The server answered something the protocol does not allow at this step."""


# --- base64 ---------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    """Standard base64 with padding (what the Handle header and JSON bodies carry)."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Strict standard base64 (padding optional): raises ValueError on anything else."""
    text = text.strip()
    text += "=" * (-len(text) % 4)
    return base64.b64decode(text, validate=True)


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWK (RFC 7517/7518) requires."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_cnonce(size: int = 16) -> bytes:
    return os.urandom(size)


# --- header syntax (RFC 7235 challenges and credentials) -----------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SPACE = " \t"


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """Read the quoted-string starting at ``text[pos] == '"'``: (unescaped value, end)."""
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                break
            out.append(text[i + 1])
            i += 2
        elif ch == '"':
            return "".join(out), i + 1
        else:
            out.append(ch)
            i += 1
    raise ValueError(f"unterminated quoted-string in {text!r}")


def parse_challenges(value: str) -> list[tuple[str, dict[str, str]]]:
    """Parse one ``WWW-Authenticate`` field value, which may hold several challenges
    (``Basic realm="handle", Handle sessionId="…", nonce="…"``): [(scheme, params)].

    A token followed by ``=`` inside a challenge is an auth-param; any other token starts a
    new challenge. Parameter values may be tokens or quoted-strings (``\\`` escapes)."""
    challenges: list[tuple[str, dict[str, str]]] = []
    current: dict[str, str] | None = None
    pos, n = 0, len(value)
    while True:
        while pos < n and (value[pos] in _SPACE or value[pos] == ","):
            pos += 1
        if pos >= n:
            return challenges
        m = _TOKEN.match(value, pos)
        if not m:
            raise ValueError(f"unexpected {value[pos:]!r} in {value!r}")
        name, after = m.group(), m.end()
        eq = after
        while eq < n and value[eq] in _SPACE:
            eq += 1
        if current is not None and eq < n and value[eq] == "=":
            pos = eq + 1
            while pos < n and value[pos] in _SPACE:
                pos += 1
            if pos < n and value[pos] == '"':
                param, pos = _quoted(value, pos)
            else:
                pm = _TOKEN.match(value, pos)
                if not pm:
                    raise ValueError(f"no value for {name!r} in {value!r}")
                param, pos = pm.group(), pm.end()
            if name in current:
                raise ValueError(f"duplicate auth-param {name!r} in {value!r}")
            current[name] = param
        else:
            current = {}
            challenges.append((name, current))
            pos = after


def _header_values(headers: Mapping[str, str], name: str) -> list[str]:
    getall: Callable[..., list[str]] | None = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    return [v for k, v in headers.items() if k.lower() == name.lower()]


def challenges(headers: Mapping[str, str]) -> list[tuple[str, dict[str, str]]]:
    """Every challenge of every ``WWW-Authenticate`` field of a response."""
    found: list[tuple[str, dict[str, str]]] = []
    for value in _header_values(headers, "WWW-Authenticate"):
        found.extend(parse_challenges(value))
    return found


def _canonical(params: Mapping[str, str]) -> dict[str, str]:
    names = {c.lower(): c for c in CHALLENGE_PARAMS}
    return {names.get(k.lower(), k): v for k, v in params.items()}


def parse_www_authenticate(headers: Mapping[str, str]) -> dict[str, str]:
    """The auth-params of the ``Handle`` challenge among a response's ``WWW-Authenticate``
    headers (``sessionId``, ``nonce``, maybe ``serverAlg``, ``serverSignature``, ``error``).
    Raises LookupError when there is no Handle challenge."""
    found = challenges(headers)
    for scheme, params in found:
        if scheme.lower() == "handle":
            return _canonical(params)
    raise LookupError(f"no Handle challenge in WWW-Authenticate: {found!r}")


def quote(value: str) -> str:
    """An HTTP quoted-string: ``\\`` and ``"`` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_pairs(pairs: Iterable[tuple[str, str | int]], scheme: str = "Handle") -> str:
    """``<scheme> k1="v1", k2="v2"`` in the given order (duplicates allowed: for tests)."""
    return f"{scheme} " + ", ".join(f"{k}={quote(str(v))}" for k, v in pairs)


def format_authorization(**params: str | int) -> str:
    """``Handle version="0", sessionId="…", id="…", …``: values quoted, in the order given
    (``version="0"`` first when not given)."""
    if "version" not in params:
        params = {"version": "0", **params}
    return format_pairs(params.items())


def session_header(session_id: str) -> dict[str, str]:
    return {"Authorization": format_authorization(version="0", sessionId=session_id)}


# --- HS_SECKEY answers ----------------------------------------------------------------------


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def seckey_digest(secret: str | bytes, nonce: bytes, cnonce: bytes, hash_name: str) -> bytes:
    """alg "SHA1" / "SHA256": H(secret ‖ nonce ‖ cnonce ‖ secret)."""
    key = _secret_bytes(secret)
    return hashlib.new(hash_name, key + nonce + cnonce + key).digest()


def seckey_hmac(secret: str | bytes, nonce: bytes, cnonce: bytes, hash_name: str) -> bytes:
    """alg "HMAC-SHA1" / "HMAC-SHA256": HMAC(key=secret, msg=nonce ‖ cnonce)."""
    return hmac.new(_secret_bytes(secret), nonce + cnonce, hash_name).digest()


def seckey_pbkdf2(
    secret: str | bytes, nonce: bytes, cnonce: bytes, salt: bytes, iterations: int, length: int
) -> bytes:
    """alg "PBKDF2-HMAC-SHA1": HMAC-SHA1(key=PBKDF2-HMAC-SHA1(secret, salt, iterations,
    length/8 bytes), msg=nonce ‖ cnonce); ``length`` is in bits."""
    derived = hashlib.pbkdf2_hmac("sha1", _secret_bytes(secret), salt, iterations, length // 8)
    return hmac.new(derived, nonce + cnonce, "sha1").digest()


def seckey_signature(
    alg: str,
    secret: str | bytes,
    nonce: bytes,
    cnonce: bytes,
    *,
    salt: bytes | None = None,
    iterations: int = DEFAULT_PBKDF2_ITERATIONS,
    length: int = DEFAULT_PBKDF2_LENGTH,
) -> tuple[bytes, dict[str, str]]:
    """The answer for an HS_SECKEY identity and the extra header params it needs
    (``salt``, ``iterations``, ``length`` for PBKDF2-HMAC-SHA1)."""
    if alg == "SHA1":
        return seckey_digest(secret, nonce, cnonce, "sha1"), {}
    if alg == "SHA256":
        return seckey_digest(secret, nonce, cnonce, "sha256"), {}
    if alg == "HMAC-SHA1":
        return seckey_hmac(secret, nonce, cnonce, "sha1"), {}
    if alg == "HMAC-SHA256":
        return seckey_hmac(secret, nonce, cnonce, "sha256"), {}
    if alg == "PBKDF2-HMAC-SHA1":
        salt = os.urandom(16) if salt is None else salt
        extra = {"salt": b64(salt), "iterations": str(iterations), "length": str(length)}
        return seckey_pbkdf2(secret, nonce, cnonce, salt, iterations, length), extra
    raise ValueError(f"unknown HS_SECKEY alg {alg!r}")


# --- HS_PUBKEY answers and server signatures -------------------------------------------------


def _hash(alg: str) -> hashes.HashAlgorithm:
    name = alg.upper().replace("-", "")
    if name in ("SHA1", "SHA"):
        return hashes.SHA1()
    if name in ("SHA256", "SHA2"):
        return hashes.SHA256()
    if name == "SHA384":
        return hashes.SHA384()
    if name == "SHA512":
        return hashes.SHA512()
    raise ValueError(f"unknown hash alg {alg!r}")


def pubkey_signature(private_key: PrivateKey, nonce: bytes, cnonce: bytes, alg: str) -> bytes:
    """The answer for an HS_PUBKEY identity: a signature over ``nonce ‖ cnonce``.
    RSA PKCS#1 v1.5, DSA (DER), ECDSA (DER) with the hash ``alg`` names; Ed25519 ("Ed25519")."""
    data = nonce + cnonce
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        if alg.lower() != "ed25519":
            raise ValueError(f"Ed25519 keys sign with alg 'Ed25519', not {alg!r}")
        return private_key.sign(data)
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(data, padding.PKCS1v15(), _hash(alg))
    if isinstance(private_key, dsa.DSAPrivateKey):
        return private_key.sign(data, _hash(alg))
    return private_key.sign(data, ec.ECDSA(_hash(alg)))


def verify_signature(public_key: PublicKey, data: bytes, alg: str, signature: bytes) -> bool:
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), _hash(alg))
        elif isinstance(public_key, dsa.DSAPublicKey):
            public_key.verify(signature, data, _hash(alg))
        else:
            public_key.verify(signature, data, ec.ECDSA(_hash(alg)))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_server_signature(
    public_key: PublicKey, nonce: bytes, cnonce: bytes, alg: str, signature: bytes
) -> bool:
    """Whether ``signature`` is the node's signature over ``nonce ‖ cnonce`` (``serverAlg``
    names the hash; RSA keys use PKCS#1 v1.5)."""
    return verify_signature(public_key, nonce + cnonce, alg, signature)


# --- public keys in handle records -----------------------------------------------------------


def _java_bigint(n: int) -> bytes:
    """Big-endian two's complement, minimal, like Java's BigInteger.toByteArray() (n >= 0)."""
    return n.to_bytes(n.bit_length() // 8 + 1, "big")


def _length_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def handle_key_bytes(public_key: PublicKey) -> bytes:
    """The Handle binary public key format (RSA or DSA):
    ``lp(key type) ‖ flags(2 bytes, 0) ‖ lp(e) ‖ lp(n)`` resp. ``… ‖ lp(q) ‖ lp(p) ‖ lp(g) ‖
    lp(y)``, where lp is a 4-byte big-endian length then the bytes."""
    flags = (0).to_bytes(2, "big")
    if isinstance(public_key, rsa.RSAPublicKey):
        nums = public_key.public_numbers()
        fields = [nums.e, nums.n]
        kind = RSA_KEY_TYPE
    elif isinstance(public_key, dsa.DSAPublicKey):
        dnums = public_key.public_numbers()
        par = dnums.parameter_numbers
        fields = [par.q, par.p, par.g, dnums.y]
        kind = DSA_KEY_TYPE
    else:
        raise TypeError(f"no Handle binary format for {type(public_key).__name__}")
    return (
        _length_prefixed(kind) + flags + b"".join(_length_prefixed(_java_bigint(f)) for f in fields)
    )


def decode_handle_key(data: bytes) -> rsa.RSAPublicKey | dsa.DSAPublicKey:
    """Read a Handle binary RSA or DSA public key (strict: every byte must be used)."""
    pos = 0

    def take(size: int) -> bytes:
        nonlocal pos
        if pos + size > len(data):
            raise ValueError("truncated Handle public key")
        chunk = data[pos : pos + size]
        pos += size
        return chunk

    def array() -> bytes:
        return take(int.from_bytes(take(4), "big"))

    def integer() -> int:
        return int.from_bytes(array(), "big", signed=True)

    kind = array()
    take(2)  # flags
    key: rsa.RSAPublicKey | dsa.DSAPublicKey
    if kind == RSA_KEY_TYPE:
        e = integer()
        n = integer()
        key = rsa.RSAPublicNumbers(e, n).public_key()
    elif kind == DSA_KEY_TYPE:
        q, p, g, y = integer(), integer(), integer(), integer()
        key = dsa.DSAPublicNumbers(y, dsa.DSAParameterNumbers(p, q, g)).public_key()
    else:
        raise ValueError(f"unknown Handle key type {kind!r}")
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} trailing bytes after the Handle public key")
    return key


def _unsigned(n: int, size: int | None = None) -> bytes:
    return n.to_bytes(size or max(1, (n.bit_length() + 7) // 8), "big")


def jwk(public_key: PublicKey) -> dict[str, str]:
    """The RFC 7517 JWK of an RSA, EC P-256 or Ed25519 public key (DSA has none)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        nums = public_key.public_numbers()
        return {"kty": "RSA", "n": b64url(_unsigned(nums.n)), "e": b64url(_unsigned(nums.e))}
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise TypeError(f"only P-256 is supported, not {public_key.curve.name}")
        pn = public_key.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(_unsigned(pn.x, 32)),
            "y": b64url(_unsigned(pn.y, 32)),
        }
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    raise TypeError(f"no JWK for {type(public_key).__name__} in this client")


def public_key_from_jwk(key: Mapping[str, Any]) -> PublicKey:
    kty = key.get("kty")
    if kty == "RSA":
        n = int.from_bytes(unb64url(key["n"]), "big")
        e = int.from_bytes(unb64url(key["e"]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if kty == "EC" and key.get("crv") == "P-256":
        x = int.from_bytes(unb64url(key["x"]), "big")
        y = int.from_bytes(unb64url(key["y"]), "big")
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    if kty == "OKP" and key.get("crv") == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(unb64url(key["x"]))
    raise ValueError(f"unsupported JWK {dict(key)!r}")


def pubkey_value(index: int, public_key: PublicKey, fmt: str = "base64") -> Json:
    """An HS_PUBKEY handle value: ``fmt`` "base64" (Handle binary format) or "key" (JWK)."""
    if fmt == "base64":
        data: Json = {"format": "base64", "value": b64(handle_key_bytes(public_key))}
    elif fmt == "key":
        data = {"format": "key", "value": jwk(public_key)}
    else:
        raise ValueError(f"unknown key format {fmt!r}")
    return {"index": index, "type": "HS_PUBKEY", "data": data}


def public_key_from_value(value: Mapping[str, Any]) -> PublicKey:
    """The public key of an HS_PUBKEY value as the JSON API returns it."""
    data = value["data"]
    if data.get("format") == "base64":
        return decode_handle_key(unb64(data["value"]))
    if data.get("format") == "key" and isinstance(data.get("value"), Mapping):
        return public_key_from_jwk(data["value"])
    raise ValueError(f"unsupported HS_PUBKEY data {data!r}")


# --- the session helper ----------------------------------------------------------------------


async def _answer(response: aiohttp.ClientResponse) -> Json:
    text = await response.text()
    if response.content_type == "application/json" and text:
        body = json.loads(text)
        return body if isinstance(body, dict) else {"_json": body}
    return {"_text": text} if text else {}


class HandleSession:
    """One authentication session of the JSON REST API, held by its ``sessionId``.

    ``http`` should not keep cookies (``aiohttp.DummyCookieJar``): the session must work
    through the Authorization header alone."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base.rstrip("/")
        self.session_id: str | None = None
        self.nonce: bytes | None = None
        self.location: str | None = None
        self.identity: str | None = None
        self.last_cnonce: bytes | None = None
        self.last_authorization: str | None = None

    @property
    def url(self) -> str:
        return f"{self.base}/api/sessions/this"

    async def start(self, authorization: str | None = None) -> Json:
        """``POST /api/sessions``: expects 201, a Location, ``sessionId`` and ``nonce``."""
        headers = {"Authorization": authorization} if authorization else {}
        async with self.http.post(f"{self.base}/api/sessions", headers=headers) as r:
            body = await _answer(r)
            if r.status != 201:
                raise ProtocolError(f"POST /api/sessions: {r.status} {body!r}")
            location = r.headers.get("Location")
        if not location:
            raise ProtocolError(f"POST /api/sessions: no Location header ({body!r})")
        if not isinstance(body.get("sessionId"), str) or not isinstance(body.get("nonce"), str):
            raise ProtocolError(f"POST /api/sessions: no sessionId/nonce in {body!r}")
        self.location = location
        self.adopt(body["sessionId"], unb64(body["nonce"]))
        return body

    def adopt(self, session_id: str, nonce: bytes) -> None:
        """Use a session issued elsewhere (e.g. by a 401 challenge)."""
        self.session_id = session_id
        self.nonce = nonce

    def _require(self) -> tuple[str, bytes]:
        if self.session_id is None or self.nonce is None:
            raise ProtocolError("no session: call start() first")
        return self.session_id, self.nonce

    def header(self) -> dict[str, str]:
        """``Authorization: Handle version="0", sessionId="…"`` for requests on the session."""
        session_id, _ = self._require()
        return session_header(session_id)

    def seckey_authorization(
        self,
        identity: str,
        secret: str | bytes,
        alg: str = "SHA256",
        *,
        cnonce: bytes | None = None,
        type_: str = "HS_SECKEY",
    ) -> str:
        session_id, nonce = self._require()
        cnonce = new_cnonce() if cnonce is None else cnonce
        signature, extra = seckey_signature(alg, secret, nonce, cnonce)
        self.last_cnonce = cnonce
        return format_authorization(
            version="0",
            sessionId=session_id,
            id=identity,
            type=type_,
            cnonce=b64(cnonce),
            alg=alg,
            signature=b64(signature),
            **extra,
        )

    def pubkey_authorization(
        self,
        identity: str,
        private_key: PrivateKey,
        alg: str = "SHA256",
        *,
        cnonce: bytes | None = None,
        type_: str = "HS_PUBKEY",
    ) -> str:
        session_id, nonce = self._require()
        cnonce = new_cnonce() if cnonce is None else cnonce
        signature = pubkey_signature(private_key, nonce, cnonce, alg)
        self.last_cnonce = cnonce
        return format_authorization(
            version="0",
            sessionId=session_id,
            id=identity,
            type=type_,
            cnonce=b64(cnonce),
            alg=alg,
            signature=b64(signature),
        )

    async def send_authorization(self, authorization: str, method: str = "PUT") -> tuple[int, Json]:
        """``PUT`` (or ``POST``) ``/api/sessions/this`` with a full Authorization header."""
        self.last_authorization = authorization
        async with self.http.request(
            method, self.url, headers={"Authorization": authorization}
        ) as r:
            body = await _answer(r)
            status = r.status
        if status == 200 and body.get("authenticated") is True:
            self.identity = body.get("id")
        return status, body

    async def authenticate_seckey(
        self, identity: str, secret: str | bytes, alg: str = "SHA256", *, method: str = "PUT"
    ) -> tuple[int, Json]:
        return await self.send_authorization(
            self.seckey_authorization(identity, secret, alg), method
        )

    async def authenticate_pubkey(
        self, identity: str, private_key: PrivateKey, alg: str = "SHA256", *, method: str = "PUT"
    ) -> tuple[int, Json]:
        return await self.send_authorization(
            self.pubkey_authorization(identity, private_key, alg), method
        )

    async def status(self) -> tuple[int, Json]:
        """``GET /api/sessions/this`` with the session header."""
        async with self.http.get(self.url, headers=self.header()) as r:
            return r.status, await _answer(r)

    async def delete(self) -> int:
        """``DELETE /api/sessions/this`` with the session header: the status."""
        async with self.http.delete(self.url, headers=self.header()) as r:
            await r.read()
            return r.status

    async def close(self) -> None:
        """End the session: expects 204."""
        status = await self.delete()
        if status != 204:
            raise ProtocolError(f"DELETE /api/sessions/this: {status}")
