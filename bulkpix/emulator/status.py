"""google.rpc.Status errors, the only error shape the emulator answers with."""

from __future__ import annotations

import json

from aiohttp import web

__all__ = ["ApiError", "status_response"]

_STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class ApiError(Exception):
    """Raised anywhere in request handling; the server turns it into a Status body."""

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


def status_response(error: ApiError) -> web.Response:
    body = {
        "error": {
            "code": error.code,
            "message": error.message,
            "status": _STATUS_NAMES.get(error.code, "UNKNOWN"),
        }
    }
    return web.Response(
        status=error.code,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=error.headers,
    )
