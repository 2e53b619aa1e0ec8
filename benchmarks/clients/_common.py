"""What every client script shares: its arguments and how it reports what it delivered."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from benchmarks.region import Window, spot_check

__all__ = ["base_parser", "report_delivery"]


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", required=True, help="the emulator's base URL")
    parser.add_argument("--asset", required=True)
    parser.add_argument("--window", required=True, type=Window.parse,
                        help="row_off,col_off,height,width of the asset's native grid")
    parser.add_argument("--result", required=True, type=Path, help="where to write JSON")
    return parser


def report_delivery(path: Path, bands: Mapping[str, np.ndarray], window: Window,
                    **extra: object) -> None:
    """Check the mosaic against the synthetic truth, then write what was delivered."""
    spot_check(bands, window)
    pixels = window.pixels
    pixel_bytes = sum(array.nbytes for array in bands.values())
    path.write_text(json.dumps({"pixels": pixels, "pixel_bytes": pixel_bytes,
                                "verified": True, **extra}))
