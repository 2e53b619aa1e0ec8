"""The synthetic band family: exact, distinct, cheap, and free of stored pixels."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkpix.emulator import SYNTHETIC_BANDS, synthetic_pixels
from bulkpix.emulator.synthetic import synthetic_at


def test_band_ids_and_types() -> None:
    assert [(name, np.dtype(dtype)) for name, dtype in SYNTHETIC_BANDS] == [
        ("u8", np.uint8), ("i16", np.int16), ("u16", np.uint16), ("f32", np.float32)]


@pytest.mark.parametrize("band", range(4))
def test_shape_dtype_and_neighbours_differ(band: int) -> None:
    rows, cols = np.arange(5000, 5300), np.arange(70000, 70400)
    values = synthetic_pixels(band, rows, cols)
    assert values.shape == (300, 400) and values.dtype == SYNTHETIC_BANDS[band][1]
    assert (values[1:] != values[:-1]).all() and (values[:, 1:] != values[:, :-1]).all()


def test_i16_has_negatives_and_f32_is_exact_quarters() -> None:
    rows = cols = np.arange(0, 3000, 7)
    assert synthetic_pixels(1, rows, cols).min() < 0
    floats = synthetic_pixels(3, rows, cols).astype(np.float64)
    assert (floats * 4 == np.round(floats * 4)).all()  # quarter steps, exact in float32
    assert len(np.unique(floats % 1)) == 4


def test_bands_differ_from_each_other() -> None:
    rows, cols = np.arange(100), np.arange(100)
    bands = [synthetic_pixels(b, rows, cols).astype(np.float64) for b in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert (bands[i] != bands[j]).mean() > 0.95


@pytest.mark.parametrize("band", range(4))
@pytest.mark.parametrize("shift", [(0, 256), (256, 0), (512, 512), (0, 2048), (4096, 0)])
def test_tiles_misplaced_by_tile_sizes_show(band: int, shift: tuple[int, int]) -> None:
    rows, cols = np.arange(1000, 1064), np.arange(3000, 3064)
    here = synthetic_pixels(band, rows, cols)
    there = synthetic_pixels(band, rows + shift[0], cols + shift[1])
    assert (here != there).mean() > 0.9


@settings(max_examples=50, deadline=None)
@given(band=st.integers(0, 3), row0=st.integers(0, 99_000), col0=st.integers(0, 99_000))
def test_windows_agree_with_pointwise_values(band: int, row0: int, col0: int) -> None:
    rows, cols = np.arange(row0, row0 + 7), np.arange(col0, col0 + 5)
    block = synthetic_pixels(band, rows, cols)
    grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="ij")
    np.testing.assert_array_equal(block, synthetic_at(band, grid_rows, grid_cols))
    # A sub-window of a window is the window of the sub-range.
    np.testing.assert_array_equal(block[2:5, 1:4], synthetic_pixels(band, rows[2:5], cols[1:4]))


def test_importing_the_emulator_pulls_in_no_pipeline_module() -> None:
    code = ("import sys, bulkpix.emulator; print(sorted(m for m in sys.modules if "
            "m.startswith('bulkpix.') and not m.startswith('bulkpix.emulator')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "['bulkpix.dtypes']"
