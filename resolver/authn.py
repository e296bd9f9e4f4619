"""Who is calling: HTTP Basic, ``Authorization: Handle`` challenge-response, sessions.

As HANDLE.NET's server does (manual chapter 14):

- a request that needs an identity and has none gets 401 with two challenges,
  ``Basic realm="handle"`` and ``Handle sessionId="…", nonce="…"`` (a new
  session whose nonce is the server's half of the challenge);
- the client answers with ``Authorization: Handle version="0", sessionId, id,
  type, cnonce, alg, signature``: for HS_PUBKEY a signature of nonce‖cnonce, for
  HS_SECKEY a digest or MAC keyed by the secret (``registry.keys``); the answer
  authenticates the session, and ``Handle sessionId="…"`` alone then names the
  identity on later requests, in any worker (sessions live in PostgreSQL);
- a header with ``cnonce`` but no ``id`` asks for the node's own signature of
  nonce‖cnonce (``serverAlg``, ``serverSignature``), so a client can check it
  talks to the node that holds the key published at ``0.NA/<prefix>``;
- ``/api/sessions`` creates, authenticates, shows and ends sessions explicitly.

When TLS is configured, credentials and writes over plain HTTP are refused (403),
except from loopback in development mode.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from registry.auth import Answer, Authority, Identity, parse_identity, split_basic
from registry.errors import (
    AuthenticationNeeded,
    InsufficientPermissions,
    ProtocolError,
    RateLimited,
)
from registry.keys import NodeKey, Pbkdf2Params
from registry.sessions import Session, Sessions
from resolver.limits import Limits

SESSION_COOKIE = "JSESSIONID"
"""The cookie that also names a session (HANDLE.NET's servlet sessions use it)."""
MAX_PARAM_CHARS = 4096
"""Longest auth-param value accepted (an RSA-8192 signature is 1,366 base64 characters)."""
IDENTITY = web.RequestKey("identity", object)
CHALLENGE = web.RequestKey("challenge", object)

_TOKEN = r"[-A-Za-z0-9!#$%&'*+.^_`|~]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM = re.compile(rf"\s*({_TOKEN})\s*=\s*({_TOKEN}|{_QUOTED})\s*(,|$)", re.DOTALL)
_ANSWER_FIELDS = ("id", "type", "cnonce", "alg", "signature")


@dataclass(frozen=True, slots=True)
class Security:
    """The transport rules: TLS configured, and whether loopback may skip it."""

    tls: bool = False
    dev_mode: bool = False

    def allows_credentials(self, request: web.Request) -> bool:
        """Whether credentials may travel on this request's connection."""
        return not self.tls or request.secure or (self.dev_mode and _loopback(request.remote))

    def check(self, request: web.Request, *, needs_identity: bool) -> None:
        """403 for writes, sessions and credentials over plain HTTP when TLS is configured."""
        credentials = "Authorization" in request.headers or SESSION_COOKIE in request.cookies
        if not needs_identity and not credentials:
            return
        if not self.allows_credentials(request):
            raise InsufficientPermissions(
                "this node requires HTTPS for writes, sessions and credentials"
            )


def _loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def parse_handle_params(text: str) -> dict[str, str]:
    """The auth-params of ``Handle k="v", k2=v2``; a clear error for anything malformed."""
    params: dict[str, str] = {}
    position = 0
    while position < len(text):
        m = _PARAM.match(text, position)
        if m is None:
            raise AuthenticationNeeded(
                f"malformed Authorization: Handle header near {text[position : position + 20]!r}"
            )
        key, raw = m.group(1).lower(), m.group(2)
        value = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        if key in params:
            raise AuthenticationNeeded(f"Authorization: Handle names {m.group(1)} twice")
        if len(value) > MAX_PARAM_CHARS:
            raise AuthenticationNeeded(f"Authorization: Handle {m.group(1)} is too long")
        params[key] = value
        position = m.end()
        if m.group(3) == "" and position < len(text):
            raise AuthenticationNeeded("malformed Authorization: Handle header")
    if not params:
        raise AuthenticationNeeded("Authorization: Handle carries no parameters")
    return params


def _b64(params: dict[str, str], name: str) -> bytes:
    try:
        return base64.b64decode(params[name], validate=True)
    except (binascii.Error, ValueError):
        raise AuthenticationNeeded(f"Authorization: Handle {name} is not valid base64") from None


def _pbkdf2(params: dict[str, str]) -> Pbkdf2Params | None:
    if "salt" not in params:
        return None
    iterations, length = params.get("iterations", ""), params.get("length", "")
    if not (
        iterations.isascii() and iterations.isdigit() and length.isascii() and length.isdigit()
    ):
        raise AuthenticationNeeded("PBKDF2 answers need numeric iterations and length")
    if len(iterations) > 9 or len(length) > 9:
        raise AuthenticationNeeded("PBKDF2 iterations or length out of range")
    return Pbkdf2Params(_b64(params, "salt"), int(iterations), int(length))


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(slots=True)
class Challenge:
    """What the response tells the client about its session (``WWW-Authenticate: Handle``)."""

    session: Session
    server_signature: bytes | None = None
    server_alg: str | None = None

    def header(self) -> str:
        parts = [
            f"sessionId={_quote(self.session.id)}",
            f"nonce={_quote(base64.b64encode(self.session.nonce).decode('ascii'))}",
        ]
        if self.server_signature is not None and self.server_alg is not None:
            parts.append(f"serverAlg={_quote(self.server_alg)}")
            signature = base64.b64encode(self.server_signature).decode("ascii")
            parts.append(f"serverSignature={_quote(signature)}")
        return "Handle " + ", ".join(parts)

    def set_cookie(self, response: web.StreamResponse, *, secure: bool) -> None:
        """Name the session in a ``JSESSIONID`` cookie too, for clients that keep cookies."""
        response.set_cookie(
            SESSION_COOKIE,
            self.session.id,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=secure,
        )

    def document(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "sessionId": self.session.id,
            "nonce": base64.b64encode(self.session.nonce).decode("ascii"),
            "authenticated": self.session.identity is not None,
        }
        if self.session.identity is not None:
            body["id"] = self.session.identity
        if self.server_signature is not None:
            body["serverAlg"] = self.server_alg
            body["serverSignature"] = base64.b64encode(self.server_signature).decode("ascii")
        return body


class Authenticator:
    """Turns a request's credentials into an identity, one way for every endpoint."""

    def __init__(
        self,
        authority: Authority,
        sessions: Sessions,
        node_key: NodeKey | None,
        security: Security,
        limits: Limits | None = None,
    ) -> None:
        self.authority = authority
        self.sessions = sessions
        self.node_key = node_key
        self.security = security
        self.limits = limits or Limits(0, 0, 0, 0)

    async def caller(
        self, request: web.Request, *, needs_identity: bool = False
    ) -> Identity | None:
        """The authenticated identity, None without credentials; 401 when they are wrong.

        ``needs_identity``: the request writes or reads non-public data, so the
        transport rules apply even without credentials.
        """
        self.security.check(request, needs_identity=needs_identity)
        if IDENTITY in request:
            return request[IDENTITY]  # type: ignore[return-value]
        if needs_identity:  # charged before any secret is checked: guessing costs budget
            self._charge(request, "writes")
        who = await self._identify(request)
        request[IDENTITY] = who
        if needs_identity and who is not None:
            wait = self.limits.write_by_identity.take(_identity_key(who))
            if wait > 0:
                raise RateLimited(f"too many writes by {who}", wait)
        return who

    async def _verified(
        self, request: web.Request, claimed: str, proof: Callable[[], Awaitable[Identity]]
    ) -> Identity:
        """``proof``'s identity, with a growing wait after repeated failures.

        The failures are counted per claimed identity (however it is spelled) and
        client address: guessing from one address slows down, while the identity's
        owner elsewhere is not locked out.
        """
        try:
            index, handle = parse_identity(claimed)
            identity = _identity_key(Identity(index, handle))
        except AuthenticationNeeded:
            identity = claimed
        key = f"{identity} {request.remote}"
        wait = self.limits.auth_failures.blocked_for(key)
        if wait > 0:
            raise RateLimited(f"too many failed authentications as {claimed[:100]}", wait)
        try:
            who = await proof()
        except AuthenticationNeeded:
            self.limits.auth_failures.failed(key)
            raise
        self.limits.auth_failures.succeeded(key)
        return who

    async def _identify(self, request: web.Request) -> Identity | None:
        header = request.headers.get("Authorization")
        if header is None:
            return await self._from_cookie(request)
        scheme, _, rest = header.strip().partition(" ")
        if scheme.lower() == "basic":
            return await self._basic(request, rest)
        if scheme.lower() == "handle":
            return await self._handle(request, header, parse_handle_params(rest))
        raise AuthenticationNeeded(
            f"authorization scheme {scheme[:20]!r} is not supported; use Basic or Handle"
        )

    async def _from_cookie(self, request: web.Request) -> Identity | None:
        """The session named by the ``JSESSIONID`` cookie, as HANDLE.NET's servlet sessions
        work; an unknown or expired one is no session (the caller is anonymous)."""
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id or len(session_id) > MAX_PARAM_CHARS:
            return None
        session = await self.sessions.get(session_id)
        if session is None:
            return None
        request[CHALLENGE] = Challenge(session)
        return _identity_of(session)

    async def _basic(self, request: web.Request, token: str) -> Identity:
        try:
            credentials = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationNeeded("Basic credentials are not valid base64 UTF-8") from None
        user, secret = split_basic(credentials)
        return await self._verified(
            request, user, lambda: self.authority.authenticate(user, secret)
        )

    async def _session(self, params: dict[str, str]) -> Session:
        session_id = params.get("sessionid")
        if session_id is None:
            raise AuthenticationNeeded(
                "an Authorization: Handle answer needs the sessionId of its challenge"
            )
        session = await self.sessions.get(session_id)
        if session is None:
            raise AuthenticationNeeded("the session is unknown or has expired")
        return session

    async def _handle(
        self, request: web.Request, header: str, params: dict[str, str]
    ) -> Identity | None:
        params = _with_session_cookie(request, params)
        version = params.get("version", "0")
        if version != "0":
            raise AuthenticationNeeded(f"Authorization: Handle version {version!r} is unknown")
        answering = any(name in params for name in ("id", "type", "alg", "signature"))
        if not answering and "sessionid" not in params:
            if "cnonce" in params:  # a server signature, on a fresh session
                request[CHALLENGE] = self._signed(await self.sessions.create(), params)
                return None
            raise AuthenticationNeeded("Authorization: Handle names no session and no identity")
        session = await self._session(params)
        challenge = self._signed(session, params) if not answering and "cnonce" in params else None
        request[CHALLENGE] = challenge or Challenge(session)
        if not answering:
            return _identity_of(session)
        missing = [name for name in _ANSWER_FIELDS if name not in params]
        if missing:
            raise AuthenticationNeeded(f"Authorization: Handle lacks {', '.join(missing)}")
        proof = hashlib.sha256(header.strip().encode("utf-8", "surrogateescape")).digest()
        if session.proof is not None and session.proof == proof:
            return _identity_of(session)
        answer = Answer(
            identity=params["id"],
            type=params["type"],
            alg=params["alg"],
            cnonce=_b64(params, "cnonce"),
            signature=_b64(params, "signature"),
            pbkdf2=_pbkdf2(params),
        )
        who = await self._verified(
            request, answer.identity, lambda: self.authority.verify_answer(session.nonce, answer)
        )
        await self.sessions.authenticate(session.id, str(who), proof)
        authenticated = Session(session.id, session.nonce, str(who), proof, session.used_at)
        request[CHALLENGE] = Challenge(authenticated)
        return who

    def _signed(self, session: Session, params: dict[str, str]) -> Challenge:
        if self.node_key is None:
            return Challenge(session)
        signature = self.node_key.sign(session.nonce + _b64(params, "cnonce"))
        return Challenge(session, signature, NodeKey.ALG)

    async def challenge(self, request: web.Request) -> Challenge | None:
        """The Handle challenge for a 401: the request's own session, or a new one."""
        existing = request.get(CHALLENGE)
        if isinstance(existing, Challenge) and existing.session.identity is None:
            return existing
        try:
            return Challenge(await self.sessions.create())
        except Exception:  # noqa: BLE001 - the database may be down; Basic still works
            return None

    # --- /api/sessions ---------------------------------------------------------------------

    def _charge(self, request: web.Request, what: str) -> None:
        """Count a write-like request against its client address's budget (429 when spent)."""
        wait = self.limits.write_by_address.take(request.remote or "")
        if wait > 0:
            raise RateLimited(f"too many {what} from this client", wait)

    def _session_request(self, request: web.Request) -> dict[str, str] | None:
        """The ``Authorization: Handle`` parameters of a session request (None: no such header),
        after the transport rules and the client's budget allowed it."""
        self.security.check(request, needs_identity=True)
        self._charge(request, "session requests")
        scheme, _, rest = request.headers.get("Authorization", "").strip().partition(" ")
        return parse_handle_params(rest) if scheme.lower() == "handle" else None

    async def create_session(self, request: web.Request) -> web.Response:
        params = self._session_request(request) or {}
        session = await self.sessions.create()
        challenge = self._signed(session, params) if "cnonce" in params else Challenge(session)
        return _session_response(
            challenge, 201, {"Location": "/api/sessions/this"}, secure=request.secure
        )

    async def authenticate_session(self, request: web.Request) -> web.Response:
        who = await self.caller(request, needs_identity=True)
        challenge = request.get(CHALLENGE)
        if not isinstance(challenge, Challenge):
            if who is not None:
                raise ProtocolError(
                    "HTTP Basic needs no session; use Authorization: Handle with a sessionId"
                )
            raise AuthenticationNeeded('name a session: Authorization: Handle sessionId="…"')
        return _session_response(challenge, 200, secure=request.secure)

    async def show_session(self, request: web.Request) -> web.Response:
        return await self.authenticate_session(request)

    async def end_session(self, request: web.Request) -> web.Response:
        params = _with_session_cookie(request, self._session_request(request) or {})
        if "sessionid" not in params:
            raise AuthenticationNeeded('name a session: Authorization: Handle sessionId="…"')
        session = await self._session(params)
        await self.sessions.delete(session.id)
        response = web.Response(status=204)
        response.del_cookie(SESSION_COOKIE, path="/")
        return response


def _with_session_cookie(request: web.Request, params: dict[str, str]) -> dict[str, str]:
    """``params`` naming the ``JSESSIONID`` cookie's session when they name none."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if "sessionid" in params or not cookie:
        return params
    return {**params, "sessionid": cookie}


def _identity_key(who: Identity) -> str:
    """One spelling per identity (handles match ASCII case-insensitively)."""
    return f"{who.index}:{who.handle.key}"


def _identity_of(session: Session) -> Identity | None:
    if session.identity is None:
        return None
    index, handle = parse_identity(session.identity)
    return Identity(index, handle)


def _session_response(
    challenge: Challenge,
    status: int,
    headers: dict[str, str] | None = None,
    *,
    secure: bool = False,
) -> web.Response:
    response = web.Response(
        body=orjson.dumps(challenge.document()),
        status=status,
        content_type="application/json",
        headers=headers,
    )
    response.headers["WWW-Authenticate"] = challenge.header()
    challenge.set_cookie(response, secure=secure)
    return response


def add_routes(app: web.Application, authenticator: Callable[[web.Request], Authenticator]) -> None:
    """The ``/api/sessions`` endpoints, served by the authenticator of the request's app."""

    def route(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            method: Callable[[web.Request], Awaitable[web.Response]]
            method = getattr(authenticator(request), name)
            return await method(request)

        return handler

    this = "/api/sessions/this"
    app.router.add_post("/api/sessions", route("create_session"), name="sessions")
    app.router.add_put(this, route("authenticate_session"), name="session-auth")
    app.router.add_post(this, route("authenticate_session"), name="session-auth-post")
    app.router.add_get(this, route("show_session"), name="session")
    app.router.add_delete(this, route("end_session"), name="session-end")
