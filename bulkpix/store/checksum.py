"""Chunk checksums as chunks are stored, and (on request) an fsync before the marker.

``ChecksumStore`` wraps the output's zarr Store. Every chunk of a tracked array that zarr
sets has its crc32c noted; ``ItemWriter.write_tile`` takes the crcs of its own chunks once
they are all stored, and they go into the tile's done-marker, where ``bulkpix verify`` checks
them against what is on disk.

With ``durable=True`` and a local store, each chunk file and its directory are fsynced before
``set`` returns, so a done-marker (written after) never outlives its chunks in a power loss.
Object stores need no fsync: a PUT that returned is stored.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import google_crc32c
from zarr.abc.store import Store
from zarr.core.buffer import Buffer
from zarr.storage import LocalStore, WrapperStore

from bulkpix.store.location import METADATA_NAMES

__all__ = ["ChecksumStore", "crc32c"]



def crc32c(data: bytes) -> int:
    # The C extension takes bytes only (not a memoryview): a compressed chunk's copy costs
    # far less than its compression did.
    return int(google_crc32c.value(data))


class ChecksumStore(WrapperStore[Store]):
    """A zarr Store that notes the crc32c of chunks of tracked arrays as they are set."""

    def __init__(
        self,
        store: Store,
        *,
        durable: bool = False,
        guard: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(store)
        self.durable = durable
        # Called before every chunk is stored: a run that lost its output's lease
        # (``Lease.check`` raises) stops before it writes another chunk, not just a marker.
        self.guard = guard
        self._tracked: set[str] = set()  # array paths, e.g. "B4" or "item/B4"
        self._crcs: dict[str, int] = {}
        # Chunks are set on the write loop's thread while the run's loop takes them.
        self._lock = threading.Lock()

    def _with_store(self, store: Store) -> ChecksumStore:
        return type(self)(store, durable=self.durable, guard=self.guard)

    def track(self, array_paths: Iterable[str]) -> None:
        with self._lock:
            self._tracked.update(array_paths)

    def take(self, keys: Iterable[str]) -> dict[str, int]:
        """The crcs noted for ``keys`` (those set since), forgetting them."""
        with self._lock:
            return {key: self._crcs.pop(key) for key in keys if key in self._crcs}

    async def set(self, key: str, value: Buffer) -> None:
        if self.guard is not None:
            self.guard()
        # A chunk's key is {array}/c/0/1 in Zarr v3 and {array}/0.1 in v2.
        tracked = (
            key.rpartition("/c/")[0] in self._tracked
            or key.rpartition("/")[0] in self._tracked
        ) and not key.endswith(METADATA_NAMES)
        if tracked:
            crc = crc32c(value.to_bytes())
        await self._store.set(key, value)
        if tracked:
            if self.durable and isinstance(self._store, LocalStore):
                await asyncio.to_thread(fsync_path, self._store.root / key)
            with self._lock:
                self._crcs[key] = crc


def fsync_path(path: Path) -> None:
    """fsync a file and the directory that names it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
