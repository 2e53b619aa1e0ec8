"""The output module: one classification of what an output holds, ownership proven by the
record (never by an attribute), and --restart deleting exactly what bulkpix made."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from bulkpix.cli import main
from bulkpix.emulator import SyntheticAsset
from bulkpix.emulator.synthetic import synthetic_pixels
from bulkpix.store.output import OutputKind, inspect_output
from tests.conftest import emulator_thread, write_job

ASSET = "projects/demo/assets/synth"
SYNTH = SyntheticAsset(width=4000, height=4000)
# The region's first pixel in the asset's native grid (602000 E, 5187680 N).
ROWS, COLS = np.arange(1232, 1232 + 256), np.arange(200, 200 + 256)


def _keys(url: str, output: Path, **more: Any) -> dict[str, Any]:
    return {
        "asset": ASSET,
        "output": str(output),
        "endpoint": url,
        "credentials": "none",
        "bands": ["u8"],
        # 256 x 256 px in 4 tiles of 128.
        "region": {"bbox": [602000, 5185120, 604560, 5187680], "region_crs": "EPSG:32633"},
        "chunk": 64,
        "tile": [128, 128],
        "concurrency": 2,
        **more,
    }


def _digest(path: Path) -> dict[str, str]:
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _pixel_requests(emu: Any, start: int = 0) -> int:
    return sum(1 for r in emu.log[start:] if r["op"] == "get_pixels")


def _kind(output: Path, items: tuple[str, ...] = ()) -> Any:
    return asyncio.run(inspect_output(str(output), items))


def test_each_kind_of_output_is_one_classification(tmp_path: Path) -> None:
    assert _kind(tmp_path / "nothing.zarr").kind is OutputKind.EMPTY
    bare = tmp_path / "bare.zarr"
    zarr.open_group(bare, mode="w")
    assert _kind(bare).kind is OutputKind.EMPTY  # a run killed right after making the root

    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        single = tmp_path / "single.zarr"
        assert (
            main(["run", "--quiet", str(write_job(tmp_path / "s.yaml", **_keys(emu.url, single)))])
            == 0
        )
        batch = tmp_path / "batch.zarr"
        keys = _keys(emu.url, batch, items=[{"name": "a"}, {"name": "b"}])
        assert main(["run", "--quiet", str(write_job(tmp_path / "b.yaml", **keys))]) == 0

    state = _kind(single)
    assert state.kind is OutputKind.SINGLE and list(state.items) == [""]
    assert state.recorded_tile("") == (128, 128) and state.items[""].bands == ("u8",)
    state = _kind(batch)
    assert state.kind is OutputKind.BATCH and sorted(state.items) == ["a", "b"]

    foreign = tmp_path / "foreign.zarr"
    zarr.create_array(foreign, name="precious", shape=(4, 4), dtype="uint8")
    assert _kind(foreign).kind is OutputKind.FOREIGN

    (single / ".bulkpix" / "job.json").write_text('{"asset": "projects/dem')
    state = _kind(single)
    assert state.kind is OutputKind.DAMAGED
    assert state.damage == ("the record .bulkpix/job.json is unreadable",)
    # The band arrays are still known, from the group's copy of the record.
    assert state.items[""].bands == ("u8",)


def test_a_bulkpix_attribute_alone_does_not_make_an_output_ours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "lookalike.zarr"
    group = zarr.open_group(output, mode="w", attributes={"bulkpix": {"batch": True}})
    group.create_array("theirs", shape=(4, 4), dtype="uint8", fill_value=3)
    (output / "notes.txt").write_text("mine")
    before = _digest(output)
    assert _kind(output).kind is OutputKind.FOREIGN
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        for args, expected in (([], "did not write"), (["--restart"], "will not delete it")):
            for more in ({}, {"items": [{"name": "a"}]}):
                job = write_job(tmp_path / "j.yaml", **_keys(emu.url, output, **more))
                capsys.readouterr()
                assert main(["run", "--quiet", *args, str(job)]) == 2
                assert expected in capsys.readouterr().err
                assert _digest(output) == before
        assert _pixel_requests(emu) == 0


def test_restart_keeps_what_the_user_added_to_a_batch_output(tmp_path: Path) -> None:
    output = tmp_path / "batch.zarr"
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        keys = _keys(emu.url, output, items=[{"name": "a"}, {"name": "b"}])
        job = write_job(tmp_path / "b.yaml", **keys)
        assert main(["run", "--quiet", str(job)]) == 0
        root = zarr.open_group(output, mode="a")
        mine = root.create_group("mine", attributes={"note": "kept"})
        mine.create_array("counts", shape=(3,), dtype="int32", fill_value=5)
        root["a"].create_array("extra", shape=(2, 2), dtype="uint8", fill_value=9)
        (output / "README.txt").write_text("my notes")
        (output / "a" / "notes.txt").write_text("about a")
        keys["items"] = [{"name": "a"}]
        keys["bands"] = ["i16"]
        changed = write_job(tmp_path / "c.yaml", **keys)
        assert main(["run", "--quiet", "--restart", str(changed)]) == 0

    assert (output / "README.txt").read_text() == "my notes"
    assert (output / "a" / "notes.txt").read_text() == "about a"
    root = zarr.open_group(output, mode="r")
    assert root["mine"].attrs["note"] == "kept"
    assert (root["mine"]["counts"][:] == 5).all()
    assert (root["a"]["extra"][:] == 9).all()
    # Exactly bulkpix's went: item b, and item a's old band.
    assert "b" not in root and not (output / "b").exists()
    assert "u8" not in root["a"] and "i16" in root["a"]
    np.testing.assert_array_equal(root["a"]["i16"][:], synthetic_pixels(1, ROWS, COLS))
    assert _kind(output).kind is OutputKind.BATCH


def test_restart_never_makes_an_item_over_data_bulkpix_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "batch.zarr"
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        keys = _keys(emu.url, output, items=[{"name": "a"}])
        assert main(["run", "--quiet", str(write_job(tmp_path / "a.yaml", **keys))]) == 0
        root = zarr.open_group(output, mode="a")
        root.create_group("mine").create_array("u8", shape=(3,), dtype="int32", fill_value=5)
        root.create_array("x", shape=(2,), dtype="float32", fill_value=7)  # not a coordinate
        before = _digest(output)
        start = len(emu.log)
        # A new item at the user's group: refused with or without --restart.
        keys["items"] = [{"name": "a"}, {"name": "mine"}]
        job = write_job(tmp_path / "b.yaml", **keys)
        for args in ([], ["--restart"]):
            capsys.readouterr()
            assert main(["run", "--quiet", *args, str(job)]) == 2
            err = capsys.readouterr().err
            assert "did not write at mine" in err and "Traceback" not in err
            assert _digest(output) == before
        # A single item made at the root after --restart cleared the batch: the user's "x"
        # is where the item's coordinate would go.
        single = write_job(tmp_path / "s.yaml", **_keys(emu.url, output))
        capsys.readouterr()
        assert main(["run", "--quiet", "--restart", str(single)]) == 2
        assert "did not write at x" in capsys.readouterr().err
        assert _digest(output) == before  # refused before --restart cleared anything
        assert _pixel_requests(emu, start) == 0
    root = zarr.open_group(output, mode="r", use_consolidated=False)
    assert (root["mine"]["u8"][:] == 5).all() and (root["x"][:] == 7).all()


def test_restart_keeps_a_user_array_inside_a_single_item_output(tmp_path: Path) -> None:
    output = tmp_path / "single.zarr"
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job = write_job(tmp_path / "s.yaml", **_keys(emu.url, output))
        assert main(["run", "--quiet", str(job)]) == 0
        zarr.open_group(output, mode="a").create_array(
            "mask", shape=(2, 2), dtype="uint8", fill_value=1
        )
        (output / "provenance.txt").write_text("by hand")
        assert main(["run", "--quiet", "--restart", str(job)]) == 0
        assert _pixel_requests(emu) == 8  # fetched again, all of it

    root = zarr.open_group(output, mode="r")
    assert (root["mask"][:] == 1).all()
    assert (output / "provenance.txt").read_text() == "by hand"
    np.testing.assert_array_equal(root["u8"][:], synthetic_pixels(0, ROWS, COLS))


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_restart_refuses_a_format_change_while_the_user_has_data_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], batch: bool
) -> None:
    output = tmp_path / "out.zarr"
    more: dict[str, Any] = {"items": [{"name": "a"}]} if batch else {}
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        v3 = write_job(tmp_path / "3.yaml", **_keys(emu.url, output, **more))
        assert main(["run", "--quiet", str(v3)]) == 0
        v2 = write_job(tmp_path / "2.yaml", **_keys(emu.url, output, zarr_format=2, **more))
        zarr.open_group(output, mode="a").create_array("mine", shape=(2,), dtype="uint8")
        before = _digest(output)
        capsys.readouterr()
        assert main(["run", "--quiet", "--restart", str(v2)]) == 2
        err = capsys.readouterr().err
        assert "zarr_format" in err and "mine" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        assert _digest(output) == before
        # Without the user's data the format changes cleanly.
        shutil.rmtree(output / "mine")
        assert main(["run", "--quiet", "--restart", str(v2)]) == 0
    assert (output / ".zgroup").exists() and not (output / "zarr.json").exists()
    root = zarr.open_group(output, mode="r", zarr_format=2)
    item = root["a"] if batch else root
    np.testing.assert_array_equal(item["u8"][:], synthetic_pixels(0, ROWS, COLS))


def test_the_record_owns_the_item_layout_not_the_group_attribute(tmp_path: Path) -> None:
    output = tmp_path / "out.zarr"
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job = write_job(tmp_path / "s.yaml", **_keys(emu.url, output))
        assert main(["run", "--quiet", str(job)]) == 0
        # A reader (or a careless tool) rewrites the copy on the group: nothing depends on it.
        metadata = json.loads((output / "zarr.json").read_text())
        metadata["attributes"]["bulkpix"] = {"bands": "garbage"}
        metadata.pop("consolidated_metadata", None)
        (output / "zarr.json").write_text(json.dumps(metadata))
        markers = sorted((output / ".bulkpix" / "done").iterdir())
        markers[0].unlink()
        start = len(emu.log)
        assert main(["run", "--quiet", str(job)]) == 0
        assert _pixel_requests(emu, start) == 1
    np.testing.assert_array_equal(
        zarr.open_group(output, mode="r")["u8"][:], synthetic_pixels(0, ROWS, COLS)
    )


def test_a_run_cut_short_while_making_an_item_is_made_again(tmp_path: Path) -> None:
    output = tmp_path / "out.zarr"
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job = write_job(tmp_path / "s.yaml", **_keys(emu.url, output))
        assert main(["run", "--quiet", str(job)]) == 0
        # As a kill right after the record was written leaves it: a record, no nodes yet.
        for path in output.iterdir():
            if path.name != ".bulkpix":
                if path.is_dir():
                    import shutil

                    shutil.rmtree(path)
                else:
                    path.unlink()
        import shutil

        shutil.rmtree(output / ".bulkpix" / "done")
        assert main(["run", "--quiet", str(job)]) == 0
    np.testing.assert_array_equal(
        zarr.open_group(output, mode="r")["u8"][:], synthetic_pixels(0, ROWS, COLS)
    )


# ----------------------------------------------------------------------------- damaged stores


def _damage_truncated_record(output: Path, item: str) -> str:
    record = output / item / ".bulkpix" / "job.json"
    record.write_bytes(record.read_bytes()[:25])
    return f"the record {item + '/' if item else ''}.bulkpix/job.json is unreadable"


def _damage_root_metadata(output: Path, item: str) -> str:
    (output / item / "zarr.json").unlink()
    return f"the group metadata {item + '/' if item else ''}zarr.json is missing"


def _damage_band_array(output: Path, item: str) -> str:
    import shutil

    shutil.rmtree(output / item / "u8")
    return f"the band array {item + '/' if item else ''}u8 is missing"


def _damage_corrupt_root_metadata(output: Path, item: str) -> str:
    (output / item / "zarr.json").write_text("{")
    return f"the group metadata {item + '/' if item else ''}zarr.json is unreadable"


def _damage_corrupt_band_metadata(output: Path, item: str) -> str:
    (output / item / "u8" / "zarr.json").write_text('{"zarr_format": 3, "node_ty')
    return f"the band array metadata {item + '/' if item else ''}u8/zarr.json is unreadable"


def test_a_batch_item_whose_record_is_gone_is_damaged_and_repaired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.zarr"
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        keys = _keys(emu.url, output, items=[{"name": "a"}, {"name": "b"}])
        job = write_job(tmp_path / "j.yaml", **keys)
        assert main(["run", "--quiet", str(job)]) == 0
        (output / "b" / ".bulkpix" / "job.json").unlink()
        what = "item b: the record b/.bulkpix/job.json is missing"
        capsys.readouterr()
        assert main(["status", str(output)]) == 1
        assert f"damaged: {what}" in capsys.readouterr().out
        assert main(["verify", str(output)]) == 1
        assert f"damaged: {what}" in capsys.readouterr().out
        assert main(["run", "--quiet", str(job)]) == 1
        err = capsys.readouterr().err
        assert f"is damaged: {what}" in err and "did not write" not in err
        start = len(emu.log)
        assert main(["run", "--quiet", "--restart", str(job)]) == 0
        assert _pixel_requests(emu, start) == 8
    # The band arrays went by the group's copy of the record, and came back.
    root = zarr.open_group(output, mode="r")
    np.testing.assert_array_equal(root["b"]["u8"][:], synthetic_pixels(0, ROWS, COLS))
    assert main(["status", str(output)]) == 0


def test_a_batch_root_with_unreadable_metadata_is_damaged_and_repaired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.zarr"
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job = write_job(tmp_path / "j.yaml", **_keys(emu.url, output, items=[{"name": "a"}]))
        assert main(["run", "--quiet", str(job)]) == 0
        (output / "zarr.json").write_text("{")
        capsys.readouterr()
        assert main(["run", "--quiet", str(job)]) == 1
        err = capsys.readouterr().err
        assert "is damaged: the group metadata zarr.json is unreadable" in err
        assert "Traceback" not in err
        assert main(["status", str(output)]) == 1
        assert main(["verify", str(output)]) == 1
        assert main(["run", "--quiet", "--restart", str(job)]) == 0
    np.testing.assert_array_equal(
        zarr.open_group(output, mode="r")["a"]["u8"][:], synthetic_pixels(0, ROWS, COLS)
    )
    assert main(["status", str(output)]) == 0


@pytest.mark.parametrize(
    "damage",
    [
        _damage_truncated_record,
        _damage_root_metadata,
        _damage_band_array,
        _damage_corrupt_root_metadata,
        _damage_corrupt_band_metadata,
    ],
    ids=[
        "truncated-record",
        "deleted-zarr-json",
        "deleted-band-array",
        "corrupt-zarr-json",
        "corrupt-band-metadata",
    ],
)
@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_a_damaged_output_is_named_and_repaired_by_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Any, batch: bool
) -> None:
    output = tmp_path / "out.zarr"
    item = "a" if batch else ""
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        more = {"items": [{"name": "a"}]} if batch else {}
        job = write_job(tmp_path / "j.yaml", **_keys(emu.url, output, **more))
        assert main(["run", "--quiet", str(job)]) == 0
        group = zarr.open_group(output / item, mode="a", use_consolidated=False)
        group.create_array("mine", shape=(2,), dtype="uint8", fill_value=4)
        what = damage(output, item)
        where = f"item a: {what}" if batch else what
        capsys.readouterr()

        # Named, in one line, by run (refused without --restart), status and verify.
        assert main(["run", "--quiet", str(job)]) == 1
        err = capsys.readouterr().err
        assert f"is damaged: {where}" in err and "--restart" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert main(["status", str(output)]) == 1
        out = capsys.readouterr().out
        assert f"damaged: {where}" in out and "complete" not in out.replace("incomplete", "")
        assert main(["verify", str(output)]) == 1
        assert f"damaged: {where}" in capsys.readouterr().out

        start = len(emu.log)
        assert main(["run", "--quiet", "--restart", str(job)]) == 0
        assert _pixel_requests(emu, start) == 4
    root = zarr.open_group(output / item, mode="r")
    np.testing.assert_array_equal(root["u8"][:], synthetic_pixels(0, ROWS, COLS))
    assert (root["mine"][:] == 4).all()  # what the user added outlived the repair
    assert main(["status", str(output)]) == 0
    assert main(["verify", str(output)]) == 0
