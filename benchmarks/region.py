"""The benchmark asset and pixel windows of it: bounds, byte counts, tiles, spot checks.

Every client reads the same synthetic asset (bands u8, i16, u16, f32 on a 10 m UTM grid), so
pixels can be checked exactly against ``synthetic_pixels`` without keeping a reference copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from affine import Affine

from bulkpix.emulator import SYNTHETIC_BANDS, SyntheticAsset, synthetic_pixels

__all__ = [
    "ASSET",
    "BAND_DTYPES",
    "CRS",
    "NATIVE_TRANSFORM",
    "PIXEL_BYTES_PER_PX",
    "REQUEST_BYTES_PER_PX",
    "Window",
    "spot_check",
]

# earthengine-api only accepts project ids of 6-30 characters.
ASSET = "projects/bench-project/assets/mixed"
CRS = SyntheticAsset(1, 1).crs
NATIVE_TRANSFORM: Affine = SyntheticAsset(1, 1).transform
BAND_DTYPES: dict[str, np.dtype] = dict(SYNTHETIC_BANDS)
PIXEL_BYTES_PER_PX = sum(dtype.itemsize for dtype in BAND_DTYPES.values())  # 9
# As the service counts a request: one mask byte per band on top of the data.
REQUEST_BYTES_PER_PX = sum(dtype.itemsize + 1 for dtype in BAND_DTYPES.values())  # 13


@dataclass(frozen=True)
class Window:
    """A window of the asset's native pixel grid."""

    row_off: int
    col_off: int
    height: int
    width: int

    @classmethod
    def parse(cls, text: str) -> Window:
        """From ``row_off,col_off,height,width`` (how children get it on the command line)."""
        row_off, col_off, height, width = (int(v) for v in text.split(","))
        return cls(row_off, col_off, height, width)

    def __str__(self) -> str:
        return f"{self.row_off},{self.col_off},{self.height},{self.width}"

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def pixel_bytes(self) -> int:
        """Uncompressed bytes of all four bands: what a client delivers."""
        return self.pixels * PIXEL_BYTES_PER_PX

    @property
    def request_bytes(self) -> int:
        return self.pixels * REQUEST_BYTES_PER_PX

    @property
    def transform(self) -> Affine:
        return NATIVE_TRANSFORM * Affine.translation(self.col_off, self.row_off)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in the asset's CRS; edges on pixel edges, so a client
        that snaps outward gets exactly this window."""
        t = NATIVE_TRANSFORM
        x0, y0 = t @ (self.col_off, self.row_off)
        x1, y1 = t @ (self.col_off + self.width, self.row_off + self.height)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    def ee_grid(self) -> dict:
        """The getPixels ``grid`` of this window (native CRS, so no crsCode needed)."""
        t = self.transform
        return {"affineTransform": {"scaleX": t.a, "shearX": t.b, "translateX": t.c,
                                    "shearY": t.d, "scaleY": t.e, "translateY": t.f},
                "dimensions": {"width": self.width, "height": self.height}}

    def tiles(self, tile_height: int, tile_width: int) -> Iterator[Window]:
        """Row-major tiles of this window, cropped at its far edges."""
        for row in range(0, self.height, tile_height):
            for col in range(0, self.width, tile_width):
                yield Window(self.row_off + row, self.col_off + col,
                             min(tile_height, self.height - row), min(tile_width, self.width - col))

    def scaled(self, factor: int) -> Window:
        """The same origin, ``factor`` times the side (``factor**2`` the area)."""
        return Window(self.row_off, self.col_off, self.height * factor, self.width * factor)


def spot_check(bands: Mapping[str, np.ndarray], window: Window, samples: int = 3) -> None:
    """Compare a few whole rows and columns of each band with the synthetic truth.

    Cheap (a few thousand pixels) so it can run inside a timed client; raises AssertionError
    on a wrong shape or value, which fails the run.
    """
    rng = np.random.default_rng(0)
    rows = rng.integers(0, window.height, samples)
    cols = rng.integers(0, window.width, samples)
    all_rows = np.arange(window.row_off, window.row_off + window.height)
    all_cols = np.arange(window.col_off, window.col_off + window.width)
    for index, (band, dtype) in enumerate(BAND_DTYPES.items()):
        data = bands[band]
        assert data.shape == (window.height, window.width), (band, data.shape)
        assert data.dtype == dtype, (band, data.dtype)
        for row in rows:
            want = synthetic_pixels(index, all_rows[row:row + 1], all_cols)[0]
            assert np.array_equal(data[row, :], want), f"{band}: row {row} differs"
        for col in cols:
            want = synthetic_pixels(index, all_rows, all_cols[col:col + 1])[:, 0]
            assert np.array_equal(data[:, col], want), f"{band}: column {col} differs"
