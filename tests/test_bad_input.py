"""Bad input: one clear line, the right exit code, no traceback, nothing written."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bulkpix.cli import main
from tests.conftest import emulator_thread, mixed_arrays, write_job, write_tif

ASSET = "projects/demo/assets/src"


def _tree_digest(path: Path) -> str:
    """A digest of every file under path (names and bytes), to prove nothing changed."""
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(path.read_bytes())
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _check_refusal(
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    *,
    code: int,
    expected: str,
    output: Path,
) -> None:
    before = _tree_digest(output) if output.exists() else None
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bulkpix: error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err
    if before is None:
        assert not output.exists(), "a refused job must not create its output"
    else:
        assert _tree_digest(output) == before, "a refused job must not change its output"


# Cases that need no server: (name, job keys or a writer of the job file, expected text).
def _keys(**keys: Any) -> Callable[[Path, Path], Path]:
    def make(tmp_path: Path, output: Path) -> Path:
        job = {"asset": ASSET, "output": str(output), "endpoint": "emulator", **keys}
        return write_job(tmp_path / "job.yaml", **job)

    return make


def _text(text: str) -> Callable[[Path, Path], Path]:
    def make(tmp_path: Path, output: Path) -> Path:
        path = tmp_path / "job.yaml"
        path.write_text(text.replace("OUTPUT", str(output)))
        return path

    return make


def _missing_job_file(tmp_path: Path, output: Path) -> Path:
    return tmp_path / "no-such-job.yaml"


def _binary_job_file(tmp_path: Path, output: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_bytes(b"asset: \xff\xfe\x00garbage\n")
    return path


def _region_file_is_a_directory(tmp_path: Path, output: Path) -> Path:
    (tmp_path / "area.geojson").mkdir()
    return _keys(region="area.geojson")(tmp_path, output)


OFFLINE_CASES = [
    ("missing job file", _missing_job_file, "cannot read the job file"),
    ("broken yaml", _text("asset: [x\noutput: OUTPUT\n"), "broken YAML at line"),
    ("not a mapping", _text("- a\n- b\n"), "must be a YAML mapping"),
    ("unknown key", _keys(colour="red"), "unknown key 'colour'"),
    ("wrong type", _keys(concurrency="many"), "key 'concurrency'"),
    ("zero concurrency", _keys(concurrency=0), "greater than 0"),
    ("negative qps", _keys(qps=-5), "key 'qps'"),
    ("negative scale", _keys(scale=-10), "key 'scale'"),
    ("zero chunk", _keys(chunk=0), "key 'chunk'"),
    ("unknown crs", _keys(crs="EPSG:999999", scale=10), "unknown CRS"),
    ("tile not chunk multiple", _keys(chunk=256, tile=[300, 256]), "multiples of chunk"),
    ("bad file format", _keys(file_format="TIFF"), "key 'file_format'"),
    ("bad endpoint", _keys(endpoint="ftp://example"), "key 'endpoint'"),
    ("missing output", _text(f"asset: {ASSET}\nendpoint: emulator\n"), "key 'output' is required"),
    ("missing asset", _text("output: OUTPUT\n"), "asset is missing"),
    ("bbox order", _keys(region={"bbox": [10, 0, 5, 1]}), "xmin < xmax"),
    ("empty bands", _keys(bands=[]), "key 'bands'"),
    ("repeated bands", _keys(bands=["B1", "B1"]), "must not repeat"),
    ("bad asset name", _keys(asset="projects/only"), "projects/PROJECT/assets/ID"),
    ("region file missing", _keys(region="nowhere.geojson"), "cannot read it"),
    ("bad synthetic size", _keys(emulator={"synthetic": {ASSET: "big"}}), "WIDTHxHEIGHT"),
    ("not utf-8", _binary_job_file, "not a text file"),
    (
        "emulator asset file missing",
        _keys(emulator={"assets": {ASSET: ["missing.tif"]}}),
        "emulator: asset projects/demo/assets/src: cannot open",
    ),
    ("key given twice", _text("asset: a/b\noutput: OUTPUT\nasset: c/d\n"), "given twice"),
    ("region file is a directory", _region_file_is_a_directory, "is a directory"),
    ("malformed wkt crs", _keys(crs='PROJCS["broken"]', scale=10), "unknown CRS"),
    ("reserved item name", _keys(items=[{"name": "zarr.json", "asset": ASSET}]), "reserved"),
    (
        "duplicate item names",
        _keys(items=[{"name": "a", "asset": ASSET}, {"name": "a", "asset": ASSET}]),
        "item names repeat",
    ),
    # The adversarial review's cases (issue #9): each one a traceback or a hang before.
    ("header injection in project", _keys(project="p\r\nX-Evil: 1"), "not a Cloud project id"),
    ("project too short", _keys(project="abc"), "not a Cloud project id"),
    ("nul in output", _text("asset: a/b\nendpoint: emulator\noutput: \"o\\0ut.zarr\"\n"),
     "control characters"),
    ("endpoint port out of range", _keys(endpoint="http://127.0.0.1:99999"), "Port out of range"),
    ("endpoint with broken ipv6", _keys(endpoint="http://[::1"), "not a valid URL"),
    # Written as text: PyYAML's pure-Python emitter would take most of a minute over 50 MB.
    ("50 MB workload tag",
     _text(f"asset: {ASSET}\noutput: OUTPUT\nendpoint: emulator\nworkload_tag: "
           + "x" * 50_000_000 + "\n"),
     "larger than 1 MiB"),
    ("long workload tag", _keys(workload_tag="x" * 64), "not a workload tag"),
    ("workload tag in capitals", _keys(workload_tag="My-Export"), "not a workload tag"),
    ("vanishing qps", _keys(qps=1e-300), "key 'qps'"),
    ("a timeout of ages", _keys(timeouts={"total": 1e300}), "key 'timeouts.total'"),
    ("a vanishing timeout", _keys(timeouts={"read": 1e-300}), "key 'timeouts.read'"),
    ("a backoff of ages", _keys(retries={"backoff_cap": 1e300}), "key 'retries.backoff_cap'"),
    ("emulator qps vanishing", _keys(emulator={"max_qps": 1e-300}), "key 'emulator.max_qps'"),
    ("emulator service of ages", _keys(emulator={"service_base_s": 1e300}),
     "key 'emulator.service_base_s'"),
    ("output is a device", _keys(output="/dev/null"), "exists and is not a directory"),
    ("emulator synthetic of absurd size",
     _keys(emulator={"synthetic": {ASSET: "99999999999x99999999999"}}), "px a side"),
    ("utm metres as lon/lat", _keys(region=[600000, 5198720, 601280, 5200000]),
     "did you mean region_crs"),
    ("region file is /dev/zero", _keys(region="/dev/zero"), "not a regular file"),
    ("nul in region file", _keys(region="/tmp/a\0b"), "control characters"),
    ("nul in credentials", _keys(credentials="/tmp/a\0b"), "control characters"),
    ("crlf in asset", _keys(asset="projects/demo/assets/x\r\nX-Evil: 1"), "not an asset id"),
    ("query in asset", _keys(asset="projects/demo/assets/x?alt=media"), "not an asset id"),
    ("dot-dot in asset", _keys(asset="projects/demo/assets/../../v1/x"), "not an asset id"),
    ("control in band", _keys(bands=["B1\r\nX: 1"]), "control characters"),
]


@pytest.mark.parametrize(
    ("name", "make", "expected"), OFFLINE_CASES, ids=[c[0] for c in OFFLINE_CASES]
)
def test_offline_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, make: Any, expected: str
) -> None:
    output = tmp_path / "out.zarr"
    job = make(tmp_path, output)
    _check_refusal(capsys, ["run", str(job)], code=2, expected=expected, output=output)


def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_output_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out.zarr"
    output.write_text("precious")
    job = _keys()(tmp_path, output)
    _check_refusal(capsys, ["run", str(job)], code=2, expected="is a file", output=output)
    assert output.read_text() == "precious"


def test_output_is_a_foreign_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out.zarr"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    job = _keys()(tmp_path, output)
    _check_refusal(capsys, ["run", str(job)], code=2, expected="is not a Zarr store", output=output)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "cannot read"), ("{not json", "not a valid"), ('{"type": "mystery"}', "mystery")],
    ids=["missing key file", "garbage key file", "unknown key type"],
)
def test_credential_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, expected: str
) -> None:
    key = tmp_path / "key.json"
    if content is not None:
        key.write_text(content)
    output = tmp_path / "out.zarr"
    job = _keys(credentials=str(key))(tmp_path, output)
    before = capsys.readouterr()
    del before
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert str(key) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert expected.lower() in err.lower()
    assert not output.exists()


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo"])
def test_credential_file_must_be_a_regular_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    import os

    key = Path(kind)
    if kind == "fifo":
        key = tmp_path / "key.fifo"
        os.mkfifo(key)  # nothing writes to it: reading it would block the run forever
    output = tmp_path / "out.zarr"
    job = _keys(credentials=str(key))(tmp_path, output)
    _check_refusal(capsys, ["run", str(job)], code=2, expected="not a regular file", output=output)


def test_plain_http_with_credentials_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "user.json"
    key.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "cid",
                "client_secret": "SECRET-VALUE",
                "refresh_token": "REFRESH-VALUE",
            }
        )
    )
    output = tmp_path / "out.zarr"
    job = write_job(
        tmp_path / "job.yaml",
        asset=ASSET,
        output=str(output),
        endpoint="http://earthengine.example.com",
        credentials=str(key),
    )
    _check_refusal(capsys, ["run", str(job)], code=2, expected="plain HTTP", output=output)


# Cases that need the server: the asset's metadata decides.
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("src")
    arrays = mixed_arrays(200, 300)
    paths = [str(write_tif(folder / f"b{i}.tif", [a])) for i, a in enumerate(arrays)]
    with emulator_thread(
        assets={ASSET: paths, "projects/demo/assets/secret": paths},
        forbidden={"projects/demo/assets/secret"},
    ) as emu:
        yield emu


ONLINE_CASES = [
    ("asset not found", {"asset": "projects/demo/assets/nothing"}, 1, "404"),
    ("access denied", {"asset": "projects/demo/assets/secret"}, 1, "403"),
    ("band the asset lacks", {"bands": ["B1", "NIR"]}, 2, "has no band NIR"),
    (
        "region misses the asset",
        {"region": {"bbox": [100.0, 10.0, 100.1, 10.1]}},
        2,
        "does not overlap",
    ),
    (
        "region misses the asset: both extents shown",
        {"region": {"bbox": [100.0, 10.0, 100.1, 10.1]}},
        2,
        "region [100, 10, 100.1, 10.1], asset [16.31",
    ),
    (
        "lat/lon swapped",
        {"region": {"bbox": [46.93, 16.32, 46.94, 16.34]}},
        2,
        "with x and y swapped it would",
    ),
    (
        "utm metres in a geojson region without region_crs",
        {"region": {"type": "Point", "coordinates": [600500, 5199500]}},
        2,
        "did you mean region_crs",
    ),
    ("other crs without scale", {"crs": "EPSG:3857"}, 2, "'scale' is required"),
    (
        "region that is not geojson",
        {"region": {"type": "Foo", "coordinates": [1, 2]}},
        2,
        "cannot make the output grid",
    ),
    ("degenerate scale", {"crs": "EPSG:4326", "scale": 1e-300}, 2, "cannot make the output grid"),
    ("absurd grid", {"crs": "EPSG:4326", "scale": 1e-9}, 2, "px a side bulkpix handles"),
    ("geotiff with mixed types", {"file_format": "GEO_TIFF"}, 2, "one data type"),
]


@pytest.mark.parametrize(
    ("name", "keys", "code", "expected"), ONLINE_CASES, ids=[c[0] for c in ONLINE_CASES]
)
def test_online_refusals(
    server: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    keys: dict[str, Any],
    code: int,
    expected: str,
) -> None:
    output = tmp_path / "out.zarr"
    job = write_job(
        tmp_path / "job.yaml",
        **{
            "asset": ASSET,
            "output": str(output),
            "endpoint": server.url,
            "credentials": "none",
            **keys,
        },
    )
    start = len(server.log)
    _check_refusal(capsys, ["run", str(job)], code=code, expected=expected, output=output)
    new = server.log[start:]
    assert not [r for r in new if r["op"] == "get_pixels"], "no pixels fetched for bad input"
    assert len([r for r in new if r["op"] == "get_asset"]) == 1, "one metadata call, not retried"


def test_output_holding_another_job(
    server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.zarr"
    keys = {"asset": ASSET, "output": str(output), "endpoint": server.url, "credentials": "none"}
    job = write_job(tmp_path / "job.yaml", **keys, bands=["B1"])
    assert main(["run", "--quiet", str(job)]) == 0
    capsys.readouterr()
    changed = write_job(tmp_path / "job2.yaml", **keys, bands=["B1", "B2"])
    _check_refusal(
        capsys, ["run", str(changed)], code=2, expected="holds a different job", output=output
    )
