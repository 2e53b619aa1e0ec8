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
