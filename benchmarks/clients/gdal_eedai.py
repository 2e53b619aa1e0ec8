"""GDAL's EEDAI driver (through rasterio) reads the window into NumPy, band by band.

GDAL issues its own getPixels calls, one at a time, merging neighbouring 256 px blocks.
"""

from __future__ import annotations

import rasterio
from rasterio.windows import Window as RasterioWindow

from benchmarks.clients._common import base_parser, report_delivery


def main() -> None:
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    w = args.window
    window = RasterioWindow(w.col_off, w.row_off, w.width, w.height)
    # EEDA_URL needs the trailing slash; any bearer token will do for the emulator.
    with rasterio.Env(EEDA_URL=f"{args.url}/v1/", EEDA_BEARER="benchmark"), \
            rasterio.open(f"EEDAI:{args.asset}") as dataset:
        # rasterio reads several bands at once only when they share a type.
        bands = {name: dataset.read(index, window=window)
                 for index, name in zip(dataset.indexes, dataset.descriptions, strict=True)}
    report_delivery(args.result, bands, w)


if __name__ == "__main__":
    main()
