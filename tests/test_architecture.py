"""The layering the folder promises: pure geometry, and no emulator on the download path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(imports: str) -> set[str]:
    code = f"import sys\n{imports}\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(result.stdout.split())


@pytest.mark.parametrize("module", ["bulkpix.geometry.grid", "bulkpix.geometry.tiling"])
def test_geometry_imports_no_io(module: str) -> None:
    loaded = _modules_after(f"import {module}")
    for forbidden in ("aiohttp", "zarr", "asyncio"):
        assert forbidden not in loaded, f"{module} pulls in {forbidden}"


def test_download_path_never_imports_the_emulator() -> None:
    loaded = _modules_after(
        "import bulkpix, bulkpix.cli, bulkpix.pipeline, bulkpix.progress, bulkpix.status"
    )
    assert "bulkpix.pipeline" in loaded
    assert not [m for m in loaded if m.startswith("bulkpix.emulator")]


def test_every_shipped_config_is_a_valid_job() -> None:
    from bulkpix.job import load_job

    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for config in configs:
        job = load_job(config)
        assert job.resolved_items()
