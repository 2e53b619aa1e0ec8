"""`bulkpix preview`: a PNG of the right size from a decimated read that skips chunks, with a
percentile stretch; nodata is transparent."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from zarr.storage import LocalStore

import bulkpix
from bulkpix.cli import main
from bulkpix.emulator import EmulatorConfig, SyntheticAsset, run_emulator
from bulkpix.emulator.synthetic import SYNTHETIC_BANDS, synthetic_pixels
from bulkpix.errors import JobError
from bulkpix.job import parse_job
from bulkpix.pipeline import run_job
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


# --------------------------------------------------------------------------- visualization

VIS_ASSET = "projects/demo/assets/synth"


async def run_visualization(tmp_path: Path, visualization: dict[str, Any]) -> tuple[Path, list]:
    output = tmp_path / "vis.zarr"
    config = EmulatorConfig(synthetic={VIS_ASSET: SyntheticAsset(width=300, height=200)})
    async with run_emulator(config) as emu:
        job = parse_job(
            {
                "asset": VIS_ASSET,
                "output": str(output),
                "endpoint": emu.url,
                "credentials": "none",
                "chunk": 64,
                "tile": [128, 128],
                "visualization": visualization,
            }
        )
        stats = await run_job(job)
        calls = [r for r in emu.log if r["op"] == "get_pixels"]
    assert stats.ok
    return output, calls


def source(band: str) -> np.ndarray:
    index = [name for name, _ in SYNTHETIC_BANDS].index(band)
    return synthetic_pixels(index, np.arange(200), np.arange(300))


def unit(values: np.ndarray, low: float, high: float, gamma: float) -> np.ndarray:
    """The service's stretch: [low, high] -> [0, 1], clamped, then gamma."""
    scaled = np.clip((values.astype(np.float64) - low) / (high - low), 0.0, 1.0)
    return scaled ** (1.0 / gamma) if gamma != 1.0 else scaled


async def test_visualization_stores_the_services_8_bit_rgb_bit_exact(tmp_path: Path) -> None:
    ranges = [(0.0, 60000.0), (-2000.0, 30000.0), (-1000.0, 1000.0)]
    output, calls = await run_visualization(
        tmp_path,
        {
            "bands": ["u16", "i16", "f32"],
            "min": [low for low, _ in ranges],
            "max": [high for _, high in ranges],
            "gamma": 1.3,
        },
    )
    assert {c["format"] for c in calls} == {"PNG"} and calls[0]["bands"] == ["u16", "i16", "f32"]
    ds = bulkpix.open(output)
    assert list(ds.data_vars) == ["vis-red", "vis-green", "vis-blue"]
    for name, band, (low, high) in zip(ds.data_vars, ["u16", "i16", "f32"], ranges, strict=True):
        assert ds[name].dtype == np.uint8
        expected = np.rint(unit(source(band), low, high, 1.3) * 255.0).astype(np.uint8)
        np.testing.assert_array_equal(ds[name].values, expected)


async def test_visualization_with_a_palette_bit_exact(tmp_path: Path) -> None:
    palette = ["000000", "ff0000", "#00ff00", "00f"]
    output, _ = await run_visualization(
        tmp_path, {"bands": ["f32"], "min": -500, "max": 500, "palette": palette}
    )
    ds = bulkpix.open(output)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.float64)
    position = unit(source("f32"), -500.0, 500.0, 1.0) * (len(colours) - 1)
    for channel, name in enumerate(["vis-red", "vis-green", "vis-blue"]):
        expected = np.rint(np.interp(position, np.arange(4), colours[:, channel]))
        np.testing.assert_array_equal(ds[name].values, expected.astype(np.uint8))


@pytest.mark.parametrize(
    ("visualization", "message"),
    [
        ({"bands": ["a", "b"]}, "1 band or 3"),
        ({"bands": ["a", "b", "c"], "palette": ["fff"]}, "palette goes with one band"),
        ({"bands": ["a"], "min": 0}, "both min and max"),
        ({"bands": ["a"], "palette": ["teal"]}, "not an RGB hex colour"),
        ({"bands": ["a"], "min": [0, 1], "max": 1}, "min needs 1 or 1 values"),
    ],
)
def test_a_bad_visualization_is_one_clear_error(
    visualization: dict[str, Any], message: str
) -> None:
    with pytest.raises(JobError, match=message):
        parse_job({"asset": "a/b", "output": "o.zarr", "visualization": visualization})


def test_an_rgba_png_payload_decodes_to_its_three_colour_bands() -> None:
    """The service may send masked pixels as transparent: the alpha band is dropped."""
    from rasterio.io import MemoryFile

    from bulkpix.ee.decode import decode_pixels

    rgba = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    with MemoryFile() as memory:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with memory.open(driver="PNG", width=6, height=5, count=4, dtype="uint8") as dst:
                dst.write(rgba)
        payload = memory.read()
    names = ["vis-red", "vis-green", "vis-blue"]
    arrays = decode_pixels(payload, "PNG", names, [np.dtype("uint8")] * 3, 5, 6)
    for index, name in enumerate(names):
        np.testing.assert_array_equal(arrays[name], rgba[index])
