"""One error hierarchy for the whole project.

Every failure the pipeline can meet is one of these; the REST client translates aiohttp
exceptions and HTTP statuses into them at one boundary (``bulkpix.ee.client``). Like
zarr-python's errors, each class also inherits the built-in it resembles, so callers that
catch ``ValueError`` or ``PermissionError`` keep working.

``RetryableError`` vs ``PermanentError`` is the only distinction the retry layer looks at.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "BadMetadata",
    "BadPayload",
    "BulkpixError",
    "ComputationLimited",
    "CredentialsMissing",
    "JobError",
    "JobTooLarge",
    "LeaseLost",
    "NotFound",
    "OutputInUse",
    "PermanentError",
    "PermissionDenied",
    "QuotaExceeded",
    "RemoteError",
    "RequestInvalid",
    "RequestTooLarge",
    "RetryableError",
    "RunStopped",
    "ServerError",
    "StoreDamaged",
    "StoreError",
    "StoreMismatch",
    "TooManyBands",
    "TransportError",
    "Unauthenticated",
    "printable",
]


class BulkpixError(Exception):
    """Base of every error bulkpix raises on purpose."""


class RunStopped(Exception):
    """The run was asked to stop (Ctrl-C, or the cluster's submitting client) while a tile
    waited for a slot or a retry: the tile is left for the next run, not failed."""


class JobError(BulkpixError, ValueError):
    """The job file or the command's arguments are wrong (exit code 2)."""


class CredentialsMissing(BulkpixError, PermissionError):
    """No credentials were found at all: the user has not logged in (exit code 3)."""


class JobTooLarge(JobError):
    """The job would write far more pixels than its assets hold there, or a huge amount in
    any case; it runs only when confirmed (``bulkpix run --yes``, ``bulkpix.run(yes=True)``).
    ``summary`` says how large, in one line."""

    def __init__(self, summary: str) -> None:
        super().__init__(
            f"{summary}; check scale and dimensions, or confirm with `bulkpix run --yes` "
            "(Python: yes=True)"
        )
        self.summary = summary


class StoreError(BulkpixError, OSError):
    """The output store cannot be used as asked."""


class StoreMismatch(StoreError):
    """The output already holds a different job; the message says what changed."""


class OutputInUse(StoreMismatch):
    """Another run holds the output's lease; the message names it (host, pid, since)."""


class LeaseLost(StoreError):
    """This run no longer holds its output's lease: it stops before writing another marker."""


class StoreDamaged(StoreError):
    """The output's record or its arrays are damaged; the message names what is wrong."""


class RemoteError(BulkpixError):
    """A call to the Earth Engine REST API failed.

    ``status`` is the HTTP status (0 when no response arrived); ``retry_after`` is the
    server's Retry-After in seconds when it sent one, capped at the longest wait bulkpix
    accepts; ``asked_wait`` is what the server asked for when that was longer.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        retry_after: float | None = None,
        asked_wait: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.asked_wait = asked_wait


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
    """400 for request size or grid dimensions: the tile must be split into smaller windows."""


class TooManyBands(RequestTooLarge):
    """400 for the number of bands: the tile's bands must be split (its window is fine)."""


class ComputationLimited(RequestTooLarge):
    """A computed image's tile cost more than the service allows ("User memory limit
    exceeded.", "Computation timed out." as 400s, "Too many concurrent aggregations." as a
    429): the same request will fail again, a smaller one may not."""


class Unauthenticated(PermanentError, PermissionError):
    """401 UNAUTHENTICATED (after one token refresh)."""


class PermissionDenied(PermanentError, PermissionError):
    """403 PERMISSION_DENIED."""


class NotFound(PermanentError, LookupError):
    """404 NOT_FOUND."""


class BadMetadata(PermanentError, ValueError):
    """The service's asset metadata is not something bulkpix can build an output from
    (a band without an id, a grid of zero pixels, a CRS nobody can describe, ...)."""


# ESC-introduced sequences (CSI "ESC [ ... final", OSC "ESC ] ... BEL|ST", and two-byte ones)
# go whole: dropping only the ESC would leave "[2J" litter in the message.
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, ended by BEL or ST
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
)


def printable(text: str, *, limit: int | None = None) -> str:
    """``text`` safe to print or store: what a server (or any outsider) said, without the
    control characters that could drive a terminal (ESC, BEL, C1 codes, bidi overrides).

    Escape sequences are removed whole; line breaks and tabs become spaces, so the text
    stays on one line. ``limit`` cuts it to that many characters, with "...".
    """
    text = _ESCAPE_SEQUENCE.sub("", text)
    cleaned = "".join(
        " " if ch in "\t\n\r\v\f" else ch
        for ch in text
        if ch in "\t\n\r\v\f" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs")
    )
    if limit is not None and len(cleaned) > limit:
        cleaned = cleaned[: max(0, limit - 3)] + "..."
    return cleaned
