"""One error hierarchy for the whole project.

Every failure the pipeline can meet is one of these; the REST client translates aiohttp
exceptions and HTTP statuses into them at one boundary (``bulkpix.ee.client``). Like
zarr-python's errors, each class also inherits the built-in it resembles, so callers that
catch ``ValueError`` or ``PermissionError`` keep working.

``RetryableError`` vs ``PermanentError`` is the only distinction the retry layer looks at.
"""

from __future__ import annotations

__all__ = [
    "BadPayload",
    "BulkpixError",
    "CredentialsMissing",
    "JobError",
    "NotFound",
    "PermanentError",
    "PermissionDenied",
    "QuotaExceeded",
    "RemoteError",
    "RequestInvalid",
    "RequestTooLarge",
    "RetryableError",
    "ServerError",
    "StoreError",
    "StoreMismatch",
    "TransportError",
    "Unauthenticated",
]


class BulkpixError(Exception):
    """Base of every error bulkpix raises on purpose."""


class JobError(BulkpixError, ValueError):
    """The job file or the command's arguments are wrong (exit code 2)."""


class CredentialsMissing(BulkpixError, PermissionError):
    """No credentials were found at all: the user has not logged in (exit code 3)."""


class StoreError(BulkpixError, OSError):
    """The output store cannot be used as asked."""


class StoreMismatch(StoreError):
    """The output already holds a different job; the message says what changed."""


class RemoteError(BulkpixError):
    """A call to the Earth Engine REST API failed.

    ``status`` is the HTTP status (0 when no response arrived); ``retry_after`` is the
    server's Retry-After in seconds when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


class RetryableError(RemoteError):
    """Trying the same request again may succeed."""


class QuotaExceeded(RetryableError):
    """429 RESOURCE_EXHAUSTED: too many requests in flight or per second."""


class ServerError(RetryableError):
    """500, 502, 503 or 504."""


class TransportError(RetryableError, ConnectionError):
    """No complete response: reset, refused, timed out or cut short."""


class BadPayload(RetryableError):
    """A response arrived whole but does not decode to the pixels asked for."""


class PermanentError(RemoteError):
    """The same request will fail again; retrying wastes quota."""


class RequestInvalid(PermanentError, ValueError):
    """400 INVALID_ARGUMENT."""


class RequestTooLarge(RequestInvalid):
    """400 for request size: the tile must be split."""


class Unauthenticated(PermanentError, PermissionError):
    """401 UNAUTHENTICATED (after one token refresh)."""


class PermissionDenied(PermanentError, PermissionError):
    """403 PERMISSION_DENIED."""


class NotFound(PermanentError, LookupError):
    """404 NOT_FOUND."""
