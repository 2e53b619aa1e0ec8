"""The job file: defaults, batch items, and one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkpix.errors import JobError
from bulkpix.job import DEFAULT_ENDPOINT, load_job, parse_job

BASE = {"asset": "projects/demo/assets/x", "output": "out.zarr"}


def test_defaults() -> None:
    job = parse_job(dict(BASE))
    assert job.endpoint == DEFAULT_ENDPOINT
    assert (job.concurrency, job.qps, job.chunk, job.tile) == (40, 100.0, 1024, "auto")
    assert job.memory_mb == 128
    assert job.file_format == "NPY"
    assert job.credentials_spec == "default"
    [item] = job.resolved_items()
    assert item.name is None and item.asset == "projects/demo/assets/x"


def test_emulator_endpoint_needs_no_credentials() -> None:
    job = parse_job({**BASE, "endpoint": "emulator"})
    assert job.credentials_spec == "none"


def test_region_shorthands() -> None:
    bbox = parse_job({**BASE, "region": {"bbox": [1, 2, 3, 4]}}).region
    assert bbox is not None and bbox.bbox == (1, 2, 3, 4) and bbox.region_crs == "EPSG:4326"
    geometry = {"type": "Point", "coordinates": [1, 2]}
    assert parse_job({**BASE, "region": geometry}).region.geometry == geometry  # type: ignore[union-attr]
    assert parse_job({**BASE, "region": "area.geojson"}).region.file == "area.geojson"  # type: ignore[union-attr]
    utm = parse_job({**BASE, "region": {"bbox": [0, 0, 10, 10], "region_crs": "EPSG:32633"}})
    assert utm.region is not None and utm.region.region_crs == "EPSG:32633"


def test_batch_items_inherit_and_override() -> None:
    job = parse_job(
        {
            "output": "o.zarr",
            "bands": ["B1"],
            "crs": "EPSG:3857",
            "scale": 30,
            "items": [
                {"asset": "A/B", "name": "first"},
                {"asset": "users/me/c", "bands": ["B2", "B3"]},
            ],
        }
    )
    first, second = job.resolved_items()
    assert (first.name, first.bands, first.scale) == ("first", ["B1"], 30)
    assert (second.name, second.bands, second.crs) == ("item0001", ["B2", "B3"], "EPSG:3857")
    assert job.is_batch


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"concurrency": 0}, "key 'concurrency'"),
        ({"concurrency": "many"}, "key 'concurrency'"),
        ({"qps": -1}, "key 'qps'"),
        ({"chunk": 0}, "key 'chunk'"),
        ({"scale": 0}, "key 'scale'"),
        ({"crs": "EPSG:999999"}, "unknown CRS 'EPSG:999999'"),
        ({"tile": [500, 512]}, "multiples of chunk"),
        ({"tile": "huge"}, "key 'tile'"),
        ({"file_format": "PNG"}, "key 'file_format'"),
        ({"endpoint": "ftp://x"}, "key 'endpoint'"),
        ({"bands": []}, "key 'bands'"),
        ({"bands": ["B1", "B1"]}, "bands must not repeat"),
        ({"region": {"bbox": [3, 0, 1, 1]}}, "xmin < xmax"),
        ({"region": {"bbox": [1, 2, 3]}}, "key 'region.bbox'"),
        ({"region": {"bbox": [0, 0, 1, 1], "file": "x"}}, "exactly one of"),
        ({"asset": "projects/x"}, "projects/PROJECT/assets/ID"),
        ({"emulator": {"synthetic": {}}}, "endpoint: emulator"),
        ({"items": [{"name": "a b", "asset": "x/y"}]}, "may hold only letters"),
        ({"compression": "brotli"}, "key 'compression'"),
        ({"compression": "zstd", "compression_level": 23}, "zstd must be 1 to 22, got 23"),
        ({"compression": "lz4", "compression_level": 0}, "lz4 must be 1 to 9, got 0"),
        ({"compression": "none", "compression_level": 3}, "not compression: none"),
    ],
)
def test_bad_keys_one_line(keys: dict, expected: str) -> None:
    with pytest.raises(JobError) as info:
        parse_job({**BASE, **keys}, source="job.yaml")
    message = str(info.value)
    assert expected in message
    assert message.startswith("job.yaml: ")
    assert "\n" not in message


def test_missing_output_and_asset() -> None:
    with pytest.raises(JobError, match="key 'output' is required"):
        parse_job({"asset": "a/b"})
    with pytest.raises(JobError, match="asset is missing"):
        parse_job({"output": "o.zarr"})
    with pytest.raises(JobError, match=r"items\[1\]: asset is missing"):
        parse_job({"output": "o.zarr", "items": [{"asset": "a/b"}, {"name": "x"}]})


def test_duplicate_item_names() -> None:
    with pytest.raises(JobError, match="item names repeat: a"):
        parse_job({"output": "o", "items": [{"name": "a", "asset": "x/y"}] * 2})


def test_load_job_file_errors(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="cannot read the job file"):
        load_job(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("asset: [unclosed\n")
    with pytest.raises(JobError, match="broken YAML at line"):
        load_job(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(JobError, match="must be a YAML mapping"):
        load_job(scalar)


def test_region_file_relative_to_job(tmp_path: Path) -> None:
    (tmp_path / "area.geojson").write_text('{"type": "Point", "coordinates": [1, 2]}')
    (tmp_path / "job.yaml").write_text("asset: a/b\noutput: o.zarr\nregion: area.geojson\n")
    job = load_job(tmp_path / "job.yaml")
    assert job.region is not None
    assert job.region.load_geometry(job.base_dir) == {"type": "Point", "coordinates": [1, 2]}
    with pytest.raises(JobError, match="cannot read it"):
        job.region.model_copy(update={"file": "nope.json"}).load_geometry(job.base_dir)


def test_emulator_section_counts_the_rate_per_minute_unless_strict() -> None:
    emulator = {**BASE, "endpoint": "emulator"}
    section = parse_job({**emulator, "emulator": {}}).emulator
    assert section is not None and section.qps_window == "minute"
    strict = parse_job({**emulator, "emulator": {"qps_window": "second"}}).emulator
    assert strict is not None and strict.qps_window == "second"
    with pytest.raises(JobError, match="qps_window"):
        parse_job({**emulator, "emulator": {"qps_window": "hour"}}, source="job.yaml")


def test_the_emulator_a_job_starts_gets_its_qps_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bulkpix.emulator
    from bulkpix.cli import main
    from tests.conftest import write_job

    started = []
    real = bulkpix.emulator.emulator_in_thread

    def recording(config):  # type: ignore[no-untyped-def]
        started.append(config)
        return real(config)

    monkeypatch.setattr(bulkpix.emulator, "emulator_in_thread", recording)
    job = write_job(tmp_path / "job.yaml", asset="projects/demo/assets/x",
                    output=str(tmp_path / "out.zarr"), endpoint="emulator",
                    region={"bbox": [600000, 5198720, 601280, 5200000],
                            "region_crs": "EPSG:32633"},
                    chunk=64, emulator={"qps_window": "second", "max_qps": 50})
    assert main(["run", "--quiet", str(job)]) == 0
    [config] = started
    assert (config.qps_window, config.max_qps) == ("second", 50)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({}, ("lz4", 5)),
        ({"compression": "none"}, ("none", None)),
        ({"compression": "zstd"}, ("zstd", 1)),
        ({"compression": "zstd", "compression_level": 7}, ("zstd", 7)),
        ({"compression": "gzip", "compression_level": 9}, ("gzip", 9)),
    ],
)
def test_compression_and_its_level(keys: dict, expected: tuple) -> None:
    from bulkpix.store.codecs import codec_for

    job = parse_job({**BASE, **keys})
    codec, level = codec_for(job.compression, job.compression_level)
    assert (codec.name, level) == expected


# --------------------------------------------------------------------------- hostile job files

_BOMB = (  # 9**10 strings from a few hundred bytes, in the key the review used
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
        for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + f"tile: [{', '.join(['*i'] * 9)}]\n"
)


def test_yaml_alias_bomb_refused_fast_and_small(tmp_path: Path) -> None:
    import time
    import tracemalloc

    assert len(_BOMB) < 500
    path = tmp_path / "bomb.yaml"
    path.write_text("asset: projects/demo/assets/x\noutput: o.zarr\n" + _BOMB)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(JobError) as info:
            load_job(path)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "YAML bomb" in str(info.value)
    assert len(str(info.value)) < 300
    assert elapsed < 1.0  # the bound: it ran for over 60 s before
    assert peak < 200 * 2**20


def test_anchors_in_proportion_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "output: o.zarr\nbands: &b [B1, B2]\n"
        "items:\n  - {asset: a/b, bands: *b}\n  - {asset: a/c, bands: *b}\n"
    )
    assert [i.bands for i in load_job(path).resolved_items()] == [["B1", "B2"]] * 2


def test_recursive_alias_refused(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("asset: a/b\noutput: o.zarr\ntile: &t [1, *t]\n")
    with pytest.raises(JobError, match="refers to a node that contains it"):
        load_job(path)


def test_deep_nesting_refused(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("asset: a/b\noutput: o.zarr\ntile: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(JobError, match="nested too deeply"):
        load_job(path)


def test_job_file_over_the_size_limit_refused(tmp_path: Path) -> None:
    from bulkpix.files import JOB_FILE_MAX_BYTES

    path = tmp_path / "job.yaml"
    path.write_text("asset: a/b\noutput: o.zarr\n#" + "x" * JOB_FILE_MAX_BYTES + "\n")
    with pytest.raises(JobError, match="larger than 1 MiB"):
        load_job(path)


@pytest.mark.parametrize(
    "keys",
    [
        {"tile": ["x" * 10_000_000, 1]},
        {"crs": "x" * 10_000_000},
        {"items": [{"name": "a b" * 5_000_000, "asset": "x/y"}]},
        {"asset": "projects/x" + "y" * 10_000_000},
        {"x" * 1000: 1},
        {"tile": [[[[[[[[[["deep"]]]]]]]]] * 1000]},
        {"workload_tag": "x" * 50_000_000},
        {"project": "p\r\nX-Evil: 1" * 1_000_000},
        {"region": "r" * 100_000},
        {"output": "o" * 100_000},
        {"credentials": "c" * 100_000},
        {"endpoint": "http://" + "h" * 100_000},
        {"items": [{"name": "n" * 100_000, "asset": "x/y"}]},
    ],
    ids=["tile", "crs", "item name", "asset", "key", "nested", "workload tag", "project",
         "region file", "output", "credentials", "endpoint", "long item name"],
)
def test_quoted_values_are_bounded(keys: dict) -> None:
    with pytest.raises(JobError) as info:
        parse_job({**BASE, **keys}, source="job.yaml")
    assert len(str(info.value)) < 400, str(info.value)[:500]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"project": "my-project-123"}, "my-project-123"),
        ({"project": "example.com:my-project"}, "example.com:my-project"),
        ({"project": "123456789012"}, "123456789012"),
        ({"workload_tag": "my-export_2"}, "my-export_2"),
        ({"qps": 0.1}, 0.1),
        ({"endpoint": "http://[::1]:8080/"}, "http://[::1]:8080"),
    ],
)
def test_valid_forms_pass(keys: dict, expected: object) -> None:
    job = parse_job({**BASE, **keys})
    [(key, _)] = keys.items()
    assert getattr(job, key) == expected


def test_file_url_output_is_a_local_path() -> None:
    job = parse_job({**BASE, "output": "file:///data/out%20put.zarr"})
    assert job.output == "/data/out put.zarr"
    with pytest.raises(JobError, match="file:///absolute/path"):
        parse_job({**BASE, "output": "file://elsewhere/data/out.zarr"})


def test_bbox_outside_lonlat_hints_region_crs() -> None:
    with pytest.raises(JobError, match="did you mean region_crs"):
        parse_job({**BASE, "region": [600000, 5198720, 601280, 5200000]})
    # Metres with their CRS, and a box across the antimeridian, are fine.
    parse_job({**BASE, "region": {"bbox": [600000, 5198720, 601280, 5200000],
                                  "region_crs": "EPSG:32633"}})
    parse_job({**BASE, "region": [170, -10, 190, 10]})


def test_region_file_must_be_a_small_regular_file(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "area.fifo"
    os.mkfifo(fifo)  # nothing ever writes to it: reading it would block forever
    for name, expected in (("/dev/zero", "not a regular file"), (str(fifo), "not a regular file")):
        job = tmp_path / "job.yaml"
        job.write_text(f"asset: a/b\noutput: o.zarr\nregion: {name}\n")
        with pytest.raises(JobError) as info:
            load_job(job)
        assert expected in str(info.value) and name in str(info.value)


def test_region_file_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bulkpix.job

    monkeypatch.setattr(bulkpix.job, "REGION_FILE_MAX_BYTES", 1024)
    (tmp_path / "big.geojson").write_text(
        '{"type": "MultiPoint", "coordinates": [' + ", ".join(["[1, 2]"] * 500) + "]}"
    )
    (tmp_path / "job.yaml").write_text("asset: a/b\noutput: o.zarr\nregion: big.geojson\n")
    with pytest.raises(JobError, match="larger than 1 KiB"):
        load_job(tmp_path / "job.yaml")


def test_region_file_in_yaml_is_read_and_bombs_refused(tmp_path: Path) -> None:
    (tmp_path / "area.yaml").write_text("type: Point\ncoordinates: [1, 2]\n")
    (tmp_path / "bomb.yaml").write_text("type: Point\n" + _BOMB.replace("tile", "coordinates"))
    (tmp_path / "job.yaml").write_text("asset: a/b\noutput: o.zarr\nregion: area.yaml\n")
    job = load_job(tmp_path / "job.yaml")
    assert job.region is not None
    assert job.region.load_geometry(job.base_dir) == {"type": "Point", "coordinates": [1, 2]}
    (tmp_path / "job.yaml").write_text("asset: a/b\noutput: o.zarr\nregion: bomb.yaml\n")
    with pytest.raises(JobError, match="YAML bomb"):
        load_job(tmp_path / "job.yaml")
