"""Figures from the emulator's request log: calls, failures, 429 shares, the busy span."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["RequestStats", "summarize"]


@dataclass(frozen=True)
class RequestStats:
    """getPixels calls of one client. Every call that did not answer 200 was retried by the
    client (all clients here retry until the data is complete), so it counts as a retry."""

    requests: int
    ok: int
    retries: int
    status_counts: dict[str, int]
    share_429: float
    share_429_after_settle: float  # among calls that arrived after ``settle_s``
    first_start: float | None  # epoch seconds: arrival of the first getPixels call
    first_any: float | None  # epoch seconds: arrival of the first call of any kind
    last_end: float | None  # epoch seconds: end of the last getPixels call
    ok_request_sizes: tuple[int, ...]  # counted sizes of the successful calls
    ok_windows: tuple[tuple[int, int, int, int], ...]  # (row_off, col_off, height, width)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "ok": self.ok, "retries": self.retries,
                "status_counts": self.status_counts, "share_429": self.share_429,
                "share_429_after_settle": self.share_429_after_settle}


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def summarize(records: Sequence[dict[str, Any]], settle_s: float = 10.0) -> RequestStats:
    calls = [r for r in records if r.get("op") == "get_pixels"]
    statuses = Counter(str(r["status"]) for r in calls)
    ok = statuses.get("200", 0)
    first = min((r["time"] for r in calls), default=None)
    first_any = min((r["time"] for r in records if r.get("time") is not None), default=None)
    last = max((r["time"] + (r["service_s"] or 0.0) for r in calls), default=None)
    late = [r for r in calls if first is not None and r["time"] >= first + settle_s]
    return RequestStats(
        requests=len(calls), ok=ok, retries=len(calls) - ok,
        status_counts=dict(sorted(statuses.items())),
        share_429=_share(statuses.get("429", 0), len(calls)),
        share_429_after_settle=_share(sum(r["status"] == 429 for r in late), len(late)),
        first_start=first, first_any=first_any, last_end=last,
        ok_request_sizes=tuple(int(r["request_size"]) for r in calls if r["status"] == 200),
        ok_windows=tuple((r["row_off"], r["col_off"], r["height"], r["width"])
                         for r in calls if r["status"] == 200 and r["col_off"] is not None))


def most_in_any_window(times: Sequence[float], window: float) -> int:
    """The most of ``times`` (seconds) inside any window of ``window`` seconds."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        most = max(most, end - start + 1)
    return most
