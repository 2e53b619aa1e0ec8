"""The service's request limits, its quotas and its service-time model."""

from __future__ import annotations

import collections
import contextlib
import random
import time
from collections.abc import Iterator, Sequence

import numpy as np

from bulkpix.dtypes import request_bytes
from bulkpix.emulator.config import EmulatorConfig
from bulkpix.emulator.status import ApiError

__all__ = [
    "MAX_BANDS",
    "MAX_REQUEST_BYTES",
    "MAX_SIDE",
    "RATE_QUOTA_MESSAGE",
    "Quota",
    "check_request_limits",
    "request_size",
    "service_seconds",
]

MAX_REQUEST_BYTES = 50_331_648
MAX_SIDE = 32_768
MAX_BANDS = 1_024


def request_size(width: int, height: int, dtypes: Sequence[np.dtype]) -> int:
    """Bytes as the service counts them: each band's size plus a mask byte, per pixel."""
    return request_bytes(height, width, (np.dtype(d).itemsize for d in dtypes))


def check_request_limits(width: int, height: int, dtypes: Sequence[np.dtype],
                         max_bytes: int = MAX_REQUEST_BYTES) -> int:
    """Raise 400 for a request over a limit; return its counted size."""
    if len(dtypes) > MAX_BANDS:
        raise ApiError(400, f"Number of bands ({len(dtypes)}) must be less than or equal to "
                            f"{MAX_BANDS}.")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ApiError(400, f"Grid dimensions ({width} x {height} pixels) must be less than or "
                            f"equal to {MAX_SIDE} pixels on each side.")
    size = request_size(width, height, dtypes)
    if size > max_bytes:
        raise ApiError(400, f"Total request size ({size} bytes) must be less than or equal to "
                            f"{max_bytes} bytes.")
    return size


# The service's own words for its rate quota (EE_API.md, "Quotas").
RATE_QUOTA_MESSAGE = ("Quota exceeded for quota metric 'Number of read requests' and limit "
                      "'Number of read requests per minute per user'")
# The emulator's strict mode for tests: the same quota counted in a one-second window.
STRICT_RATE_QUOTA_MESSAGE = ("Quota exceeded for quota metric 'Number of read requests' and "
                             "limit 'Number of read requests per second per user'")
WINDOW_SECONDS = {"minute": 60.0, "second": 1.0}


class Quota:
    """Concurrent-request and rate quotas, read live from the config.

    The rate is counted as the service documents it, ``max_qps * 60`` requests in any rolling
    minute (a rolling window is at least as strict as a fixed one, wherever the service puts
    its minute boundaries, and does not depend on when a test starts); with
    ``qps_window="second"``, ``max_qps`` in any rolling second.
    """

    def __init__(self, config: EmulatorConfig, clock: collections.abc.Callable[[], float]
                 = time.monotonic) -> None:
        self._config = config
        self.clock = clock  # replaceable, e.g. by a frozen clock in tests
        self._in_flight = 0
        self._admitted: collections.deque[float] = collections.deque()  # admission times

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one request slot for the body of the with-block, or raise 429."""
        max_concurrent, max_qps = self._config.max_concurrent, self._config.max_qps
        if max_concurrent is not None and self._in_flight >= max_concurrent:
            raise ApiError(429, "Too many concurrent aggregations.")
        window = WINDOW_SECONDS[self._config.qps_window]
        now = self.clock()
        while self._admitted and self._admitted[0] <= now - window:
            self._admitted.popleft()
        if max_qps is not None and len(self._admitted) >= max_qps * window:
            raise ApiError(429, RATE_QUOTA_MESSAGE if window == WINDOW_SECONDS["minute"]
                           else STRICT_RATE_QUOTA_MESSAGE)
        self._admitted.append(now)
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1


def service_seconds(config: EmulatorConfig, size_bytes: int, rng: random.Random) -> float:
    """How long a getPixels call of this counted size takes, jittered by the request's RNG."""
    base = config.service_base_s + config.service_per_mb_s * size_bytes / 1e6
    jitter = config.service_jitter
    return max(0.0, base * rng.uniform(1.0 - jitter, 1.0 + jitter)) if base else 0.0
