"""`bulkpix export`: a Cloud-Optimized GeoTIFF (tiles, overviews, nodata) written chunk by
chunk; mixed band types need --dtype."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from bulkpix.cli import main
from bulkpix.errors import JobError
from bulkpix.readers.export import export_cog
from tests.outputs import CRS as OUT_CRS
from tests.outputs import TRANSFORM, make_output, ramp, whole


def cog_layout(path: Path) -> str | None:
    with rasterio.open(path) as dataset:
        return dataset.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")


def test_export_writes_a_cog_with_tiles_overviews_nodata_and_band_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = make_output(
        tmp_path / "out.zarr",
        [("B4", "uint16"), ("B8", "uint16"), ("QA", "uint16")],
        1100,
        1300,
        ramp,
        fill_values={"B4": 0, "B8": 0, "QA": 0},
        band_attrs={"B8": {"units": "reflectance", "scale_factor": 0.0001}},
    )
    tif = tmp_path / "out.tif"
    assert main(["export", str(output), str(tif), "--bands", "B8,B4"]) == 0
    assert f"wrote {tif}: 1300 x 1100 px, bands B8, B4, uint16, nodata 0.0" in (
        capsys.readouterr().out
    )
    assert cog_layout(tif) == "COG"
    with rasterio.open(tif) as dataset:
        assert dataset.crs == CRS.from_user_input(OUT_CRS)
        assert dataset.transform == TRANSFORM
        assert dataset.count == 2 and dataset.dtypes == ("uint16", "uint16")
        assert dataset.block_shapes == [(512, 512), (512, 512)]
        assert dataset.overviews(1) == [2, 4]
        assert dataset.nodata == 0
        assert dataset.descriptions == ("B8", "B4")  # the order asked for
        assert dataset.units == ("reflectance", None)
        assert dataset.scales == (0.0001, 1.0)
        np.testing.assert_array_equal(dataset.read(1), whole("B8", 1100, 1300))
        np.testing.assert_array_equal(dataset.read(2), whole("B4", 1100, 1300))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "out.zarr"]  # no scratch


def test_export_streams_an_image_larger_than_its_memory(tmp_path: Path) -> None:
    height = width = 2560
    output = make_output(
        tmp_path / "big.zarr", [("A", "float32"), ("B", "float32")], height, width, ramp,
        chunk=256, strip=256,
    )
    image_bytes = height * width * 4 * 2  # 52 MB
    tif = tmp_path / "big.tif"
    tracemalloc.start()
    try:
        export_cog(str(output), tif)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A few chunks and COG blocks (512 x 512 float32 is 1 MB), never the image.
    assert peak < 8 * 2**20 < image_bytes / 6, peak
    with rasterio.open(tif) as dataset:
        np.testing.assert_array_equal(
            dataset.read(2, window=((2000, 2560), (100, 900))),
            ramp("B", 2000, 100, 560, 800).astype(np.float32),
        )
        assert dataset.overviews(1) == [2, 4, 8]


def test_mixed_types_need_dtype_which_keeps_every_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = make_output(
        tmp_path / "out.zarr", [("u8", "uint8"), ("i16", "int16"), ("f", "float32")], 300, 400,
        ramp,
    )
    tif = tmp_path / "out.tif"
    assert main(["export", str(output), str(tif)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "different types (u8=uint8, i16=int16, f=float32)" in err
    assert "--dtype float32" in err
    assert not tif.exists()

    assert main(["export", str(output), str(tif), "--dtype", "float32"]) == 0
    with rasterio.open(tif) as dataset:
        assert dataset.dtypes == ("float32",) * 3
        np.testing.assert_array_equal(dataset.read(2), whole("i16", 300, 400))

    with pytest.raises(JobError, match="uint8 cannot hold every value of i16=int16, f=float32"):
        export_cog(str(output), tif, dtype="uint8")
    # Bands of one type need no flag.
    export_cog(str(output), tmp_path / "one.tif", bands=["i16"])


def test_bands_with_different_nodata_become_nan_in_a_float_export(tmp_path: Path) -> None:
    output = make_output(
        tmp_path / "out.zarr", [("a", "int16"), ("b", "int16")], 64, 64, ramp, chunk=32,
        fill_values={"a": 7, "b": 8},
    )
    with pytest.raises(JobError, match="different nodata"):
        export_cog(str(output), tmp_path / "x.tif")
    export_cog(str(output), tmp_path / "x.tif", dtype="float32")
    with rasterio.open(tmp_path / "x.tif") as dataset:
        assert np.isnan(dataset.nodata)
        a = dataset.read(1)
        expected = whole("a", 64, 64).astype(np.float32)
        expected[expected == 7] = np.nan
        np.testing.assert_array_equal(a, expected)


def test_an_incomplete_output_needs_partial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = make_output(
        tmp_path / "out.zarr", [("a", "uint8")], 600, 300, ramp, complete=False, strip=256
    )
    tif = tmp_path / "out.tif"
    assert main(["export", str(output), str(tif)]) == 2
    assert "not complete" in capsys.readouterr().err
    assert not tif.exists()
    assert main(["export", str(output), str(tif), "--partial"]) == 0
    assert "(from an incomplete output)" in capsys.readouterr().out


def test_a_batch_output_needs_an_item(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out.zarr"
    make_output(output, [("a", "uint8")], 40, 40, ramp, chunk=32, item="north")
    make_output(output, [("a", "uint8")], 40, 40, ramp, chunk=32, item="south")
    tif = tmp_path / "out.tif"
    assert main(["export", str(output), str(tif)]) == 2
    assert "choose an item with --item (one of: north, south)" in capsys.readouterr().err
    assert main(["export", str(output), str(tif), "--item", "west"]) == 2
    assert "no item 'west'" in capsys.readouterr().err
    assert main(["export", str(output), str(tif), "--item", "south"]) == 0
    assert cog_layout(tif) == "COG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bands", "B9"], "has no band B9 (it has: a)"),
        (["--compress", "JPEG2000"], "unknown compression 'JPEG2000'"),
        (["--dtype", "pixel"], "unknown data type 'pixel'"),
    ],
)
def test_bad_arguments_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    output = make_output(tmp_path / "out.zarr", [("a", "uint8")], 40, 40, ramp, chunk=32)
    assert main(["export", str(output), str(tmp_path / "o.tif"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_not_an_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path), str(tmp_path / "o.tif")]) == 2
    assert "is not a bulkpix output" in capsys.readouterr().err


def test_v2_outputs_export_too(tmp_path: Path) -> None:
    output = make_output(
        tmp_path / "out.zarr", [("a", "int16")], 100, 120, ramp, chunk=64, zarr_format=2,
        fill_values={"a": -1},
    )
    result = export_cog(str(output), tmp_path / "o.tif")
    assert result.nodata == -1
    with rasterio.open(tmp_path / "o.tif") as dataset:
        assert dataset.nodata == -1
        np.testing.assert_array_equal(dataset.read(1), whole("a", 100, 120))


def test_a_rotated_grid_keeps_its_geotransform_in_the_cog(tmp_path: Path) -> None:
    rotated = Affine(10, 2, 600000, 3, -10, 5200000)
    output = make_output(
        tmp_path / "out.zarr", [("a", "uint8")], 64, 64, ramp, chunk=32, transform=rotated
    )
    export_cog(str(output), tmp_path / "o.tif")
    with rasterio.open(tmp_path / "o.tif") as dataset:
        assert dataset.transform == rotated


def test_the_users_path_run_v2_with_nodata_then_export_and_preview(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bulkpix run (a job file with zarr_format, nodata) -> GDAL reads it -> export -> preview."""
    from bulkpix.emulator import SyntheticAsset
    from tests.conftest import emulator_thread, write_job

    asset = "projects/demo/assets/synth"
    with emulator_thread(synthetic={asset: SyntheticAsset(width=700, height=500)}) as emu:
        job = write_job(
            tmp_path / "job.yaml",
            asset=asset,
            bands=["u16", "u8"],
            output=str(tmp_path / "out.zarr"),
            endpoint=emu.url,
            credentials="none",
            chunk=256,
            zarr_format=2,
            nodata={"u16": 0},
        )
        assert main(["run", "--quiet", str(job)]) == 0
    output = tmp_path / "out.zarr"
    with rasterio.open(f'ZARR:"{output}":/u16') as dataset:
        assert dataset.crs == CRS.from_epsg(32633) and dataset.nodata == 0
        u16 = dataset.read(1)
    assert main(["export", str(output), str(tmp_path / "u16.tif"), "--bands", "u16"]) == 0
    with rasterio.open(tmp_path / "u16.tif") as dataset:
        assert dataset.nodata == 0 and dataset.transform == Affine(10, 0, 600000, 0, -10, 5200000)
        np.testing.assert_array_equal(dataset.read(1), u16)
    assert main(["preview", str(output), str(tmp_path / "q.png"), "--size", "70"]) == 0
    assert "70 x 50 px of u16" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["export", "preview"])
@pytest.mark.parametrize("inside", ["zarr.json", "a/new.tif", "link/zarr.json"])
def test_a_destination_inside_the_output_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, inside: str
) -> None:
    output = make_output(tmp_path / "out.zarr", [("a", "uint8")], 40, 40, ramp, chunk=32)
    (tmp_path / "link").symlink_to(output)  # the output under another name
    before = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}
    destination = (tmp_path / inside) if inside.startswith("link") else (output / inside)
    assert main([command, str(output), str(destination)]) == 2
    err = capsys.readouterr().err
    assert "is inside the output" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in output.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("command", ["export", "preview"])
@pytest.mark.parametrize(
    ("compression", "zarr_format"),
    [("zstd", 3), ("lz4", 3), ("gzip", 2), ("none", 3)],
)
def test_a_corrupt_chunk_is_named_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    compression: str,
    zarr_format: int,
) -> None:
    output = make_output(
        tmp_path / "out.zarr",
        [("a", "uint16")],
        64,
        64,
        ramp,
        chunk=32,
        compression=compression,
        zarr_format=zarr_format,
        item="i",
    )
    key = "c/1/0" if zarr_format == 3 else "1.0"
    (output / "i" / "a" / key).write_bytes(b"garbage, not a chunk")
    assert main([command, str(output), str(tmp_path / "o.out"), "--item", "i"]) == 1
    err = capsys.readouterr().err
    assert f"chunk i/a/{key} cannot be read" in err and f"bulkpix verify {output}" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "o.out").exists()
