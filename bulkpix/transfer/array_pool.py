"""Band arrays kept from one tile for the next.

A fresh 9 MB array costs the kernel a page fault and a zeroed page for every 4 KiB (2 MiB
with huge pages) the first time it is written: about a tenth of the run's CPU when every
tile's bands are new. Tiles of a plan mostly share a shape, so the arrays of a written tile
serve the next one. The pool is bounded with the byte budget: arrays kept idle plus the
bytes the budget has out never exceed its capacity, so memory stays what the budget allows.
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
    of a written tile once nothing reads them."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self._idle: OrderedDict[int, tuple[_Key, np.ndarray]] = OrderedDict()
        self._by_key: dict[_Key, list[int]] = {}
        self._idle_bytes = 0

    @property
    def idle_bytes(self) -> int:
        return self._idle_bytes

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        import numpy as np

        key = (tuple(shape), np.dtype(dtype).str)
        ids = self._by_key.get(key)
        if ids:
            _, array = self._idle.pop(ids.pop())
            self._idle_bytes -= array.nbytes
            return array
        array = np.empty(shape, dtype=dtype)
        # Held bytes cover this array: make room among the idle ones, oldest first.
        self._shrink(self._budget.capacity - self._budget.held)
        return array

    def give_back(self, arrays: Iterable[np.ndarray]) -> None:
        """Keep what fits beside the budget's bytes out; the rest is freed."""
        for array in arrays:
            if id(array) in self._idle or not (
                array.flags.c_contiguous and array.flags.owndata and array.flags.writeable
            ):
                continue  # kept already, or a view whose base may still be in use elsewhere
            room = self._budget.capacity - self._budget.held - self._idle_bytes
            if array.nbytes > room:
                self._shrink(self._budget.capacity - self._budget.held - array.nbytes)
                if array.nbytes > self._budget.capacity - self._budget.held - self._idle_bytes:
                    continue
            key = (tuple(array.shape), array.dtype.str)
            self._idle[id(array)] = (key, array)
            self._by_key.setdefault(key, []).append(id(array))
            self._idle_bytes += array.nbytes

    def clear(self) -> None:
        self._idle.clear()
        self._by_key.clear()
        self._idle_bytes = 0

    def _shrink(self, limit: int) -> None:
        """Free idle arrays, oldest first, until at most ``limit`` bytes are idle."""
        while self._idle and self._idle_bytes > max(0, limit):
            ident, (key, array) = self._idle.popitem(last=False)
            self._by_key[key].remove(ident)
            self._idle_bytes -= array.nbytes
