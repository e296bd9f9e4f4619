"""Identities, authentication and authorisation against HS_ADMIN values.

An identity is ``<index>:<handle>``: the value at that index of that handle is
an HS_SECKEY whose secret the caller proves (HTTP Basic, or an answer to a
challenge) or an HS_PUBKEY whose private key signed the challenge. An HS_PUBKEY
identity may name index 0: any public key of the handle, the first that
verifies giving the index. What an identity may do comes from
the HS_ADMIN values of the handle itself and of its prefix's record
``0.NA/<prefix>`` (and the records of the parent prefixes held here). An
HS_ADMIN reference matches an identity directly (index 0 meaning any index) or
through an HS_VLIST group.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from registry import handle as hs
from registry import keys, permissions
from registry import values as hv
from registry.errors import AuthenticationNeeded, InsufficientPermissions, InvalidHandle, NotAnAdmin
from registry.keys import Pbkdf2Params, Sealer
from registry.permissions import Perm
from registry.secrets import unseal, verify_secret
from registry.store import Reader, Store

_MAX_GROUP_DEPTH = 3


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated admin identity."""

    index: int
    handle: hs.Handle

    def __str__(self) -> str:
        return f"{self.index}:{self.handle.text}"


def parse_identity(text: str) -> tuple[int, hs.Handle]:
    """``300:0.NA/88.118.8`` → ``(300, Handle)``; percent-encoded forms are decoded."""
    decoded = unquote(text)
    index_text, colon, handle_text = decoded.partition(":")
    if not colon or not hv.is_number(index_text):
        raise AuthenticationNeeded("user name must be an identity '<index>:<handle>'")
    try:
        return int(index_text), hs.parse(handle_text)
    except InvalidHandle as exc:
        raise AuthenticationNeeded(f"identity handle is invalid: {exc.message}") from None


def split_basic(credentials: str) -> tuple[str, str]:
    """Split decoded Basic credentials into identity and secret.

    Clients percent-encode the identity (``300%3A0.NA%2F88.118.8:secret``), but
    some send it raw (``300:0.NA/88.118.8:secret``), whose own colon then comes
    first: in that case the user name ends at the second colon.
    """
    user, _, secret = credentials.partition(":")
    if hv.is_number(user) and "/" in secret:
        handle_part, colon, rest = secret.partition(":")
        if colon:
            return f"{user}:{handle_part}", rest
    return user, secret


@dataclass(frozen=True, slots=True)
class Answer:
    """A client's answer to the challenge ``nonce``: who it claims to be and its proof."""

    identity: str
    type: str
    alg: str
    cnonce: bytes
    signature: bytes
    pbkdf2: Pbkdf2Params | None = None


class Authority:
    """Answers who a caller is and what it may do."""

    def __init__(
        self,
        store: Store,
        sealer: Sealer | None = None,
        node_key: keys.PublicKey | None = None,
    ) -> None:
        self.store = store
        self.sealer = sealer
        self.node_key = node_key
        """The node's own public key: it signs any nonce on request, so it proves no one."""

    async def verify_answer(self, nonce: bytes, answer: Answer) -> Identity:
        """The identity proven by ``answer``; ``AuthenticationNeeded`` says why not."""
        index, handle = parse_identity(answer.identity)
        record = await self.store.get(handle)
        if record is None:
            raise AuthenticationNeeded(f"identity handle {handle.text} does not exist")
        kind = answer.type.upper()
        if kind == hv.SECKEY_TYPE:
            return self._verify_secret_answer(nonce, answer, index, handle, record.values)
        if kind == keys.PUBKEY_TYPE:
            return self._verify_signature(nonce, answer, index, handle, record.values)
        raise AuthenticationNeeded(f"type must be HS_SECKEY or HS_PUBKEY, not {answer.type!r}")

    def _verify_secret_answer(
        self,
        nonce: bytes,
        answer: Answer,
        index: int,
        handle: hs.Handle,
        values: Sequence[hv.Value],
    ) -> Identity:
        stored = next(
            (v.data for v in values if v.index == index and v.type.upper() == hv.SECKEY_TYPE),
            None,
        )
        if not isinstance(stored, str):
            raise AuthenticationNeeded(f"{index}:{handle.text} holds no HS_SECKEY")
        secret = unseal(stored, self.sealer)
        if secret is None:
            raise AuthenticationNeeded(
                f"the secret of {index}:{handle.text} cannot be unsealed here (stored as a hash "
                "only, or sealed with another node's sealing key), so it cannot answer a "
                "challenge; use HTTP Basic, or set the secret again"
            )
        try:
            expected = keys.seckey_answer(answer.alg, secret, nonce, answer.cnonce, answer.pbkdf2)
        except keys.KeyError_ as exc:
            raise AuthenticationNeeded(str(exc)) from None
        if not hmac.compare_digest(expected, answer.signature):
            raise AuthenticationNeeded("the answer does not match the identity's secret")
        return Identity(index, handle)

    def _verify_signature(
        self,
        nonce: bytes,
        answer: Answer,
        index: int,
        handle: hs.Handle,
        values: Sequence[hv.Value],
    ) -> Identity:
        candidates = sorted(
            (v for v in values if v.type.upper() == keys.PUBKEY_TYPE and index in (0, v.index)),
            key=lambda v: v.index,
        )
        if not candidates:
            where = "any index" if index == 0 else f"index {index}"
            raise AuthenticationNeeded(f"{handle.text} holds no HS_PUBKEY at {where}")
        message = nonce + answer.cnonce
        for value in candidates:
            try:
                key = keys.public_key(value)
            except (keys.KeyError_, ValueError):
                continue
            if self.node_key is not None and keys.same_key(key, self.node_key):
                continue  # anyone can have the node sign a challenge: never an identity
            try:
                verified = keys.verify_signature(key, answer.alg, message, answer.signature)
            except keys.KeyError_ as exc:
                raise AuthenticationNeeded(str(exc)) from None
            if verified:
                return Identity(value.index, handle)
        raise AuthenticationNeeded("the signature does not verify with the identity's key")

    async def authenticate(self, user: str, secret: str) -> Identity:
        """Check an identity's HS_SECKEY secret; raise ``AuthenticationNeeded`` if wrong."""
        index, handle = parse_identity(user)
        record = await self.store.get(handle)
        stored = None
        if record is not None:
            for v in record.values:
                if v.index == index and v.type.upper() == hv.SECKEY_TYPE:
                    stored = v.data
        if isinstance(stored, str):
            candidates = [secret] if unquote(secret) == secret else [secret, unquote(secret)]
            if any(verify_secret(candidate, stored) for candidate in candidates):
                return Identity(index, handle)
        raise AuthenticationNeeded("identity or secret is wrong")

    async def _admin_entries(
        self, h: hs.Handle, own_values: Sequence[hv.Value] | None, reader: Reader
    ) -> list[dict[str, object]]:
        entries = [v.data for v in own_values or () if v.type.upper() == hv.ADMIN_TYPE]
        for prefix in hs.parent_prefixes(h.homing_prefix):
            record = await reader.get(hs.prefix_record(prefix))
            if record is not None:
                entries += [v.data for v in record.values if v.type.upper() == hv.ADMIN_TYPE]
        return [e for e in entries if isinstance(e, dict)]

    async def _refers_to(
        self, ref_handle: str, ref_index: int, who: Identity, depth: int, reader: Reader
    ) -> bool:
        if hs.fold(ref_handle) == who.handle.key and ref_index in (0, who.index):
            return True
        if depth >= _MAX_GROUP_DEPTH:
            return False
        try:
            record = await reader.get(hs.parse(ref_handle))
        except InvalidHandle:
            return False
        for v in record.values if record else ():
            if v.type.upper() == hv.VLIST_TYPE and ref_index in (0, v.index):
                for member in v.data if isinstance(v.data, list) else ():
                    if await self._refers_to(
                        member["handle"], member["index"], who, depth + 1, reader
                    ):
                        return True
        return False

    async def _granted(
        self,
        who: Identity,
        h: hs.Handle,
        own_values: Sequence[hv.Value] | None,
        reader: Reader | None,
    ) -> list[str]:
        """The permission strings of the HS_ADMIN entries naming ``who``."""
        reader = reader or self.store
        grants = []
        for entry in await self._admin_entries(h, own_values, reader):
            ref_index = entry.get("index")
            ref_handle = entry.get("handle")
            if not isinstance(ref_index, int) or not isinstance(ref_handle, str):
                continue
            if await self._refers_to(ref_handle, ref_index, who, 0, reader):
                grants.append(str(entry.get("permissions", "")))
        return grants

    async def require(
        self,
        who: Identity | None,
        h: hs.Handle,
        perms: Iterable[Perm],
        own_values: Sequence[hv.Value] | None,
        reader: Reader | None = None,
    ) -> None:
        """Raise unless ``who`` holds every permission in ``perms`` on ``h``.

        ``reader`` is the open transaction when there is one (see ``Transaction``).
        """
        if who is None:
            raise AuthenticationNeeded("this operation needs an authenticated admin", handle=h.text)
        grants = await self._granted(who, h, own_values, reader)
        if not grants:
            raise NotAnAdmin(f"{who} is not an administrator of {h.text}", handle=h.text)
        for perm in perms:
            if not any(permissions.has(g, perm) for g in grants):
                raise InsufficientPermissions(
                    f"{who} lacks the {perm.name} permission on {h.text}", handle=h.text
                )

    async def may_read_private(
        self, who: Identity | None, h: hs.Handle, own_values: Sequence[hv.Value]
    ) -> bool:
        """True when ``who`` is an admin of ``h`` with READ_VALUE."""
        if who is None:
            return False
        grants = await self._granted(who, h, own_values, None)
        return any(permissions.has(g, Perm.READ_VALUE) for g in grants)
