"""The fastest a job could possibly go under the service model and the quota.

With ``n`` equal requests of ``s`` counted MB each, a service time of ``t(s) = base + per_mb*s``
seconds per request, at most ``C`` requests in flight and at most ``Q`` admitted a second::

    makespan >= max(ceil(n / C) * t(s), n / Q)

(requests run in waves of at most C; Q bounds how fast they can be started). The ideal is the
minimum of this bound over every tiling the service's limits allow: the region cut into
``r x c`` equal tiles (sides rounded up) with each request at most 48 MiB counted and at most
32,768 px a side. Assumptions: service times are their mean (the emulator's jitter is
symmetric, so its expected wave time is slightly longer than this), the client costs nothing
(no start-up, transfer, decode or write time) and tiles need not align with any chunk grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FORMULA", "Ideal", "ideal_for_requests", "ideal_makespan"]

MAX_REQUEST_BYTES = 50_331_648  # the service's limits (EE_API.md)
MAX_SIDE = 32_768
_MAX_SPLITS = 256  # tile rows/columns tried per side; far past any optimum here

FORMULA = "max(ceil(n/C) * (base + per_mb*s), n/Q), minimised over r x c tilings"


@dataclass(frozen=True)
class Ideal:
    seconds: float
    requests: int
    tile_height: int
    tile_width: int
    request_mb: float
    formula: str

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "requests": self.requests,
                "tile": [self.tile_height, self.tile_width], "request_mb": self.request_mb,
                "formula": self.formula}


def ideal_makespan(height: int, width: int, request_bytes_per_px: int, *, base_s: float,
                   per_mb_s: float, concurrency: int, qps: float) -> Ideal:
    """The minimum of the makespan bound over r x c tilings within the service limits."""
    rows = np.arange(1, min(height, _MAX_SPLITS) + 1)
    cols = np.arange(1, min(width, _MAX_SPLITS) + 1)
    tile_h = -(-height // rows)
    tile_w = -(-width // cols)
    mb = (tile_h[:, None] * tile_w[None, :] * request_bytes_per_px) / 1e6
    fits = ((tile_h[:, None] * tile_w[None, :] * request_bytes_per_px <= MAX_REQUEST_BYTES)
            & (tile_h[:, None] <= MAX_SIDE) & (tile_w[None, :] <= MAX_SIDE))
    n = rows[:, None] * cols[None, :]
    makespan = np.maximum(-(-n // concurrency) * (base_s + per_mb_s * mb), n / qps)
    makespan = np.where(fits, makespan, np.inf)
    i, j = np.unravel_index(int(np.argmin(makespan)), makespan.shape)
    return Ideal(seconds=float(makespan[i, j]), requests=int(n[i, j]),
                 tile_height=int(tile_h[i]), tile_width=int(tile_w[j]),
                 request_mb=float(mb[i, j]),
                 formula=f"{FORMULA}; C={concurrency}, Q={qps:g}, base={base_s:g} s, "
                         f"per_mb={per_mb_s:g} s/MB")


def ideal_for_requests(request_sizes: Sequence[int], *, base_s: float, per_mb_s: float,
                       concurrency: int, qps: float) -> float:
    """The fastest these very requests could be served with ``concurrency`` slots:
    ``max(sum(t_i) / C, max(t_i), n / Q)`` with ``t_i = base + per_mb * s_i`` (a lower bound:
    the slots are kept perfectly busy, no request waits for another's wave)."""
    if not request_sizes:
        return 0.0
    times = [base_s + per_mb_s * size / 1e6 for size in request_sizes]
    return max(math.fsum(times) / concurrency, max(times), len(times) / qps)
