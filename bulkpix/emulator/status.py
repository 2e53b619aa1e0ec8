"""google.rpc.Status errors, the only error shape the emulator answers with."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from aiohttp import web

__all__ = ["ApiError", "json_body", "status_response"]

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


async def json_body(request: web.Request, fields: Collection[str]) -> dict[str, Any]:
    """A request's JSON object, refused as the service refuses it: not JSON, not an object,
    or a field the method does not know."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"Invalid JSON payload received. {exc}.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid JSON payload received. Expected an object.")
    unknown = set(body) - set(fields)
    if unknown:
        names = ", ".join(f'"{n}"' for n in sorted(unknown))
        raise ApiError(400, f"Invalid JSON payload received. Unknown name {names}: "
                            "Cannot find field.")
    return body
