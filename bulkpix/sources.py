"""Where an item's pixels come from: assets, listed collections, computed images; the metadata
calls that describe them, concurrently under the quota; and their plans.

Planning and the store (numpy, zarr, rasterio: about half a second of imports on a slow
machine) are imported where they are used, after the first request is on its way: planning
and decoding (numpy) load on a thread while the first metadata call is in flight, with the
store's libraries (zarr) when the output exists (it is inspected before planning), or else
while a new output's first tiles are requested (``import_store_side``).
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from bulkpix.errors import JobError, NotFound, RequestInvalid, printable
from bulkpix.job import Job, ResolvedItem

if TYPE_CHECKING:
    from bulkpix.ee.client import EEClient
    from bulkpix.planning import AssetInfo, ItemPlan
    from bulkpix.store.state import OutputState

__all__ = [
    "Retry",
    "Sources",
    "fetch_assets",
    "gather_all",
    "import_store_side",
    "plan_items",
    "resolve_sources",
]

T = TypeVar("T")

# The run's retry loop (``pipeline._Retry``): calls ``fn`` until it succeeds or gives up.
Retry: TypeAlias = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


def _import_planning_side(store_too: bool) -> None:
    """Import what planning and decoding need (run on a thread), and the store side too when
    the output exists (it is inspected before planning)."""
    import bulkpix.ee.decode
    import bulkpix.planning  # noqa: F401

    if store_too:
        import_store_side()


def import_store_side() -> None:
    """Import what inspecting, claiming and writing the output need (run on a thread: an
    import on the event loop would hold up the requests in flight)."""
    import rasterio.crs  # noqa: F401  (the output stores its CRS as WKT: geometry.crs)

    import bulkpix.store.output
    import bulkpix.store.record
    import bulkpix.store.zarr_store  # noqa: F401


async def fetch_assets(
    job: Job,
    client: EEClient,
    retry: Retry,
    names: list[str] | None = None,
    *,
    load_store_side: bool = False,
) -> dict[str, AssetInfo]:
    """One GET per distinct asset, for band types and the native grid.

    The calls run concurrently, at most ``concurrency`` at once, each through the run's
    retry loop and governor (a batch of a thousand scenes must not wait a round trip each).
    ``load_store_side``: an output that exists will be inspected next, so its libraries
    load beside the calls too.
    """
    if names is None:
        names = [item.asset for item in job.resolved_items() if item.asset]
    slots = asyncio.Semaphore(job.concurrency)
    started = asyncio.Event()

    async def fetch(name: str) -> dict[str, Any]:
        started.set()
        async with slots:
            return await retry(functools.partial(client.get_asset, name))

    distinct = list(dict.fromkeys(names))
    calls = asyncio.ensure_future(gather_all([fetch(name) for name in distinct]))
    if distinct:
        # The first calls go out first (by construction, not by timing); the store side's
        # imports then overlap their round trips on a thread.
        waiting = asyncio.ensure_future(started.wait())
        await asyncio.wait([calls, waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
    importing = asyncio.ensure_future(
        asyncio.to_thread(_import_planning_side, load_store_side)
    )
    try:
        answers = await calls
        await importing
        from bulkpix.planning import parse_asset

        return {
            name: parse_asset(metadata, name)
            for name, metadata in zip(distinct, answers, strict=True)
        }
    finally:
        calls.cancel()
        await asyncio.gather(calls, importing, return_exceptions=True)  # never left running


async def gather_all(calls: list[Awaitable[T]]) -> list[T]:
    """Every call's result, in order; on the first error the others are cancelled (and
    awaited) and that error is raised as itself, not in a group."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            # This call was cancelled: gather passed the cancel to every task and ended at
            # the first one done. Let the others finish their cleanup (a second cancel would
            # cut it short, a lease's release say).
            await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Sources:
    """What the items read, once collections are listed: the items to plan (a collection
    with layout items becomes one asset item per image), the listed images of each mosaic
    item (by position), and the assets' metadata."""

    job: Job
    items: list[ResolvedItem]
    listings: dict[int, list[dict[str, Any]]]
    infos: dict[str, AssetInfo]
    # Computed items (by position): their graph and described bands on their grid.
    computed: dict[int, Any] = field(default_factory=dict)


def _listing_region(spec: ResolvedItem, base_dir: Path) -> dict[str, Any] | None:
    """The item's region as a lon/lat polygon (its bounding box), for the listing."""
    if spec.region is None:
        return None
    from bulkpix.geometry.grid import region_bounds

    geometry = spec.region.load_geometry(base_dir)
    try:
        xmin, ymin, xmax, ymax = region_bounds(geometry, spec.region.region_crs, "EPSG:4326")
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise JobError(f"cannot read the region: {exc}") from None
    ring = [[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax], [xmin, ymin]]
    return {"type": "Polygon", "coordinates": [ring]}


async def _list_collection(
    spec: ResolvedItem, job: Job, client: EEClient, retry: Retry
) -> list[dict[str, Any]]:
    """Every image of the item's collection in its region, dates and filter."""
    assert spec.collection is not None
    name = spec.collection
    times = spec.time_range()
    try:
        images = [
            image
            async for image in client.list_images(
                name,
                start=times[0] if times else None,
                end=times[1] if times else None,
                region=_listing_region(spec, job.base_dir),
                filter=spec.filter,
                call=retry,
            )
        ]
    except NotFound:
        raise JobError(f"collection {name} not found") from None
    except RequestInvalid as exc:
        # The service's own words, without the call and status the line already implies.
        message = printable(re.sub(r"^.*?: HTTP \d+ [A-Z_]*: ", "", exc.message), limit=300)
        raise JobError(f"collection {name}: the service refused the listing: {message}") from None
    if not images:
        chosen = [
            "the region" if spec.region is not None else None,
            f"dates [{spec.dates[0]}, {spec.dates[1]})" if spec.dates else None,
            "the filter" if spec.filter else None,
        ]
        what = " and ".join(c for c in chosen if c) or "the listing"
        raise JobError(f"collection {name}: no image falls in {what}")
    return images


def _image_item_name(spec: ResolvedItem, image_name: str, batch: bool) -> str:
    """A group name for one image of a layout: items collection, from its id."""
    stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", image_name.rsplit("/", 1)[-1]).lstrip("._-")
    stem = stem[:200] or "image"
    return f"{spec.name}.{stem}" if batch and spec.name else stem


async def resolve_sources(
    job: Job, client: EEClient, retry: Retry, *, load_store_side: bool = False
) -> Sources:
    """List every collection item's images (concurrently), then fetch the assets' metadata
    (``load_store_side``: see ``fetch_assets``)."""
    specs = job.resolved_items()
    # A `reduce:` composite is listed too: so that a selection without images is refused in
    # one line, and so that its record names the images it was computed from.
    collections = [spec for spec in specs if spec.collection is not None]
    listed = await gather_all([_list_collection(s, job, client, retry) for s in collections])
    by_collection = dict(zip((id(s) for s in collections), listed, strict=True))
    items: list[ResolvedItem] = []
    listings: dict[int, list[dict[str, Any]]] = {}
    expanded = False
    for spec in specs:
        if not spec.is_collection:
            if spec.collection is not None:  # a reduce composite
                listings[len(items)] = by_collection[id(spec)]
            items.append(spec)
        elif spec.layout_name == "items":
            expanded = True
            from bulkpix.planning import mosaic_images

            base = spec.model_dump(
                exclude={"collection", "dates", "filter", "layout", "mosaic", "group_by"}
            )
            ordered = mosaic_images(by_collection[id(spec)], spec.source)
            for image in ordered:
                name = _image_item_name(spec, image.name, job.is_batch)
                items.append(ResolvedItem(**{**base, "asset": image.name, "name": name}))
        else:
            listings[len(items)] = by_collection[id(spec)]
            items.append(spec)
    if expanded:
        names = [item.name for item in items]
        repeated = sorted({n for n in names if names.count(n) > 1 and n is not None})
        if repeated:
            raise JobError(f"item names repeat once collections are expanded: {repeated[0]}")
        job = _as_batch(job, items)
    infos = await fetch_assets(
        job,
        client,
        retry,
        [item.asset for item in items if item.asset],
        load_store_side=load_store_side,
    )
    from bulkpix.computed_run import describe_computed

    computed = await describe_computed(job, items, client, retry, listings)
    return Sources(job, items, listings, infos, computed)


def _as_batch(job: Job, items: list[ResolvedItem]) -> Job:
    """The job with ``items`` as its resolved items, a batch (one group per item)."""
    from bulkpix.job import ItemSpec

    batch = job.model_copy(update={"items": [ItemSpec(name=item.name) for item in items]})
    batch._resolved = tuple(items)
    return batch


def plan_items(
    sources: Sources,
    output: OutputState | None = None,
    notices: list[str] | None = None,
    *,
    keep_images: bool = True,
) -> list[ItemPlan]:
    """Every item's plan. A mosaic an earlier run started keeps the images its record holds
    (``keep_images``), even when the collection lists others now, and ``notices`` say so."""
    from bulkpix.planning import mosaic_images, parse_asset, plan_item, plan_mosaic

    job = sources.job
    plans = []
    for index, spec in enumerate(sources.items):
        # An item resumed keeps the tile shape its record says it was started with.
        recorded_tile = output.recorded_tile(spec.name or "") if output is not None else None
        try:
            if spec.is_collection:
                listed = sources.listings[index]
                images = mosaic_images(listed, spec.source)
                recorded = _recorded_images(output, spec.name or "") if keep_images else None
                if recorded is not None and recorded != images:
                    now, before = {i.name for i in images}, {i.name for i in recorded}
                    (notices if notices is not None else []).append(
                        f"{spec.name or spec.source}: resuming with the {len(recorded)} images "
                        f"its record holds; the collection now lists {len(images)} "
                        f"({len(now - before)} new, {len(before - now)} gone or changed)"
                    )
                    images = recorded
                chosen = {image.name for image in images}
                infos = [
                    parse_asset(entry, str(entry.get("name")))
                    for entry in listed
                    if entry.get("name") in chosen
                ]
                plans.append(plan_mosaic(spec, infos, images, job, recorded_tile))
            elif spec.is_computed:
                from bulkpix.computed_run import plan_computed

                plans.append(plan_computed(spec, sources.computed[index], job, recorded_tile))
            else:
                plans.append(plan_item(spec, sources.infos[spec.asset], job, recorded_tile))
        except JobError as exc:
            if job.is_batch:
                raise JobError(f"item {spec.name or index}: {exc}") from None
            raise
    return plans


def _recorded_images(output: OutputState | None, path: str) -> list[Any] | None:
    """The images an earlier run of this mosaic used (its record), or None."""
    if output is None:
        return None
    recorded = output.items.get(path)
    entries = (recorded.fingerprint or {}).get("images") if recorded is not None else None
    if not isinstance(entries, list):
        return None
    from bulkpix.planning import MosaicImage

    try:
        return [MosaicImage.from_record(entry) for entry in entries]
    except (TypeError, ValueError):
        return None
