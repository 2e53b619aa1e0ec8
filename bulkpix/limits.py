"""The service's documented limits on one getPixels request (see ../shared/EE_API.md).

A module of plain numbers, so the HTTP client can bound a response body without importing
the tiler (and numpy with it) before its first request. ``bulkpix.geometry.tiling`` re-exports
them, where planning uses them.
"""

from __future__ import annotations

__all__ = ["MAX_BANDS", "MAX_REQUEST_BYTES", "MAX_SIDE"]

MAX_REQUEST_BYTES = 50_331_648
"""48 MiB: the service's limit on width * height * sum(itemsize + 1) of one request."""
MAX_SIDE = 32_768
"""Most pixels per side of one request."""
MAX_BANDS = 1_024
"""Most bands in one request."""
