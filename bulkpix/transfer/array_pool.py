"""Band arrays kept from one tile for the next.

A fresh 9 MB array costs the kernel a page fault and a zeroed page for every 4 KiB (2 MiB
with huge pages) the first time it is written: about a tenth of the run's CPU when every
tile's bands are new. Tiles of a plan mostly share a shape, so the arrays of a written tile
serve the next one. The pool lives within the byte budget: the arrays kept idle and the
bytes the budget has out never exceed its capacity together (idle arrays are freed, oldest
first, as the budget hands bytes out), so memory stays what the budget allows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from bulkpix.transfer.budget import ByteBudget

if TYPE_CHECKING:  # numpy loads with the store side, after the first request is out
    import numpy as np

__all__ = ["ArrayPool"]

_Key = tuple[tuple[int, ...], str]


class ArrayPool:
    """``take(shape, dtype)`` an uninitialised C-contiguous array; ``give_back`` the arrays
    of a written tile once nothing reads them (nor will: a store that kept a chunk's
    buffer as given would see it change, so only arrays whose chunks were encoded into new
    bytes come back)."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self._idle: OrderedDict[int, tuple[_Key, np.ndarray]] = OrderedDict()
        self._by_key: dict[_Key, list[int]] = {}
        self._idle_bytes = 0
        budget.keep_within(self._free_down_to)

    @property
    def idle_bytes(self) -> int:
        return self._idle_bytes

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An idle array of this shape and type, else a new one (the caller's budget hold
        covers it; idle arrays have made room for that hold already)."""
        import numpy as np

        ids = self._by_key.get((tuple(shape), np.dtype(dtype).str))
        if ids:
            return self._remove(ids[-1])
        self._free_down_to(self._room())
        return np.empty(shape, dtype=dtype)

    def give_back(self, arrays: Iterable[np.ndarray]) -> None:
        """Keep each array that fits beside the budget's bytes out; the rest are freed."""
        for array in arrays:
            if id(array) in self._idle or not (
                array.flags.c_contiguous and array.flags.owndata and array.flags.writeable
            ):
                continue  # kept already, or a view whose base may still be in use elsewhere
            self._free_down_to(self._room() - array.nbytes)
            if array.nbytes > self._room() - self._idle_bytes:
                continue
            key = (tuple(array.shape), array.dtype.str)
            self._idle[id(array)] = (key, array)
            self._by_key.setdefault(key, []).append(id(array))
            self._idle_bytes += array.nbytes

    def _room(self) -> int:
        return self._budget.capacity - self._budget.held

    def _free_down_to(self, limit: int) -> None:
        """Free idle arrays, oldest first, until at most ``limit`` bytes are idle."""
        while self._idle and self._idle_bytes > max(0, limit):
            self._remove(next(iter(self._idle)))

    def _remove(self, ident: int) -> np.ndarray:
        key, array = self._idle.pop(ident)
        ids = self._by_key[key]
        ids.remove(ident)
        if not ids:
            del self._by_key[key]
        self._idle_bytes -= array.nbytes
        return array
