"""The output as a whole: what it holds, whether a job may write into it, and claiming it.

``inspect_output`` looks (read-only) and classifies the output as ONE value, an
``OutputState``: EMPTY, SINGLE (one item at the root), BATCH (items in child groups), FOREIGN
(data bulkpix did not write) or DAMAGED (a record or an array of bulkpix's is broken or gone),
with the items it found and their recorded fingerprints, read before planning so an item
resumed keeps the tile shape it was started with.

Ownership is proven by the record, never by an attribute. An item is bulkpix's when
``{item}/.bulkpix/job.json`` exists (the record owns the item's layout: bands, types, shape,
chunk; the group's ``bulkpix`` attribute is a copy for xarray and GDAL). A batch root is
bulkpix's when ``.bulkpix/batch.json`` exists (or, for outputs from before it, when a child
group holds a record). What bulkpix made under an item is exactly: the group's metadata, one
array per recorded band, the ``x``/``y``/``spatial_ref`` coordinates and the record;
``--restart`` deletes that and nothing else.

``claim_output`` refuses what must be refused before anything is written, takes the output's
lease (``bulkpix.store.lease``), looks again under it, clears (``--restart``) or tidies
(leftover ``.partial`` files of bulkpix's own) and yields the opened items.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from bulkpix.errors import StoreDamaged, StoreError, StoreMismatch
from bulkpix.store import lease as lease_module
from bulkpix.store.checksum import ChecksumStore
from bulkpix.store.lease import LEASE_KEY, LEASE_LOCK_KEY, Lease, job_token
from bulkpix.store.location import (
    BATCH_KEY,
    COORD_NAMES,
    CUBE_COORD_NAMES,
    JOB_KEY,
    RECORD_DIR,
    V2_ARRAY,
    V2_ATTRS,
    V2_CONSOLIDATED,
    V2_GROUP,
    V2_GROUP_FILES,
    V3_METADATA,
    check_output_location,
)
from bulkpix.store.record import TileRecord, fingerprint_diff
from bulkpix.store.state import OutputKind, OutputState, RecordedItem, absent_output
from bulkpix.store.zarr_store import (
    ItemWriter,
    consolidate,
    has_keys_under,
    mark_batch_root,
    open_store,
)

if TYPE_CHECKING:
    from bulkpix.job import Job
    from bulkpix.planning import ItemPlan

__all__ = [
    "BATCH_KEY",
    "ClaimedOutput",
    "OpenedItem",
    "OutputKind",
    "OutputState",
    "RecordedItem",
    "attach_items",
    "check_output",
    "check_output_location",
    "claim_output",
    "clear_output",
    "inspect_output",
    "inspect_store",
    "remove_partials",
]

# zarr LocalStore's temp files, the only ones bulkpix leaves: {name}.{uuid4 hex}.partial
_PARTIAL = re.compile(r".\.[0-9a-f]{32}\.partial\Z")
# The lease and its lock file (left in place for good): ours, and no sign of an item.
_LEASE_KEYS = (LEASE_KEY, LEASE_LOCK_KEY)
# Attributes bulkpix puts on an item's group (copies of its record).
_OUR_ATTRIBUTES = ("bulkpix", "asset")


# --------------------------------------------------------------------------- looking


async def inspect_output(output: str, item_paths: Iterable[str] = ()) -> OutputState:
    """Classify ``output`` without writing to it. ``item_paths``: the job's items, so that
    data of someone else at one of their paths is found."""
    check_output_location(output)
    absent = absent_output(output)
    if absent is not None:
        return absent
    return await inspect_store(await open_store(output), output, item_paths)


async def inspect_store(store: Store, output: str, item_paths: Iterable[str] = ()) -> OutputState:
    item_paths = list(item_paths)
    state = await _inspect_once(store, output, item_paths)
    if state.kind is OutputKind.FOREIGN and (
        await store.exists(f"{RECORD_DIR}/{JOB_KEY}") or await store.exists(BATCH_KEY)
    ):
        # A run of the same job made its record while this one looked: look again.
        state = await _inspect_once(store, output, item_paths)
    return state


async def _inspect_once(store: Store, output: str, item_paths: list[str]) -> OutputState:
    batch_exists, batch_names, batch_readable = await _read_batch_record(store)
    items: dict[str, RecordedItem] = {}
    if await store.exists(f"{RECORD_DIR}/{JOB_KEY}"):
        items[""] = await _inspect_item(store, "")
    else:
        candidates = set(batch_names) | {p for p in item_paths if p}
        async for child in store.list_dir(""):
            name = child.rstrip("/")
            if name and not name.startswith(".") and name != V3_METADATA:  # .zgroup too
                candidates.add(name)
        for name in sorted(candidates):
            if await store.exists(f"{name}/{RECORD_DIR}/{JOB_KEY}"):
                items[name] = await _inspect_item(store, name)
            elif name in batch_names and await has_keys_under(store, name):
                # The batch record lists it and it has nodes: its record, written before any
                # of them, is gone. (Listed with nothing under it: a run stopped before
                # starting it.)
                items[name] = await _inspect_item(store, name, record_missing=True)
    batch = "" not in items and (batch_exists or bool(items))
    damage: list[str] = []
    if batch_exists and not batch_readable:
        damage.append(f"the batch record {BATCH_KEY} is unreadable")
    if batch:
        for key in (V3_METADATA, V2_GROUP):
            if await _metadata_document(store, key) is False:
                damage.append(f"the group metadata {key} is unreadable")
    for item in items.values():
        where = f"item {item.path}: " if batch else ""
        damage.extend(where + what for what in item.damage)
    foreign = tuple(
        [
            p
            for p in item_paths
            if p
            and p not in items
            and await has_keys_under(store, p)
            # Checked after the keys: a run of this job writes an item's record before its
            # nodes, so keys without a record now are someone else's.
            and not await store.exists(f"{p}/{RECORD_DIR}/{JOB_KEY}")
        ]
    )
    if items or batch_exists:
        if damage:
            kind = OutputKind.DAMAGED
        else:
            kind = OutputKind.SINGLE if "" in items else OutputKind.BATCH
    elif await _looks_empty(store):
        kind = OutputKind.EMPTY
    else:
        kind = OutputKind.FOREIGN
    return OutputState(output, kind, store, items, batch, tuple(damage), foreign)


async def _looks_empty(store: Store) -> bool:
    """Nothing at all, or only a bare root group (a run killed right after making it), or a
    lease (or its lock file) left by a run refused before it wrote anything."""
    keys = []
    async for key in store.list_prefix(""):
        if key in _LEASE_KEYS or _PARTIAL.search(key):
            continue
        keys.append(key)
        if len(keys) > 1:
            return False
    if not keys:
        return True
    if keys == [V2_GROUP]:
        return True
    return keys == [V3_METADATA] and not await _node_attributes(store, "")


async def _read_batch_record(store: Store) -> tuple[bool, list[str], bool]:
    """(exists, item names, readable)."""
    buffer = await store.get(BATCH_KEY, prototype=default_buffer_prototype())
    if buffer is None:
        return False, [], True
    try:
        document = json.loads(buffer.to_bytes())
        names = [str(n) for n in document["items"] if isinstance(n, str) and n]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return True, [], False
    return True, names, True


async def _node_attributes(store: Store, path: str) -> dict[str, Any] | None:
    """The attributes of the Zarr node at ``path``, or None when there is none."""
    key = f"{path}/{V3_METADATA}" if path else V3_METADATA
    buffer = await store.get(key, prototype=default_buffer_prototype())
    if buffer is None:
        return await _v2_group_attributes(store, path)
    try:
        document = json.loads(buffer.to_bytes())
    except (ValueError, UnicodeDecodeError):
        return {}
    attributes = document.get("attributes") if isinstance(document, dict) else None
    return attributes if isinstance(attributes, dict) else {}


async def _inspect_item(store: Store, path: str, *, record_missing: bool = False) -> RecordedItem:
    record = TileRecord(store, path)
    try:
        fingerprint = await record.fingerprint()
    except StoreError:
        fingerprint = None
    bands = _names((fingerprint or {}).get("bands"))
    if fingerprint is None:
        # What is left: the group's copy of the record names the band arrays.
        copy = (await _node_attributes(store, path) or {}).get("bulkpix")
        if isinstance(copy, dict) and isinstance(copy.get("bands"), list):
            bands = _names([b.get("id") for b in copy["bands"] if isinstance(b, dict)])
    prefix = f"{path}/" if path else ""
    v2 = (fingerprint or {}).get("zarr_format") == 2 or await store.exists(prefix + V2_GROUP)
    group_key, array_key = (V2_GROUP, V2_ARRAY) if v2 else (V3_METADATA, V3_METADATA)
    missing, unparseable = [], []
    for name, key in (
        (V3_METADATA, group_key),
        *((name, f"{name}/{array_key}") for name in (*bands, *COORD_NAMES)),
    ):
        found = await _metadata_document(store, prefix + key)
        if found is None:
            missing.append(name)
        elif not found:
            unparseable.append(key)
    return RecordedItem(
        path,
        fingerprint,
        bands,
        await record.count_done(),
        tuple(missing),
        tuple(unparseable),
        record_missing,
    )


async def _metadata_document(store: Store, key: str) -> bool | None:
    """Whether the metadata document at ``key`` parses as a JSON object; None if absent."""
    buffer = await store.get(key, prototype=default_buffer_prototype())
    if buffer is None:
        return None
    try:
        return isinstance(json.loads(buffer.to_bytes()), dict)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return False


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    # Only names that can be a node of this item: a damaged record must not reach elsewhere.
    return tuple(
        v for v in value if isinstance(v, str) and v and "/" not in v and v not in (".", "..")
    )


# --------------------------------------------------------------------------- judging


def check_output(job: Job, state: OutputState, plans: Sequence[ItemPlan], restart: bool) -> None:
    """Refuse an output that holds another job, or data bulkpix did not write (then even
    ``--restart`` is refused: it deletes only what the record shows to be bulkpix's)."""
    output = job.output
    if state.kind is OutputKind.FOREIGN:
        advice = "--restart will not delete it" if restart else "use another output"
        raise StoreMismatch(f"output {output} holds data bulkpix did not write; {advice}")
    # Before the early return: --restart deletes only what the record shows to be bulkpix's,
    # so an item may not be made over a group someone else keeps at its path.
    for path in state.foreign_paths:
        advice = "--restart will not delete it; " if restart else ""
        raise StoreMismatch(
            f"output {output} holds data bulkpix did not write at {path}; "
            f"{advice}use another item name or output"
        )
    if restart or state.kind is OutputKind.EMPTY:
        return
    if state.kind is OutputKind.DAMAGED:
        raise StoreDamaged(
            f"output {output} is damaged: {'; '.join(state.damage)}; "
            "`bulkpix run --restart` discards what bulkpix wrote there, or use another output"
        )
    if job.is_batch and state.single:
        raise StoreMismatch(
            f"output {output} holds a single-item job, this is a batch; "
            "use --restart to replace it, or another output"
        )
    if not job.is_batch and state.batch:
        raise StoreMismatch(
            f"output {output} holds a batch job; use --restart to replace it, or another output"
        )
    for plan in plans:
        recorded = state.items.get(plan.path)
        if recorded is None or recorded.fingerprint is None:
            continue
        # Records written before the codec left the fingerprint still carry one: ignored.
        old = {key: value for key, value in recorded.fingerprint.items() if key != "codec"}
        changes = fingerprint_diff(old, plan.fingerprint())
        if changes:
            where = f"item {plan.label}" if job.is_batch else "the job"
            raise StoreMismatch(
                f"output {output} holds a different job ({where} changed: "
                f"{'; '.join(changes)}); use --restart to discard it, or another output"
            )


# --------------------------------------------------------------------------- clearing


async def clear_output(store: Store, state: OutputState) -> None:
    """Delete exactly what the record (or what is left of it) shows bulkpix made."""
    try:
        for item in state.items.values():
            await _clear_item(store, item)
        if state.batch:
            await store.delete(BATCH_KEY)
            await _strip_group(store, "")
    except (OSError, NotImplementedError) as exc:
        raise StoreError(f"cannot clear the old output: {exc}") from None


async def _clear_item(store: Store, item: RecordedItem) -> None:
    prefix = f"{item.path}/" if item.path else ""
    cube = CUBE_COORD_NAMES if "cube" in (item.fingerprint or {}) else ()
    for name in (*item.bands, *COORD_NAMES, *cube):
        await store.delete_dir(prefix + name)
    await TileRecord(store, item.path).clear()
    if item.path:
        await store.delete_dir(prefix + RECORD_DIR)
    await _strip_group(store, item.path)
    if isinstance(store, LocalStore):
        # Deleting objects leaves their folders: the ones bulkpix made, now empty, go too.
        base = store.root / item.path if item.path else store.root
        for name in (*item.bands, *COORD_NAMES, *cube, RECORD_DIR):
            _prune_empty_dirs(base / name)
        if item.path:
            _prune_empty_dirs(base, recursive=False)


def _prune_empty_dirs(base: Path, *, recursive: bool = True) -> None:
    if not base.is_dir():
        return
    if recursive:
        for directory in sorted(base.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
    if not any(base.iterdir()):
        base.rmdir()


async def _v2_group_attributes(store: Store, path: str) -> dict[str, Any] | None:
    prefix = f"{path}/" if path else ""
    prototype = default_buffer_prototype()
    if await store.get(prefix + V2_GROUP, prototype=prototype) is None:
        return None
    buffer = await store.get(prefix + V2_ATTRS, prototype=prototype)
    try:
        attributes = json.loads(buffer.to_bytes()) if buffer is not None else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return attributes if isinstance(attributes, dict) else {}


async def _strip_v2_group(store: Store, path: str) -> None:
    """``_strip_group`` for a Zarr v2 group (``.zgroup``, ``.zattrs``, ``.zmetadata``)."""
    prefix = f"{path}/" if path else ""
    ours = {prefix + name for name in V2_GROUP_FILES}
    others = False
    async for other in store.list_prefix(prefix):
        if other not in ours and other not in _LEASE_KEYS and not _PARTIAL.search(other):
            others = True
            break
    if not others:
        for key in ours:
            await store.delete(key)
        return
    await store.delete(prefix + V2_CONSOLIDATED)  # it listed what is gone now
    if not await _metadata_document(store, prefix + V2_GROUP):
        await store.delete(prefix + V2_GROUP)  # unreadable: made again, as in _strip_group
    attributes = await _v2_group_attributes(store, path)
    if attributes:
        for name in _OUR_ATTRIBUTES:
            attributes.pop(name, None)
        data = json.dumps(attributes, indent=2).encode()
        await store.set(prefix + V2_ATTRS, default_buffer_prototype().buffer.from_bytes(data))


async def _strip_group(store: Store, path: str) -> None:
    """The group at ``path`` loses what bulkpix put on it; it goes when nothing else is left."""
    if await store.exists((f"{path}/" if path else "") + V2_GROUP):
        await _strip_v2_group(store, path)
        return
    key = f"{path}/{V3_METADATA}" if path else V3_METADATA
    prefix = f"{path}/" if path else ""
    others = False
    async for other in store.list_prefix(prefix):
        if other != key and other not in _LEASE_KEYS and not _PARTIAL.search(other):
            others = True
            break
    if not others:
        await store.delete(key)
        return
    prototype = default_buffer_prototype()
    buffer = await store.get(key, prototype=prototype)
    if buffer is None:
        return
    try:
        document = json.loads(buffer.to_bytes())
    except (ValueError, RecursionError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict):
        # Unreadable: it cannot be stripped, and zarr cannot open the group; bulkpix made the
        # group, so it goes and is made again (the nodes under it are left as they are).
        await store.delete(key)
        return
    if document.get("node_type") != "group":
        return
    attributes = document.get("attributes")
    if isinstance(attributes, dict):
        for name in _OUR_ATTRIBUTES:
            attributes.pop(name, None)
    # It listed what is gone now; the run consolidates again once its items exist.
    document.pop("consolidated_metadata", None)
    await store.set(key, prototype.buffer.from_bytes(json.dumps(document, indent=2).encode()))


def remove_partials(output: str, state: OutputState) -> int:
    """Delete the ``.partial`` temp files bulkpix left in its own nodes (local outputs only:
    object stores have none). Returns how many went."""
    if "://" in output:
        return 0
    root = Path(output).expanduser()
    removed = 0
    places: list[tuple[Path, bool]] = []  # (directory, recursively)
    if state.batch:
        places.append((root / RECORD_DIR, False))
        places.append((root, False))
    for item in state.items.values():
        base = root / item.path if item.path else root
        places.append((base, False))
        places.append((base / RECORD_DIR, True))
        places.extend((base / name, True) for name in (*item.bands, *COORD_NAMES))
    for directory, recursive in places:
        if not directory.is_dir():
            continue
        files = directory.rglob("*.partial") if recursive else directory.glob("*.partial")
        for path in files:
            if path.is_file() and _PARTIAL.search(path.name):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
    return removed


# --------------------------------------------------------------------------- claiming


@dataclass(frozen=True)
class OpenedItem:
    """One item ready for tiles: its plan, writer, record and the tiles already finished."""

    plan: ItemPlan
    writer: ItemWriter
    record: TileRecord
    done: frozenset[str]


@dataclass(frozen=True)
class ClaimedOutput:
    store: ChecksumStore
    items: list[OpenedItem]
    lease: Lease


@contextlib.asynccontextmanager
async def claim_output(
    job: Job,
    plans: Sequence[ItemPlan],
    state: OutputState,
    *,
    restart: bool = False,
    lease_ttl_s: float | None = None,
) -> AsyncIterator[ClaimedOutput]:
    """Hold the output for this run and yield its items opened (created when new)."""
    check_output(job, state, plans, restart)
    local = Path(job.output).expanduser() if "://" not in job.output else None
    made_dir = local is not None and not local.exists()
    store = state.store or await open_store(job.output)
    token = job_token(
        [job.is_batch, [(p.path, p.fingerprint()) for p in plans]]
    )
    paths = [p.path for p in plans]
    try:
        ttl_s = lease_ttl_s if lease_ttl_s is not None else lease_module.DEFAULT_TTL_S
        async with Lease(store, token, exclusive=restart, output=job.output, ttl_s=ttl_s) as lease:
            # Another run may have changed the output while this one waited: look again.
            state = await inspect_store(store, job.output, paths)
            check_output(job, state, plans, restart)
            await _refuse_unowned_nodes(store, job.output, plans, state)
            if not lease.joined:  # no other run of this job is writing: its temp files are ours
                remove_partials(job.output, state)
            if restart:
                await _refuse_format_change_over_user_data(store, job, state)
                await clear_output(store, state)
                state = await inspect_store(store, job.output, paths)
            wrapped = ChecksumStore(store, durable=job.durable, guard=lease.check)
            items = await _open_items(job, plans, state, store, wrapped, lease)
            # Metadata is complete once every item exists: consolidate now, once, so xarray
            # opens the store (or any item of it) with one read even while tiles are written.
            await consolidate(store)
            yield ClaimedOutput(wrapped, items, lease)
    finally:
        if made_dir and local is not None:
            _remove_if_no_files(local)


async def _open_items(
    job: Job,
    plans: Sequence[ItemPlan],
    state: OutputState,
    store: Store,
    wrapped: ChecksumStore,
    lease: Lease,
) -> list[OpenedItem]:
    if job.is_batch:
        # The record first, then the group: a root is never bulkpix's by its attribute alone.
        _, names, _ = await _read_batch_record(store)
        document = {"items": sorted(set(names) | {p.path for p in plans}), "v": 1}
        await store.set(
            BATCH_KEY, default_buffer_prototype().buffer.from_bytes(json.dumps(document).encode())
        )
        await mark_batch_root(store, job.zarr_format)
    opened = []
    for plan in plans:
        recorded = state.items.get(plan.path)
        record = TileRecord(store, plan.path, guard=lease.check)
        if recorded is None or recorded.missing:
            if recorded is None:
                # The record first: whatever is made after it is provably bulkpix's.
                await record.write_fingerprint(plan.fingerprint())
            writer = await ItemWriter.create(
                wrapped,
                plan.path,
                plan.grid,
                plan.bands,
                plan.tiles.chunk,
                attrs={"asset": plan.asset},
                compression=job.compression,
                compression_level=job.compression_level,
                keep_existing=True,
                zarr_format=plan.zarr_format,
                band_attrs=plan.band_attrs,
                fill_values=plan.fill_values,
                steps=_cube_steps(plan),
            )
            done: set[str] = set()
        else:
            writer = await _open_writer(wrapped, plan)
            done = await record.done_keys()
            for key in list((await record.failed()).keys()):
                await record.clear_failed(key)
        wrapped.track(writer.array_paths())
        opened.append(OpenedItem(plan, writer, record, frozenset(done)))
    return opened


async def attach_items(
    job: Job, plans: Mapping[int, ItemPlan], keys: Mapping[int, Iterable[str]]
) -> dict[int, OpenedItem]:
    """Open items of an output that another process has claimed: a cluster worker's side.

    The submitting client inspected, checked and claimed the output, made every item and
    holds the lease; a worker only opens the items its batch touches (by item number), and
    learns which of its tiles (``keys``) an earlier attempt of the batch already finished.
    """
    store = await open_store(job.output)
    wrapped = ChecksumStore(store, durable=job.durable)
    opened: dict[int, OpenedItem] = {}
    for index, plan in plans.items():
        writer = await _open_writer(wrapped, plan)
        wrapped.track(writer.array_paths())
        record = TileRecord(store, plan.path)
        done = await record.done_among(keys.get(index, ()))
        opened[index] = OpenedItem(plan, writer, record, frozenset(done))
    return opened


async def _open_writer(store: ChecksumStore, plan: ItemPlan) -> ItemWriter:
    """The writer of an item the output already holds, checked against its plan."""
    return await ItemWriter.open_recorded(
        store,
        plan.path,
        plan.bands,
        plan.tiles.chunk,
        plan.grid.height,
        plan.grid.width,
        plan.tiles.steps,
    )


def _cube_steps(plan: ItemPlan) -> list[tuple[str, str]] | None:
    """A time cube's (time, image ids) per step; None for a 2-D output."""
    cube = plan.mosaic
    if cube is None or not cube.is_cube:
        return None
    return list(zip(cube.step_times(), cube.step_ids(), strict=True))


async def _refuse_unowned_nodes(
    store: Store, output: str, plans: Sequence[ItemPlan], state: OutputState
) -> None:
    """Refuse nodes at an item's band or coordinate names that its record does not own: the
    writer would make (or overwrite) its own over them, and --restart does not clear them."""
    for plan in plans:
        recorded = state.items.get(plan.path)
        if recorded is None and plan.path and not await has_keys_under(store, plan.path):
            continue  # a new item in a batch, with nothing at its path: one look suffices
        owned = {*recorded.bands, *COORD_NAMES} if recorded is not None else set()
        prefix = f"{plan.path}/" if plan.path else ""
        for name in (*(band.id for band in plan.bands), *COORD_NAMES):
            # The record is checked after the keys, as in inspect_output: a run of this job
            # sharing the lease writes an item's record before its nodes, so nodes without a
            # record now are not its own.
            if (
                name not in owned
                and await has_keys_under(store, prefix + name)
                and (
                    recorded is not None
                    or not await store.exists(f"{prefix}{RECORD_DIR}/{JOB_KEY}")
                )
            ):
                raise StoreMismatch(
                    f"output {output} holds data bulkpix did not write at {prefix}{name}; "
                    "--restart will not delete it; use another item name or output"
                )


async def _refuse_format_change_over_user_data(store: Store, job: Job, state: OutputState) -> None:
    """A --restart in another Zarr format keeps the root group when the user's data is in
    it, in the old format: it would hold both formats' metadata. Refused instead."""
    old = 2 if await store.exists(V2_GROUP) else 3 if await store.exists(V3_METADATA) else None
    if old is None or old == job.zarr_format or not (state.items or state.batch):
        return
    group_files = (V3_METADATA, *V2_GROUP_FILES)
    owned_dirs = [f"{RECORD_DIR}/"]
    owned_files = set(group_files)
    for item in state.items.values():
        prefix = f"{item.path}/" if item.path else ""
        owned_dirs.extend(f"{prefix}{name}/" for name in (*item.bands, *COORD_NAMES, RECORD_DIR))
        owned_files.update(prefix + name for name in group_files)
    async for key in store.list_prefix(""):
        if key in owned_files or key.startswith(tuple(owned_dirs)) or _PARTIAL.search(key):
            continue
        raise StoreMismatch(
            f"output {job.output} holds data bulkpix did not write ({key}) in Zarr v{old}; "
            f"--restart with zarr_format {job.zarr_format} would leave it in a v{old} group: "
            f"keep zarr_format {old}, or use another output"
        )


def _remove_if_no_files(path: Path) -> None:
    """Remove an output directory this run made when it holds no file (a refused run)."""
    lock = path / LEASE_LOCK_KEY
    if not path.is_dir() or any(p.is_file() and p != lock for p in path.rglob("*")):
        return
    # No lease beside it, so no run is using the lock file: it goes with the directory.
    with contextlib.suppress(OSError):
        lock.unlink()
    for directory in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):
        os.rmdir(path)
