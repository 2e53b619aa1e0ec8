"""`bulkpix preview`: a PNG of the right size from a decimated read that skips chunks, with a
percentile stretch; nodata is transparent."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from zarr.storage import LocalStore

from bulkpix.cli import main
from bulkpix.errors import JobError
from bulkpix.readers.preview import sample_positions, stretch, write_preview
from tests.outputs import make_output, ramp, whole


def read_png(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        dataset = rasterio.open(path)
    with dataset:
        assert dataset.driver == "PNG"
        return dataset.read()


@pytest.fixture
def chunk_bytes_read(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Bytes of each array's chunks read from local stores, by array name."""
    counts: dict[str, int] = {}
    original = LocalStore.get

    async def counting_get(self, key, prototype=None, byte_range=None):  # type: ignore[no-untyped-def]
        value = await original(self, key, prototype, byte_range)
        parts = key.split("/")
        if value is not None and len(parts) > 1 and parts[-1][:1].isdigit():
            counts[parts[-4] if parts[-3] == "c" else parts[-3]] = (
                counts.get(parts[-4] if parts[-3] == "c" else parts[-3], 0) + len(value)
            )
        return value

    monkeypatch.setattr(LocalStore, "get", counting_get)
    return counts


def stored_chunk_bytes(array_dir: Path) -> int:
    return sum(p.stat().st_size for p in (array_dir / "c").rglob("*") if p.is_file())


def test_preview_has_the_size_asked_and_reads_only_some_chunks(
    tmp_path: Path, chunk_bytes_read: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    output = make_output(
        tmp_path / "out.zarr", [("A", "uint16"), ("B", "float32")], 1024, 2048, ramp, chunk=64
    )
    png = tmp_path / "quick.png"
    chunk_bytes_read.clear()
    assert main(["preview", str(output), str(png), "--size", "16"]) == 0
    assert f"wrote {png}: 16 x 8 px of A" in capsys.readouterr().out
    image = read_png(png)
    assert image.shape == (1, 8, 16)  # gray, longest side 16
    # A step of 128 px over 64 px chunks: one chunk row and column in two, a quarter.
    assert 0 < chunk_bytes_read["A"] <= stored_chunk_bytes(output / "A") / 3
    assert "B" not in chunk_bytes_read  # the band not shown is never read
    # The picture: the sampled pixels, stretched between their 2nd and 98th percentiles.
    rows, cols = sample_positions(1024, 8), sample_positions(2048, 16)
    sampled = whole("A", 1024, 2048)[np.ix_(rows, cols)]
    np.testing.assert_array_equal(
        image[0], stretch(sampled, np.ones(sampled.shape, bool), 2.0, 98.0)
    )


def test_stretch_maps_percentiles_to_black_and_white() -> None:
    values = np.arange(101, dtype=np.float64).reshape(1, 101)
    out = stretch(values, np.ones(values.shape, bool), 10.0, 90.0)
    assert out[0, 10] == 0 and out[0, 90] == 255 and out[0, 0] == 0 and out[0, 100] == 255
    assert out[0, 50] == 128  # (50 - 10) / 80 * 255 = 127.5, rounded half to even -> 128


def test_three_bands_make_rgb_and_nodata_is_transparent(tmp_path: Path) -> None:
    output = make_output(
        tmp_path / "out.zarr", [("r", "int16"), ("g", "int16"), ("b", "int16")], 300, 200,
        ramp, chunk=50, fill_values={"g": 0},
    )
    result = write_preview(str(output), tmp_path / "rgb.png", bands=["b", "g", "r"], size=100)
    assert (result.width, result.height, result.bands) == (67, 100, ("b", "g", "r"))
    image = read_png(tmp_path / "rgb.png")
    assert image.shape == (4, 100, 67)  # RGB and alpha
    rows, cols = sample_positions(300, 100), sample_positions(200, 67)
    g = whole("g", 300, 200)[np.ix_(rows, cols)]
    assert (g == 0).any()
    np.testing.assert_array_equal(image[3], np.where(g == 0, 0, 255))


def test_visualization_bands_are_shown_as_they_are(tmp_path: Path) -> None:
    names = [("vis-red", "uint8"), ("vis-green", "uint8"), ("vis-blue", "uint8")]
    output = make_output(tmp_path / "out.zarr", names, 64, 64, ramp, chunk=32)
    result = write_preview(str(output), tmp_path / "v.png", size=64)
    assert result.bands == ("vis-red", "vis-green", "vis-blue")
    image = read_png(tmp_path / "v.png")
    for index, (name, _) in enumerate(names):
        np.testing.assert_array_equal(image[index], whole(name, 64, 64).astype(np.uint8))


def test_a_small_image_is_not_enlarged(tmp_path: Path) -> None:
    output = make_output(tmp_path / "out.zarr", [("a", "float32")], 30, 50, ramp, chunk=16)
    result = write_preview(str(output), tmp_path / "p.png", size=1024)
    assert (result.width, result.height) == (50, 30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bands", "a,a"], "one band (gray) or three (r,g,b), got 2"),
        (["--size", "0"], "--size must be between 1 and 16384"),
        (["--percentiles", "90,10"], "percentiles need 0 <= low < high <= 100"),
        (["--bands", "zz"], "has no band zz"),
    ],
)
def test_bad_arguments_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    output = make_output(tmp_path / "out.zarr", [("a", "uint8")], 40, 40, ramp, chunk=32)
    assert main(["preview", str(output), str(tmp_path / "p.png"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "p.png").exists()


def test_preview_of_a_missing_output_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="is not a bulkpix output"):
        write_preview(str(tmp_path / "nothing.zarr"), tmp_path / "p.png")
