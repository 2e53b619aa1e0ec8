"""The synthetic band family: pixels as a cheap, exact function of (band, row, col).

Each band is ``(row_term(row) + col_term(col))`` wrapped in the band's integer width, so a
request costs one broadcast add per pixel. Steps between neighbours are never a multiple of
the wrap, and the u8 band adds a term every 256 pixels so tiles misplaced by a multiple of
256 still show. The float band holds quarter steps below 2**20, exact in float32.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SYNTHETIC_BANDS", "synthetic_at", "synthetic_pixels"]

SYNTHETIC_BANDS: list[tuple[str, np.dtype]] = [
    ("u8", np.dtype("uint8")),
    ("i16", np.dtype("int16")),
    ("u16", np.dtype("uint16")),
    ("f32", np.dtype("float32")),
]

_F32_MASK = 0x3FFFFF  # 22 bits of quarters: |value| < 2**20, exact in float32
_F32_OFFSET = np.float32(2**19)


def _terms(band_index: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if band_index == 0:
        return rows + 5 * (rows >> 8), 3 * cols + 9 * (cols >> 8) + 17
    if band_index == 1:
        return 11 * rows, 13 * cols + 1234
    if band_index == 2:
        return 7 * rows + 3 * (rows >> 12), 5 * cols + 101
    if band_index == 3:
        return 3 * rows, 7 * cols + 3
    raise IndexError(f"synthetic assets have {len(SYNTHETIC_BANDS)} bands, not {band_index + 1}")


def _combine(band_index: int, row_term: np.ndarray, col_term: np.ndarray) -> np.ndarray:
    # Wrap each term to the band's width first, so the (broadcast) add runs in the narrow type.
    if band_index == 0:
        return (row_term & 0xFF).astype(np.uint8) + (col_term & 0xFF).astype(np.uint8)
    if band_index in (1, 2):
        wrapped = (row_term & 0xFFFF).astype(np.uint16) + (col_term & 0xFFFF).astype(np.uint16)
        return wrapped.view(np.int16) if band_index == 1 else wrapped
    quarters = (row_term & _F32_MASK).astype(np.uint32) + (col_term & _F32_MASK).astype(np.uint32)
    quarters &= np.uint32(_F32_MASK)
    values = quarters.astype(np.float32)
    values *= np.float32(0.25)
    values -= _F32_OFFSET
    return values


def synthetic_pixels(band_index: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Pixels of band ``band_index`` at ``rows[:, None]`` x ``cols[None, :]`` (native indices)."""
    row_term, col_term = _terms(band_index, rows, cols)
    return _combine(band_index, row_term[:, None], col_term[None, :])


def synthetic_at(band_index: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Pixels at paired (rows[i...], cols[i...]) of the same shape (used when resampling)."""
    row_term, col_term = _terms(band_index, rows, cols)
    return _combine(band_index, row_term, col_term)
