"""Each job section becomes its runtime object field for field: one set of names, one set of
defaults, no hand-written mapping to drift."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import ValidationError

from bulkpix.ee.client import RequestTimeouts
from bulkpix.geometry.tiling import ServiceModel
from bulkpix.job import ResolvedItem, Retries, ServiceModelSpec, Timeouts, parse_job
from bulkpix.transfer.retry import RetryPolicy

PAIRS: list[tuple[Any, Any]] = [
    (Timeouts, RequestTimeouts),
    (Retries, RetryPolicy),
    (ServiceModelSpec, ServiceModel),
]


@pytest.mark.parametrize(("spec", "runtime"), PAIRS)
def test_runtime_has_the_job_sections_fields_and_defaults(spec: Any, runtime: Any) -> None:
    assert [f.name for f in dataclasses.fields(runtime)] == list(spec.model_fields)
    assert runtime(**spec().model_dump()) == runtime()
    assert spec.__name__ != runtime.__name__


def test_a_jobs_sections_become_runtime_objects_unchanged() -> None:
    job = parse_job(
        {
            "asset": "projects/p/assets/a",
            "output": "out.zarr",
            "timeouts": {"connect": 1.5, "read": 2.5, "total": 30},
            "retries": {"max_attempts": 3, "backoff_base": 0.1, "backoff_cap": 5,
                        "budget": 7, "max_wait": 2},
            "service_model": {"base_s": 0.3, "per_mb_s": 0.01},
        }
    )
    assert RequestTimeouts(**job.timeouts.model_dump()) == RequestTimeouts(
        connect=1.5, read=2.5, total=30
    )
    policy = RetryPolicy(**job.retries.model_dump())
    assert policy == RetryPolicy(
        max_attempts=3, backoff_base=0.1, backoff_cap=5, budget=7, max_wait=2
    )
    # A max_wait below the backoff cap would cut bulkpix's own backoff: the cap wins.
    assert policy.longest_wait == 5
    assert ServiceModel(**job.service_model.model_dump()) == ServiceModel(0.3, 0.01)


def test_items_are_resolved_once_each_with_its_full_asset_name() -> None:
    job = parse_job(
        {"output": "o.zarr", "scale": 30, "items": [{"asset": "A/B"}, {"asset": "users/me/c"}]}
    )
    first, second = job.resolved_items()
    assert first.asset == "projects/earthengine-public/assets/A/B"
    assert second.asset == "projects/earthengine-legacy/assets/users/me/c"
    assert (first.name, second.scale) == ("item0000", 30)
    assert job.resolved_items()[1] is second  # resolved when validated, not on every call
    with pytest.raises(ValidationError, match="asset"):
        ResolvedItem(name="no-asset")  # type: ignore[call-arg]
