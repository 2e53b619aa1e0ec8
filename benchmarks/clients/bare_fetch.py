"""The bare fetch loop: the same getPixels calls with aiohttp at the same concurrency,
bodies read and thrown away. The ceiling for any client on this machine and emulator."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from benchmarks.clients._common import base_parser
from benchmarks.region import BAND_DTYPES, Window


async def fetch_all(url: str, asset: str, tiles: list[Window], concurrency: int) -> int:
    """Fetch every tile (retrying 429/5xx after a short pause); return body bytes received."""
    endpoint = f"{url}/v1/{asset}:getPixels"
    queue: asyncio.Queue[Window] = asyncio.Queue()
    for tile in tiles:
        queue.put_nowait(tile)
    received = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal received
        while not queue.empty():
            tile = queue.get_nowait()
            body = {"fileFormat": "NPY", "bandIds": list(BAND_DTYPES), "grid": tile.ee_grid()}
            while True:
                async with session.post(endpoint, json=body) as response:
                    payload = await response.read()
                if response.status == 200:
                    break
                if response.status != 429 and response.status < 500:
                    raise RuntimeError(f"{response.status}: {payload[:200]!r}")
                await asyncio.sleep(0.1)
            received += len(payload)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return received


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tiles", required=True,
                        help="JSON file: a list of [row_off, col_off, height, width]")
    parser.add_argument("--concurrency", type=int, default=40)
    args = parser.parse_args()
    with open(args.tiles, encoding="utf-8") as file:
        tiles = [Window(*t) for t in json.load(file)]
    received = asyncio.run(fetch_all(args.url, args.asset, tiles, args.concurrency))
    pixels = sum(t.pixels for t in tiles)
    pixel_bytes = sum(t.pixel_bytes for t in tiles)
    with open(args.result, "w", encoding="utf-8") as file:
        json.dump({"pixels": pixels, "pixel_bytes": pixel_bytes, "body_bytes": received,
                   "verified": False}, file)


if __name__ == "__main__":
    main()
