"""The one error tree of the node.

``IdNodeError`` is the root. ``ClientError`` and its subclasses are answers to
callers: each carries its Handle ``response_code`` and HTTP status; the class
docstring is the default message. ``InternalError`` and its subclasses are the
node's own failures and never reach a caller with their details.
"""

from __future__ import annotations

from typing import ClassVar


class IdNodeError(Exception):
    """Identifier node error."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (type(self).__doc__ or type(self).__name__).strip()
        super().__init__(self.message)


class ClientError(IdNodeError):
    """The request cannot be served."""

    response_code: ClassVar[int] = 4
    http_status: ClassVar[int] = 400

    def __init__(
        self,
        message: str | None = None,
        *,
        handle: str | None = None,
        index: int | None = None,
        details: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.handle = handle
        self.index = index
        self.details = details
        """One entry per failing part (``field``, ``rule``, ``message``), answered as ``errors``."""

    def status_for(self, *, write: bool) -> int:
        """The HTTP status of this error on a read or on a write."""
        return self.http_status


class ProtocolError(ClientError):
    """Malformed request."""

    response_code = 4


class PayloadTooLarge(ProtocolError):
    """Request body too large."""

    http_status = 413


class RequestTimeout(ProtocolError):
    """The client took too long to send its request."""

    http_status = 408


class UnsupportedMediaType(ProtocolError):
    """Request body must be sent as Content-Type: application/json."""

    http_status = 415


class HandleNotFound(ClientError):
    """Handle not found."""

    response_code = 100
    http_status = 404


class AuditNotFound(ClientError):
    """no such audit entry, tree size or checkpoint"""

    response_code = 100
    http_status = 404


class HandleAlreadyExists(ClientError):
    """Handle already exists."""

    response_code = 101
    http_status = 409


class InvalidHandle(ClientError):
    """Invalid handle."""

    response_code = 102


class ValuesNotFound(ClientError):
    """Values not found."""

    response_code = 200

    def status_for(self, *, write: bool) -> int:
        return 400 if write else 200


class ValueAlreadyExists(ClientError):
    """Value already exists."""

    response_code = 201
    http_status = 409


class InvalidValue(ClientError):
    """Invalid value."""

    response_code = 202


class TemplateViolation(InvalidValue):
    """The record does not satisfy its prefix's data template."""


class InvalidTemplate(ProtocolError):
    """The data template is not a valid template."""


class NotResponsible(ClientError):
    """This node is not responsible for the handle's prefix."""

    response_code = 301


class NotAnAdmin(ClientError):
    """The authenticated identity is not an administrator of this handle."""

    response_code = 400
    http_status = 403


class InsufficientPermissions(ClientError):
    """The authenticated identity lacks the permission for this operation."""

    response_code = 401
    http_status = 403


class AuthenticationNeeded(ClientError):
    """Authentication needed."""

    response_code = 402
    http_status = 401


class ServerTooBusy(ClientError):
    """Server too busy, try again later."""

    response_code = 3
    http_status = 503


class RateLimited(ClientError):
    """Too many requests from this client or identity: 429 with ``Retry-After``."""

    response_code = 3
    http_status = 429

    def __init__(self, message: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InternalError(IdNodeError):
    """Internal server error."""

    response_code: ClassVar[int] = 2
    http_status: ClassVar[int] = 500


class ConfigError(InternalError):
    """Invalid configuration."""


class StoreError(InternalError):
    """The database failed."""
