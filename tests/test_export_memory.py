"""`bulkpix export` streams: the whole process's peak memory (GDAL's included, which
tracemalloc does not see) stays far below the image's size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.outputs import make_output, ramp

ROOT = Path(__file__).resolve().parent.parent

# Runs the export in a fresh interpreter and prints its peak RSS. VmHWM is read from the
# process itself: it starts afresh at exec, whereas getrusage's maxrss would count the
# test process it was started from.
_CHILD = """
import sys
from bulkpix.cli import main
code = main(["export", sys.argv[1], sys.argv[2]])
with open("/proc/self/status") as status:
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(code, peak_kb)
"""


@pytest.mark.slow
def test_export_peak_memory_stays_far_below_the_image(tmp_path: Path) -> None:
    side = 8192
    output = make_output(
        tmp_path / "big.zarr", [("A", "float32"), ("B", "float32")], side, side, ramp,
        chunk=1024, strip=1024,
    )
    image_mb = side * side * 4 * 2 / 2**20  # 512 MB of pixels
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(output), str(tmp_path / "big.tif")],
        capture_output=True, text=True, cwd=ROOT, timeout=600, check=True,
    )
    code, peak_kb = (int(v) for v in done.stdout.split()[-2:])
    assert code == 0, done.stderr
    peak_mb = peak_kb / 1024
    # Measured here: about 150 MB, most of it the interpreter, numpy, zarr and GDAL.
    assert peak_mb < image_mb / 2, (peak_mb, image_mb)
    assert (tmp_path / "big.tif").stat().st_size > 0
