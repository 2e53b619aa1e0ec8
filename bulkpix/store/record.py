"""The record of finished and failed tiles, kept with the output in the same zarr Store.

Layout, under the item group at ``path``::

    {path}/.bulkpix/job.json            the job fingerprint (JSON)
    {path}/.bulkpix/done/{tile_key}     one small JSON object per finished tile, with the
                                        crc32c of every chunk it stored: {"key", "chunks"}
    {path}/.bulkpix/failed/{tile_key}   one per tile that failed for good: {"key", "reason"}

Why it is crash-safe and safe for many writers without a database or locks:

- one object per tile, so writers never update a shared object; processes marking
  different tiles cannot lose each other's work;
- the pipeline calls ``mark_done`` only after ``ItemWriter.write_tile`` returned, i.e. after
  every chunk of the tile was stored; a crash before that leaves no marker and the tile is
  fetched again (rewriting whole chunks is idempotent);
- each object is written atomically: object stores PUT whole objects, and zarr's LocalStore
  writes a ``*.partial`` temp file and renames it into place; a leftover ``.partial`` file
  (crash mid-write) and anything that does not parse as the marker for its own key are
  ignored when listing, so neither a torn write nor stray junk counts as finished.

Only the zarr Store API is used (get/set/list_prefix/delete), so the same code works on a
LocalStore, a MemoryStore and object stores. Zarr ignores the ``.bulkpix`` prefix (it is not a
Zarr node); listing the group without consolidated metadata makes zarr warn that it is "not
recognized as a component of a Zarr hierarchy", which is harmless.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype

from bulkpix.errors import StoreError
from bulkpix.store.location import JOB_KEY, RECORD_DIR

__all__ = ["JOB_KEY", "TileRecord", "fingerprint_diff"]


MARKER_VERSION = 1
# Keys become object names: keep them to characters every store and filesystem accepts.
_OBJECT_SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,=+-]*")
_TEMP_SUFFIX = ".partial"  # zarr LocalStore's temp files: {name}.{uuid}.partial
# Bounds how many marker objects are fetched at once when validating a listing.
_READ_CONCURRENCY = 64


class TileRecord:
    """Finished/failed tiles and the job fingerprint of the item group at ``path``."""

    def __init__(
        self, store: Store, path: str = "", *, guard: Callable[[], None] | None = None
    ) -> None:
        self.store = store
        path = path.strip("/")
        self.path = path
        self.prefix = f"{path}/{RECORD_DIR}/" if path else f"{RECORD_DIR}/"
        # Called before every marker is written; raises (LeaseLost) when this run may no
        # longer write into the output.
        self._guard = guard

    # ---------------------------------------------------------------- fingerprint

    async def write_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        await self._put(self._job_key, fingerprint)

    async def fingerprint(self) -> dict[str, Any] | None:
        """The stored fingerprint, None if there is none. A corrupt one is a StoreError."""
        buffer = await self.store.get(self._job_key, prototype=default_buffer_prototype())
        if buffer is None:
            return None
        value = _parse(buffer.to_bytes())
        if not isinstance(value, dict):
            raise StoreError(f"the job fingerprint at {self._job_key!r} is unreadable")
        return value

    # ---------------------------------------------------------------- done tiles

    async def mark_done(self, key: str, chunks: Mapping[str, int] | None = None) -> None:
        """Record ``key`` as finished. Call only after all of its chunks are written.

        ``chunks`` maps each stored chunk's key (relative to the item) to its crc32c, for
        ``bulkpix verify``.
        """
        _check_key(key)
        marker: dict[str, Any] = {"key": key, "v": MARKER_VERSION, "time": _now()}
        if chunks:
            marker["chunks"] = dict(chunks)
        await self._put(self._done_prefix + key, marker)

    async def done_markers(self) -> dict[str, dict[str, Any]]:
        """Every valid done-marker by tile key (what ``done_keys`` counts), as stored."""
        names = [name async for name in self._list_names(self._done_prefix)]
        markers = await self._read_many(self._done_prefix, names)
        return {
            name: marker
            for name, marker in zip(names, markers, strict=True)
            if isinstance(marker, dict) and marker.get("key") == name
        }

    async def done_among(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` have a valid done-marker: one GET each, no listing (a cluster
        batch asks about its own tiles, not the item's thousands)."""
        names = list(keys)
        for name in names:
            _check_key(name)
        markers = await self._read_many(self._done_prefix, names)
        return {
            name
            for name, marker in zip(names, markers, strict=True)
            if isinstance(marker, dict) and marker.get("key") == name
        }

    async def clear_done(self, key: str) -> None:
        """Forget that ``key`` finished: the next run fetches it again."""
        _check_key(key)
        await self.store.delete(self._done_prefix + key)

    async def done_keys(self, *, validate: bool = True) -> set[str]:
        """Keys of finished tiles.

        With ``validate`` (default) every marker is read and must be a JSON object naming its
        own key: one GET per tile, worth it on a local disk. ``validate=False`` trusts the
        listing (still skipping temp files and bad names): one LIST per 1000 tiles on an object
        store, where a PUT is atomic and a torn marker cannot exist.
        """
        names = [name async for name in self._list_names(self._done_prefix)]
        if not validate:
            return set(names)
        markers = await self._read_many(self._done_prefix, names)
        return {
            name
            for name, marker in zip(names, markers, strict=True)
            if isinstance(marker, dict) and marker.get("key") == name
        }

    # ---------------------------------------------------------------- failed tiles

    async def mark_failed(self, key: str, reason: str) -> None:
        """Record that ``key`` failed for good, with a short reason."""
        _check_key(key)
        await self._put(
            self._failed_prefix + key,
            {"key": key, "reason": str(reason), "v": MARKER_VERSION, "time": _now()},
        )

    async def failed(self) -> dict[str, str]:
        """Failed tiles and their reasons, leaving out tiles finished since they failed."""
        names = [name async for name in self._list_names(self._failed_prefix)]
        markers = await self._read_many(self._failed_prefix, names)
        done = await self.done_keys(validate=False) if names else set()
        return {
            name: str(marker["reason"])
            for name, marker in zip(names, markers, strict=True)
            if isinstance(marker, dict)
            and marker.get("key") == name
            and "reason" in marker
            and name not in done
        }

    async def clear_failed(self, key: str) -> None:
        _check_key(key)
        await self.store.delete(self._failed_prefix + key)

    async def clear(self) -> None:
        """Forget everything: fingerprint, finished and failed tiles (the lease, which lives
        beside the root's record, is not part of it)."""
        await self.store.delete(self._job_key)
        await self.store.delete_dir(self._done_prefix)
        await self.store.delete_dir(self._failed_prefix)

    async def count_done(self) -> int:
        """How many done-markers are listed (not read: a quick look for status and checks)."""
        return len([name async for name in self._list_names(self._done_prefix)])

    # ---------------------------------------------------------------- helpers

    @property
    def _job_key(self) -> str:
        return self.prefix + JOB_KEY

    @property
    def _done_prefix(self) -> str:
        return self.prefix + "done/"

    @property
    def _failed_prefix(self) -> str:
        return self.prefix + "failed/"

    async def _put(self, key: str, value: dict[str, Any]) -> None:
        if self._guard is not None:
            self._guard()
        data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        await self.store.set(key, default_buffer_prototype().buffer.from_bytes(data))

    async def _list_names(self, prefix: str) -> AsyncIterator[str]:
        """Names of the objects directly under ``prefix`` that can be tile keys."""
        async for store_key in self.store.list_prefix(prefix):
            name = store_key[len(prefix) :] if store_key.startswith(prefix) else ""
            if _OBJECT_SAFE_KEY.fullmatch(name) and not name.endswith(_TEMP_SUFFIX):
                yield name

    async def _read_many(self, prefix: str, names: list[str]) -> list[Any]:
        semaphore = asyncio.Semaphore(_READ_CONCURRENCY)
        prototype = default_buffer_prototype()

        async def read(name: str) -> Any:
            async with semaphore:
                buffer = await self.store.get(prefix + name, prototype=prototype)
            return None if buffer is None else _parse(buffer.to_bytes())

        return await asyncio.gather(*(read(name) for name in names))


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any], _where: str = "") -> list[str]:
    """What differs between two fingerprints, one line per changed leaf.

    E.g. ``["bands: ['B4'] -> ['B4', 'B3']", "grid.transform: [...] -> [...]"]``; empty when
    they are equal.
    """
    changes = []
    for name in sorted(set(old) | set(new), key=str):
        where = f"{_where}.{name}" if _where else str(name)
        before, after = old.get(name, _MISSING), new.get(name, _MISSING)
        if isinstance(before, dict) and isinstance(after, dict):
            changes.extend(fingerprint_diff(before, after, where))
        elif before != after:
            changes.append(f"{where}: {_short(before)} -> {_short(after)}")
    return changes


def _short(value: Any, limit: int = 120) -> str:
    """A value as a message quotes it: a list of cube steps or images can run to kilobytes."""
    text = repr(value)
    if len(text) <= limit:
        return text
    count = f" ({len(value)} entries)" if isinstance(value, list | dict) else ""
    return text[: limit - 3] + "..." + count


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


_MISSING: Any = _Missing()


def _check_key(key: str) -> None:
    if not _OBJECT_SAFE_KEY.fullmatch(key) or key.endswith(_TEMP_SUFFIX):
        raise ValueError(
            f"tile key {key!r} cannot name a record object "
            "(letters, digits and _ . , = + - only, starting with a letter or digit)"
        )


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):  # torn or foreign object: not a marker
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
