"""earthengine-api's ``ee.data.getPixels`` in a thread pool over square tiles, mosaicked into
NumPy arrays: the approach Earth Engine's documentation suggests for bulk pixels.

The official client retries 429 and 5xx by itself.
"""

from __future__ import annotations

import concurrent.futures

import ee
import google.oauth2.credentials
import numpy as np

from benchmarks.clients._common import base_parser, report_delivery
from benchmarks.region import BAND_DTYPES, Window


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, required=True, help="tile side in pixels")
    parser.add_argument("--threads", type=int, default=40)
    args = parser.parse_args()
    region: Window = args.window
    ee.data.initialize(credentials=google.oauth2.credentials.Credentials(token="benchmark"),
                       cloud_api_base_url=args.url, project=args.asset.split("/")[1])
    mosaic = {band: np.zeros((region.height, region.width), dtype)
              for band, dtype in BAND_DTYPES.items()}

    def fetch(tile: Window) -> None:
        pixels = ee.data.getPixels({"assetId": args.asset, "fileFormat": "NUMPY_NDARRAY",
                                    "bandIds": list(BAND_DTYPES), "grid": tile.ee_grid()})
        rows = slice(tile.row_off - region.row_off, tile.row_off - region.row_off + tile.height)
        cols = slice(tile.col_off - region.col_off, tile.col_off - region.col_off + tile.width)
        for band in BAND_DTYPES:
            mosaic[band][rows, cols] = pixels[band]

    tiles = list(region.tiles(args.tile, args.tile))
    with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
        for future in [pool.submit(fetch, tile) for tile in tiles]:
            future.result()  # re-raise a failed tile
    report_delivery(args.result, mosaic, region, requests_planned=len(tiles))


if __name__ == "__main__":
    main()
