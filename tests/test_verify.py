"""Integrity: chunk checksums in the done-markers, `bulkpix verify`, `durable: true`, and
the cleanup of bulkpix's own leftover temp files on resume."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from bulkpix.cli import main
from bulkpix.emulator import SyntheticAsset
from bulkpix.emulator.synthetic import synthetic_pixels
from bulkpix.geometry.tiling import parse_tile_key
from tests.conftest import emulator_thread, write_job
from tests.hostile_server import ASSET as HOSTILE_ASSET
from tests.hostile_server import good_metadata, hostile_server_thread

ASSET = "projects/demo/assets/synth"
SYNTH = SyntheticAsset(width=4000, height=4000)
ROWS, COLS = np.arange(1232, 1232 + 256), np.arange(200, 200 + 256)


def _keys(url: str, output: Path, **more: Any) -> dict[str, Any]:
    return {
        "asset": ASSET,
        "output": str(output),
        "endpoint": url,
        "credentials": "none",
        "bands": ["u8", "f32"],
        # 256 x 256 px: 4 tiles of 128, each 4 chunks of 64 per band.
        "region": {"bbox": [602000, 5185120, 604560, 5187680], "region_crs": "EPSG:32633"},
        "chunk": 64,
        "tile": [128, 128],
        "concurrency": 2,
        **more,
    }


def _windows(emu: Any, start: int = 0) -> list[tuple[int, int, int, int]]:
    return [
        (r["row_off"], r["col_off"], r["height"], r["width"])
        for r in emu.log[start:]
        if r["op"] == "get_pixels"
    ]


def _data_digests(output: Path) -> dict[str, str]:
    return {
        p.relative_to(output).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(output.rglob("*"))
        if p.is_file() and ".bulkpix" not in p.parts
    }


def _check_pixels(output: Path) -> None:
    root = zarr.open_group(output, mode="r")
    np.testing.assert_array_equal(root["u8"][:], synthetic_pixels(0, ROWS, COLS))
    np.testing.assert_array_equal(root["f32"][:], synthetic_pixels(3, ROWS, COLS))


def test_verify_finds_a_corrupt_chunk_and_the_next_run_refetches_that_tile_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.zarr"
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job = write_job(tmp_path / "j.yaml", **_keys(emu.url, output))
        assert main(["run", "--quiet", str(job)]) == 0
        expected = _data_digests(output)
        markers = {m.name: json.loads(m.read_text()) for m in (output / ".bulkpix/done").iterdir()}
        assert len(markers) == 4
        assert all(len(m["chunks"]) == 8 for m in markers.values())  # 4 chunks x 2 bands

        capsys.readouterr()
        assert main(["verify", str(output)]) == 0
        assert "verified 4 tile(s), 32 chunk(s)" in capsys.readouterr().out

        # Flip one byte of one chunk: tile (row 128, col 0) holds f32 chunk (2, 1).
        chunk = output / "f32" / "c" / "2" / "1"
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
        assert main(["verify", str(output)]) == 1
        out = capsys.readouterr().out
        assert "tile g0_r128_c0_h128_w128, f32/c/2/1: checksum mismatch" in out
        assert "1 tile(s) failed and were cleared" in out
        assert not (output / ".bulkpix/done/g0_r128_c0_h128_w128").exists()
        assert main(["status", str(output)]) == 1  # a tile is missing now

        start = len(emu.log)
        assert main(["run", "--quiet", str(job)]) == 0
        refetched = _windows(emu, start)
    tile = parse_tile_key("g0_r128_c0_h128_w128").window
    assert refetched == [(1232 + tile.row_off, 200 + tile.col_off, 128, 128)]
    assert _data_digests(output) == expected
    _check_pixels(output)
    assert main(["verify", str(output)]) == 0


def test_verify_reports_a_missing_chunk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out.zarr"
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job = write_job(tmp_path / "j.yaml", **_keys(emu.url, output))
        assert main(["run", "--quiet", str(job)]) == 0
    (output / "u8" / "c" / "0" / "3").unlink()
    capsys.readouterr()
    assert main(["verify", str(output)]) == 1
    assert "tile g0_r0_c128_h128_w128, u8/c/0/3: missing" in capsys.readouterr().out


def test_verify_of_something_else_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "foreign.zarr"
    zarr.create_array(foreign, name="precious", shape=(4, 4), dtype="uint8")
    for target in (foreign, tmp_path / "absent.zarr"):
        assert main(["verify", str(target)]) == 2
        err = capsys.readouterr().err
        assert "not a bulkpix output" in err and "Traceback" not in err


def test_durable_runs_fsync_every_chunk_and_store_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        plain, durable = tmp_path / "plain.zarr", tmp_path / "durable.zarr"
        assert (
            main(["run", "--quiet", str(write_job(tmp_path / "p.yaml", **_keys(emu.url, plain)))])
            == 0
        )
        assert not any("/c/" in p for p in synced)
        keys = _keys(emu.url, durable, durable=True)
        assert main(["run", "--quiet", str(write_job(tmp_path / "d.yaml", **keys))]) == 0
    chunk_files = {p for p in synced if "/c/" in p and Path(p).is_file()}
    assert len(chunk_files) == 32  # every chunk, each one fsynced
    assert str(durable / "f32" / "c" / "3") in synced  # and the directories naming them
    assert _data_digests(durable) == _data_digests(plain)


def test_resume_removes_only_bulkpix_leftover_temp_files(tmp_path: Path) -> None:
    output = tmp_path / "out.zarr"
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job = write_job(tmp_path / "j.yaml", **_keys(emu.url, output))
        assert main(["run", "--quiet", str(job)]) == 0
        ours = [
            output / ".bulkpix" / "done" / f"g0_r0_c0_h128_w128.{'a' * 32}.partial",
            output / "u8" / "c" / "1" / f"0.{'b' * 32}.partial",
            output / f"zarr.{'c' * 32}.partial",
        ]
        zarr.open_group(output, mode="a").create_group("mine")
        theirs = [
            output / "mine" / f"data.{'d' * 32}.partial",  # the user's group: not ours
            output / "notes.partial",  # not bulkpix's naming
            output / "u8" / "c" / "keep.partial",
        ]
        for path in (*ours, *theirs):
            path.write_bytes(b"half")
        start = len(emu.log)
        assert main(["run", "--quiet", str(job)]) == 0
        assert not _windows(emu, start)
    assert not any(path.exists() for path in ours)
    assert all(path.read_bytes() == b"half" for path in theirs)
    _check_pixels(output)


def test_a_failed_part_of_a_split_tile_clears_the_tile_it_was_part_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.zarr"
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job = write_job(tmp_path / "j.yaml", **_keys(emu.url, output, bands=["u8"]))
        assert main(["run", "--quiet", str(job)]) == 0
        # As a tile the server found too large leaves it: its parts' markers hold the
        # checksums, the whole tile's marker none.
        done = output / ".bulkpix" / "done"
        whole = json.loads((done / "g0_r0_c0_h128_w128").read_text())
        (done / "g0_r0_c0_h128_w128").write_text(json.dumps({k: whole[k] for k in ("key", "v")}))
        for row in (0, 64):
            for col in (0, 64):
                key = f"g0_r{row}_c{col}_h64_w64"
                chunk = f"u8/c/{row // 64}/{col // 64}"
                marker = {"key": key, "v": 1, "chunks": {chunk: whole["chunks"][chunk]}}
                (done / key).write_text(json.dumps(marker))
        (output / "u8" / "c" / "1" / "1").write_bytes(b"garbage")
        capsys.readouterr()
        assert main(["verify", str(output)]) == 1
        out = capsys.readouterr().out
        assert "tile g0_r64_c64_h64_w64, u8/c/1/1: checksum mismatch" in out
        assert "2 tile(s) failed and were cleared" in out
        assert not (done / "g0_r64_c64_h64_w64").exists()
        assert not (done / "g0_r0_c0_h128_w128").exists()
        assert (done / "g0_r0_c0_h64_w64").exists()
        start = len(emu.log)
        assert main(["run", "--quiet", str(job)]) == 0
        assert _windows(emu, start) == [(1232, 200, 128, 128)]
    np.testing.assert_array_equal(
        zarr.open_group(output, mode="r")["u8"][:], synthetic_pixels(0, ROWS, COLS)
    )


def test_a_damaged_band_part_clears_the_tile_it_was_part_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that takes one band per request splits each tile by bands: the damaged
    part's marker and its whole tile's both go, so the next run fetches the part again."""
    output = tmp_path / "out.zarr"
    with hostile_server_thread(pixels="too_large_bands", metadata=good_metadata(bands=3)) as srv:
        job = write_job(
            tmp_path / "j.yaml",
            asset=HOSTILE_ASSET,
            output=str(output),
            endpoint=srv.url,
            credentials="none",
            chunk=16,
            tile=[32, 32],
            concurrency=2,
        )
        assert main(["run", "--quiet", str(job)]) == 0
        done = output / ".bulkpix" / "done"
        assert (done / "g0_r0_c0_h32_w32_b0-1").exists()
        assert (done / "g0_r0_c0_h32_w32").exists()
        before = _data_digests(output)
        (output / "B1" / "c" / "0" / "0").write_bytes(b"garbage")
        capsys.readouterr()
        assert main(["verify", str(output)]) == 1
        out = capsys.readouterr().out
        assert "tile g0_r0_c0_h32_w32_b0-1, B1/c/0/0: checksum mismatch" in out
        assert "2 tile(s) failed and were cleared" in out
        assert not (done / "g0_r0_c0_h32_w32").exists()
        assert not (done / "g0_r0_c0_h32_w32_b0-1").exists()
        assert (done / "g0_r0_c0_h32_w32_b1-3").exists()  # the tile's other parts stay
        start = len(srv.pixel_requests)
        assert main(["run", "--quiet", str(job)]) == 0
        # The tile is asked for whole (and refused), then only its missing part.
        assert [r["bandIds"] for r in srv.pixel_requests[start:]] == [["B1", "B2", "B3"], ["B1"]]
        assert _data_digests(output) == before
        capsys.readouterr()
        assert main(["verify", str(output)]) == 0


def test_verify_and_the_lease_work_on_an_object_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import fsspec

    memory = fsspec.filesystem("memory")
    bucket = f"bulkpix-verify-{tmp_path.name}"
    url = f"memory://{bucket}/out.zarr"
    try:
        with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
            keys = {**_keys(emu.url, tmp_path / "unused"), "output": url}
            job = write_job(tmp_path / "j.yaml", **keys)
            assert main(["run", "--quiet", str(job)]) == 0
            assert not memory.exists(f"/{bucket}/out.zarr/.bulkpix/lease.json")
            assert main(["verify", url]) == 0
            memory.pipe(f"/{bucket}/out.zarr/u8/c/3/3", b"not the chunk")
            capsys.readouterr()
            assert main(["verify", url]) == 1
            assert "tile g0_r128_c128_h128_w128, u8/c/3/3: checksum mismatch" in (
                capsys.readouterr().out
            )
            start = len(emu.log)
            assert main(["run", "--quiet", str(job)]) == 0
            assert _windows(emu, start) == [(1232 + 128, 200 + 128, 128, 128)]
            assert main(["verify", url]) == 0
    finally:
        if memory.exists(f"/{bucket}"):
            memory.rm(f"/{bucket}", recursive=True)


def test_verify_covers_zarr_v2_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "v2.zarr"
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job = write_job(tmp_path / "j.yaml", **_keys(emu.url, output, zarr_format=2))
        assert main(["run", "--quiet", str(job)]) == 0
        marker = json.loads((output / ".bulkpix/done/g0_r0_c0_h128_w128").read_text())
        assert sorted(marker["chunks"])[:2] == ["f32/0.0", "f32/0.1"]
        chunk = output / "u8" / "1.1"
        chunk.write_bytes(chunk.read_bytes()[:-1])
        capsys.readouterr()
        assert main(["verify", str(output)]) == 1
        assert "tile g0_r0_c0_h128_w128, u8/1.1: checksum mismatch" in capsys.readouterr().out
        start = len(emu.log)
        assert main(["run", "--quiet", str(job)]) == 0
        assert _windows(emu, start) == [(1232, 200, 128, 128)]
    _check_pixels(output)
