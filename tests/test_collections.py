"""Collections: the job keys, listing, mosaics and their resume (issue #12)."""

from __future__ import annotations

from typing import Any

import pytest

from bulkpix.errors import JobError
from bulkpix.job import parse_job

BASE: dict[str, Any] = {"output": "out.zarr", "endpoint": "emulator"}
COLL = "projects/p/assets/coll"


def test_a_collection_item_resolves_with_its_defaults() -> None:
    dates = ["2024-01-01", "2024-02-01T12:00:00+01:00"]
    job = parse_job({**BASE, "collection": COLL, "dates": dates})
    (item,) = job.resolved_items()
    assert (item.asset, item.collection, item.source) == ("", COLL, COLL)
    assert (item.layout_name, item.mosaic_rule) == ("mosaic", "last")
    assert item.time_range() == ("2024-01-01T00:00:00Z", "2024-02-01T11:00:00Z")


def test_a_batch_mixes_assets_and_collections() -> None:
    job = parse_job({**BASE, "items": [
        {"collection": COLL, "layout": "items"}, {"asset": "projects/p/assets/a"}]})
    first, second = job.resolved_items()
    assert (first.source, first.layout_name) == (COLL, "items")
    assert (second.source, second.layout_name, second.collection) == (
        "projects/p/assets/a", None, None)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"asset": "projects/p/assets/a", "collection": COLL}, "asset or collection, not both"),
        ({}, "asset is missing"),
        ({"collection": COLL, "dates": ["2024-03-01", "2024-02-01"]}, "start must come before"),
        ({"collection": COLL, "dates": ["2024-03-01", "2024-03-01"]}, "start must come before"),
        ({"collection": COLL, "dates": ["2024-03-01", "March"]}, "not a date"),
        ({"collection": COLL, "layout": "cube"}, "layout cube is not supported yet"),
        ({"collection": COLL, "layout": "items", "mosaic": "min"}, "mosaic goes with layout"),
        ({"asset": "projects/p/assets/a", "filter": "x < 1"}, "filter goes with collection"),
        ({"collection": COLL, "mosaic": "median"}, "mosaic"),
    ],
)
def test_bad_collection_keys_are_one_line(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(JobError, match=message) as caught:
        parse_job({**BASE, **extra})
    assert "\n" not in str(caught.value)
