"""The run's side of computed images: describe each graph once, plan it, tell the user once
when the service restricts the project's parallelism.

``value:compute`` is how a computed image's bands are learnt: it answers the image's band ids
and pixel types (precision and range: what the storage dtype is chosen from, by the same rule
as an asset's metadata) without computing a pixel, in one small call per item, before the
output is created. A one-pixel ``computePixels`` would compute pixels and would say only the
type of its payload, not the band's range.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bulkpix.computed import check_graph, computed_asset, computed_grid, item_graph
from bulkpix.errors import JobError, NotFound, RequestInvalid, printable

if TYPE_CHECKING:
    from bulkpix.ee.client import EEClient
    from bulkpix.job import Job, ResolvedItem
    from bulkpix.planning import AssetInfo, ItemPlan

__all__ = [
    "Described",
    "QuotaStatusNotice",
    "describe_computed",
    "graph_from_snippet",
    "plan_computed",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Described:
    """A computed item's graph and its bands (as asset metadata, on the item's grid)."""

    graph: dict[str, Any]
    info: AssetInfo
    # A reduce composite: the images the collection listed when it was described.
    images: tuple[str, ...] = ()


async def describe_computed(
    job: Job,
    items: list[ResolvedItem],
    client: EEClient,
    retry: Callable[[Callable[[], Awaitable[T]]], Awaitable[T]],
    listings: dict[int, list[dict[str, Any]]] | None = None,
) -> dict[int, Described]:
    """One ``value:compute`` per computed item (by position), through the run's retries;
    the calls run at once, at most ``job.concurrency`` (the governor paces them)."""
    slots = asyncio.Semaphore(job.concurrency)

    listings = listings or {}

    async def describe(index: int, spec: ResolvedItem) -> Described:
        graph = item_graph(spec, job.base_dir)
        grid = computed_grid(spec, job.base_dir)
        try:
            async with slots:
                result = await retry(functools.partial(client.compute_value, graph))
        except (RequestInvalid, NotFound) as exc:
            # The service's own words, without the call and status the line already implies.
            message = printable(re.sub(r"^.*?: HTTP \d+ [A-Z_]*: ", "", exc.message), limit=300)
            where = f"item {spec.name}: " if spec.name else ""
            raise JobError(f"{where}the service refused the expression: {message}") from None
        listed = listings.get(index, [])
        images = tuple(sorted(str(image.get("name")) for image in listed))
        return Described(graph, computed_asset(result, grid), images)

    computed = [(index, spec) for index, spec in enumerate(items) if spec.is_computed]
    tasks = [asyncio.ensure_future(describe(index, spec)) for index, spec in computed]
    try:
        results = await asyncio.gather(*tasks)
    finally:  # one refusal ends the others, never left running
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {index: result for (index, _), result in zip(computed, results, strict=True)}


def plan_computed(
    spec: ResolvedItem, described: Described, job: Job, recorded_tile: tuple[int, int] | None
) -> ItemPlan:
    """The item's plan: its described bands on its own grid, the graph in the fingerprint."""
    from bulkpix.planning import plan_item

    grid = next(iter(described.info.grids.values()))
    plan = plan_item(spec, described.info, job, recorded_tile, grid=grid)
    return dataclasses.replace(plan, expression=described.graph, composite_of=described.images)


class QuotaStatusNotice:
    """Says once, in plain words, that the service has restricted the project's parallelism
    (``x-earth-engine-quota-status: parallelism_restricted=true``)."""

    def __init__(self, notices: list[str]) -> None:
        self._notices = notices
        self._said = False

    def __call__(self, value: str) -> None:
        if self._said or "parallelism_restricted=true" not in value.replace(" ", "").lower():
            return
        self._said = True
        self._notices.append(
            "Earth Engine has restricted this project's parallel computation (its compute "
            "quota is spent for now): computed tiles will run fewer at a time and more slowly"
        )


def graph_from_snippet(snippet: Path, *, project: str | None,
                       endpoint: str | None) -> dict[str, Any]:
    """``bulkpix expression``: run a Python snippet that builds ``image`` with
    earthengine-api (``ee`` is initialized and in its namespace) and return the image's
    serialized graph, for a job file's ``expression:``. ``endpoint``: a stand-in's URL (the
    emulator), reached with a placeholder token; otherwise earthengine-api's own login."""
    try:
        import ee
    except ImportError:
        raise JobError("bulkpix expression needs earthengine-api: pip install 'bulkpix[ee]'")\
            from None
    from bulkpix.files import FileRefused, read_bounded

    try:
        source = read_bounded(snippet, 1 << 20).decode("utf-8")
    except (OSError, FileRefused, UnicodeDecodeError) as exc:
        raise JobError(f"{snippet}: cannot read the snippet ({exc})") from None
    try:
        if endpoint is not None:
            import google.oauth2.credentials

            ee.data.initialize(credentials=google.oauth2.credentials.Credentials(token="x"),
                               cloud_api_base_url=endpoint.rstrip("/"), project=project)
        else:
            ee.Initialize(project=project)
    except Exception as exc:  # earthengine-api's login and discovery errors vary widely
        raise JobError(f"earthengine-api could not start: {printable(str(exc), limit=300)}") \
            from None
    namespace: dict[str, Any] = {"ee": ee, "__name__": "__bulkpix_expression__"}
    try:
        exec(compile(source, str(snippet), "exec"), namespace)  # the user's own snippet
        image = namespace.get("image")
        if image is None:
            raise JobError(f"{snippet}: the snippet must assign the image to `image`")
        return check_graph(ee.serializer.encode(image, for_cloud_api=True))
    except JobError:
        raise
    except Exception as exc:  # whatever the snippet raises: one line, its type and text
        text = printable(f"{type(exc).__name__}: {exc}", limit=300)
        raise JobError(f"{snippet}: {text}") from None
    finally:
        ee.Reset()
