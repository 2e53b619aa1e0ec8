"""Start-up loads only what the job needs, when it needs it.

Each check runs in a fresh interpreter and looks at ``sys.modules``: which libraries were
imported, and which were not yet imported when the first request went out. Never a
wall-clock assertion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bulkpix.emulator import SyntheticAsset
from tests.conftest import emulator_thread, write_job

ROOT = Path(__file__).resolve().parents[1]
ASSET = "projects/demo/assets/src"

# What the metadata call does not need; all of it loads after the call is on its way.
STORE_SIDE = (
    "zarr", "numpy", "rasterio", "bulkpix.planning", "bulkpix.geometry",
    "bulkpix.store.zarr_store",
)
GOOGLE_AUTH = ("google.auth", "google.oauth2", "cryptography", "requests")


def _python(code: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _loaded(names: tuple[str, ...]) -> str:
    return f"[m for m in {names!r} if m in sys.modules]"


def test_importing_the_cli_loads_no_store_auth_or_crs_library() -> None:
    loaded = _python(
        f"import json, sys, bulkpix.cli; print(json.dumps({_loaded(STORE_SIDE + GOOGLE_AUTH)}))"
    )
    assert loaded == []


def test_importing_the_pipeline_leaves_the_store_side_for_later() -> None:
    loaded = _python(
        "import json, sys, bulkpix.cli, bulkpix.pipeline, bulkpix.progress; "
        f"print(json.dumps({_loaded(STORE_SIDE + GOOGLE_AUTH)}))"
    )
    assert loaded == []


def test_a_job_without_credentials_never_loads_google_auth(tmp_path: Path) -> None:
    """A whole `bulkpix run` of a `credentials: none` job: google-auth (and cryptography
    under it) is never imported, and the store side was not yet imported when the asset
    metadata call went out, but was by the end (the output is written)."""
    code = """
import json, sys
from bulkpix.ee import client

at_first_request = []
original = client.EEClient.get_asset

async def get_asset(self, name):
    at_first_request.append(sorted(m for m in STORE_SIDE if m in sys.modules))
    return await original(self, name)

client.EEClient.get_asset = get_asset
from bulkpix.cli import main

code = main(["run", "--quiet", sys.argv[1]])
print(json.dumps({"code": code, "at_first_request": at_first_request[0],
                  "google": LOADED_GOOGLE, "store_side": LOADED_STORE}))
"""
    code = (
        code.replace("STORE_SIDE", repr(STORE_SIDE))
        .replace("LOADED_GOOGLE", _loaded(GOOGLE_AUTH))
        .replace("LOADED_STORE", _loaded(STORE_SIDE))
    )
    with emulator_thread(synthetic={ASSET: SyntheticAsset(width=300, height=200)}) as emu:
        job = write_job(
            tmp_path / "job.yaml",
            asset=ASSET,
            bands=["u8"],
            output=str(tmp_path / "out.zarr"),
            endpoint=emu.url,
            credentials="none",
            chunk=128,
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(job)],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    assert report["google"] == []
    assert report["at_first_request"] == []
    assert sorted(report["store_side"]) == sorted(STORE_SIDE)
    assert (tmp_path / "out.zarr" / "u8" / "zarr.json").is_file()


def test_the_command_exits_with_mains_code_and_all_it_printed(tmp_path: Path) -> None:
    """`python -m bulkpix` skips the interpreter's teardown (os._exit): the exit code and
    everything printed, to a pipe (block-buffered), still come out."""
    with emulator_thread(synthetic={ASSET: SyntheticAsset(width=300, height=200)}) as emu:
        job = write_job(
            tmp_path / "job.yaml", asset=ASSET, output=str(tmp_path / "out.zarr"),
            endpoint=emu.url, credentials="none", chunk=128,
        )
        planned = subprocess.run(
            [sys.executable, "-m", "bulkpix", "plan", str(job)],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )
    assert planned.returncode == 0, planned.stderr
    assert "size       300 x 200 px" in planned.stdout, planned.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "bulkpix", "run", str(tmp_path / "missing.yaml")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert missing.returncode == 2
    assert "cannot read the job file" in missing.stderr



# Jobs that name a CRS: the check of each code is a lookup in PROJ's database, so neither
# rasterio nor numpy loads before the asset metadata call (planning loads them after it).
CRS_JOBS = {
    "region_crs": {
        "region": {"bbox": [600500, 5198500, 602500, 5199500], "region_crs": "EPSG:32633"},
    },
    "crs and scale": {"crs": "EPSG:32633", "scale": 10, "region": [16.32, 46.93, 16.34, 46.94]},
}


@pytest.mark.parametrize("keys", CRS_JOBS.values(), ids=list(CRS_JOBS))
def test_a_job_naming_a_crs_loads_no_rasterio_before_the_first_request(
    tmp_path: Path, keys: dict
) -> None:
    code = """
import json, sys
from bulkpix.ee import client

at_first_request = []
original = client.EEClient.get_asset

async def get_asset(self, name):
    at_first_request.append([m for m in ("rasterio", "numpy") if m in sys.modules])
    return await original(self, name)

client.EEClient.get_asset = get_asset
import bulkpix.pipeline

at_plan = []
original_plan = bulkpix.pipeline.plan_items

def plan_items(*args, **kwargs):
    plans = original_plan(*args, **kwargs)
    at_plan.append([m for m in ("rasterio", "zarr") if m in sys.modules])
    return plans

bulkpix.pipeline.plan_items = plan_items
from bulkpix.cli import main

code = main(["run", "--quiet", sys.argv[1]])
print(json.dumps({"code": code, "at_first_request": at_first_request[0], "at_plan": at_plan[0]}))
"""
    output = tmp_path / "out.zarr"
    with emulator_thread(synthetic={ASSET: SyntheticAsset(width=300, height=200)}) as emu:
        job = write_job(
            tmp_path / "job.yaml", asset=ASSET, bands=["u8"], output=str(output),
            endpoint=emu.url, credentials="none", chunk=128, **keys,
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(job)],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 0 and report["at_first_request"] == []
    # A new output's tiles are planned, and requested, before zarr loads (it loads while
    # they are in flight); with region and asset in one CRS, before rasterio too.
    assert "zarr" not in report["at_plan"]
    if "region_crs" in keys.get("region", {}):
        assert report["at_plan"] == []
    # The output holds the asset's own pixels where its grid says it lies (the native
    # 10 m grid in EPSG:32633 at 600000, 5200000).
    import numpy as np
    import zarr

    from bulkpix.emulator.synthetic import synthetic_pixels

    group = zarr.open_group(output, mode="r")
    grid = dict(group.attrs)["bulkpix"]["grid"]
    assert grid["crs"] == "EPSG:32633"
    a, _, c, _, e, f = grid["transform"]
    assert (a, e) == (10, -10)
    row, col = round((5200000 - f) / 10), round((c - 600000) / 10)
    rows, cols = np.arange(row, row + grid["height"]), np.arange(col, col + grid["width"])
    assert grid["height"] > 50 and grid["width"] > 50
    np.testing.assert_array_equal(group["u8"][:], synthetic_pixels(0, rows, cols))


def test_the_crs_module_alone_loads_no_numpy_and_the_package_names_still_resolve() -> None:
    report = _python(
        "import json, sys, bulkpix.geometry.crs; "
        "early = [m for m in ('numpy', 'rasterio', 'affine') if m in sys.modules]; "
        "import bulkpix.geometry as g; "
        "missing = [n for n in g.__all__ if getattr(g, n) is not getattr("
        "sys.modules['bulkpix.geometry.' + g._HOMES[n]], n)]; "
        "print(json.dumps({'early': early, 'missing': missing, 'n': len(g.__all__)}))"
    )
    assert report == {"early": [], "missing": [], "n": 18}


def test_the_store_side_loads_with_the_metadata_call_only_for_an_output_that_exists(
    tmp_path: Path,
) -> None:
    """An output that exists is inspected before planning: zarr loads on the thread beside
    the metadata call. A new output's zarr loads later, beside its first tile requests."""
    code = """
import json, sys
import bulkpix.pipeline

after_metadata = []
original = bulkpix.pipeline.resolve_sources

async def resolve_sources(*args, **kwargs):
    sources = await original(*args, **kwargs)
    after_metadata.append("zarr" in sys.modules)
    return sources

bulkpix.pipeline.resolve_sources = resolve_sources
from bulkpix.cli import main

code = main(["run", "--quiet", sys.argv[1]])
print(json.dumps({"code": code, "zarr_after_metadata": after_metadata[0]}))
"""
    output = tmp_path / "out.zarr"
    reports = []
    with emulator_thread(synthetic={ASSET: SyntheticAsset(width=300, height=200)}) as emu:
        job = write_job(
            tmp_path / "job.yaml", asset=ASSET, bands=["u8"], output=str(output),
            endpoint=emu.url, credentials="none", chunk=128,
        )
        for _ in range(2):  # a new output, then the same output again
            result = subprocess.run(
                [sys.executable, "-c", code, str(job)],
                capture_output=True, text=True, cwd=ROOT, timeout=120,
            )
            assert result.returncode == 0, result.stderr
            reports.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert reports == [
        {"code": 0, "zarr_after_metadata": False},
        {"code": 0, "zarr_after_metadata": True},
    ]


# boto3's own modules: loaded only when something uses boto3, not when rasterio imports it.
BOTO3_LOADED = ("boto3.session", "botocore", "s3transfer")


def test_the_command_does_not_load_boto3_when_rasterio_imports_it(tmp_path: Path) -> None:
    """A whole `bulkpix run` through the command's entry (what `bulkpix` and `python -m
    bulkpix` call) of a job naming a CRS, so rasterio is imported: rasterio still finds
    boto3 installed, but none of boto3's code ran."""
    code = """
import atexit, json, sys

def report():  # entry() runs the exit handlers before it exits
    session = sys.modules.get("rasterio.session")
    print(json.dumps({
        "rasterio": session is not None,
        "boto3_found": session is not None and session.boto3 is not None,
        "loaded": [m for m in BOTO3_LOADED if m in sys.modules],
    }))

atexit.register(report)
sys.argv = ["bulkpix", "run", "--quiet", sys.argv[1]]
from bulkpix.cli import entry

entry()
""".replace("BOTO3_LOADED", repr(BOTO3_LOADED))
    with emulator_thread(synthetic={ASSET: SyntheticAsset(width=300, height=200)}) as emu:
        job = write_job(
            tmp_path / "job.yaml", asset=ASSET, bands=["u8"], output=str(tmp_path / "out.zarr"),
            endpoint=emu.url, credentials="none", chunk=128, **CRS_JOBS["crs and scale"],
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(job)],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"rasterio": True, "boto3_found": True, "loaded": []}


def test_rasterios_aws_session_still_loads_boto3_on_first_use(tmp_path: Path) -> None:
    """With boto3 deferred as the command does it, rasterio's AWS path works: the first
    use of an attribute runs boto3 for real, in the module rasterio and sys.modules hold."""
    code = f"""
import json, os, sys
from bulkpix.deferred_import import defer_import

defer_import("boto3")
import rasterio.session
from rasterio.session import AWSSession, Session

before = [m for m in {BOTO3_LOADED!r} if m in sys.modules]
kind = Session.cls_from_path("s3://bucket/key.tif").__name__  # only asks `boto3 is not None`
still_before = [m for m in {BOTO3_LOADED!r} if m in sys.modules]
session = AWSSession(
    aws_access_key_id="id", aws_secret_access_key="secret", region_name="eu-west-1"
)
import boto3
print(json.dumps({{
    "before": before, "still_before": still_before, "kind": kind,
    "after": [m for m in {BOTO3_LOADED!r} if m in sys.modules],
    "options": session.get_credential_options(),
    "boto3_session": type(session._session).__module__ + "." + type(session._session).__name__,
    "same_module": rasterio.session.boto3 is boto3 is sys.modules["boto3"],
    "plain_module": type(boto3) is type(os),
}}))
"""
    # No profile or config file of this machine's is read.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "before": [], "still_before": [], "kind": "AWSSession",
        "after": list(BOTO3_LOADED),
        "options": {
            "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_REGION": "eu-west-1",
        },
        "boto3_session": "boto3.session.Session",
        "same_module": True,
        "plain_module": True,
    }


def test_a_deferred_module_runs_once_on_first_use_and_a_broken_one_does_not_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bulkpix.deferred_import import defer_import

    package = tmp_path / "deferred_pkg"
    package.mkdir()
    # Each run of the package's code is counted in a module the test holds.
    (package / "__init__.py").write_text(
        "import deferred_counter\n"
        "deferred_counter.runs += 1\n"
        "from deferred_pkg.sub import VALUE\n"  # its own submodule, while it loads
    )
    (package / "sub.py").write_text("VALUE = 42\n")
    (tmp_path / "deferred_counter.py").write_text("runs = 0\n")
    (tmp_path / "deferred_broken.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("deferred_pkg", "deferred_pkg.sub", "deferred_counter", "deferred_broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import deferred_counter

    defer_import("deferred_pkg")
    defer_import("not_installed_anywhere")
    assert "not_installed_anywhere" not in sys.modules
    import deferred_pkg

    assert deferred_pkg is sys.modules["deferred_pkg"]
    assert deferred_counter.runs == 0
    assert deferred_pkg.VALUE == 42
    assert deferred_counter.runs == 1
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        deferred_pkg.missing  # noqa: B018
    assert deferred_pkg.VALUE == 42 and deferred_counter.runs == 1

    defer_import("deferred_broken")
    import deferred_broken

    with pytest.raises(ImportError, match="broken on purpose"):
        deferred_broken.anything  # noqa: B018
    assert "deferred_broken" not in sys.modules
