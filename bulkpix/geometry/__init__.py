"""Pure pixel-grid geometry and tiling: no aiohttp, zarr or asyncio here."""
