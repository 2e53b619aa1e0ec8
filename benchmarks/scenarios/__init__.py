"""The four scenarios, by name, in the order they run."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.scenarios import memory, quota_bound, throttled, throughput
from benchmarks.scenarios.common import Context, ScenarioResult

__all__ = ["SCENARIOS", "Context", "ScenarioResult"]

SCENARIOS: dict[str, Callable[[Context], ScenarioResult]] = {
    quota_bound.NAME: quota_bound.run,
    throughput.NAME: throughput.run,
    memory.NAME: memory.run,
    throttled.NAME: throttled.run,
}
