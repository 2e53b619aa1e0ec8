"""The chunk codecs a job may choose (``compression:``), and their levels.

Kept apart from ``zarr_store`` so the job file can be validated without importing zarr
(which costs a few hundred ms of start-up); the zarr codec objects are built only when an
output is created.

Only codecs of the Zarr v3 core and registered extensions are offered (``zstd``, ``blosc``
with lz4 inside, ``gzip``), so other readers (zarr-python, xarray, GDAL's Zarr driver) can
read what bulkpix writes. Blosc shuffles the bytes of multi-byte types before compressing
(byte shuffling: bit shuffling one-byte bands cost more CPU than it saved).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = [
    "CODECS",
    "DEFAULT_COMPRESSION",
    "Codec",
    "CompressionName",
    "codec_for",
    "zarr_compressors",
]

CompressionName = Literal["none", "zstd", "lz4", "gzip"]

# Chosen from `python -m benchmarks.write_path --codecs` and the throughput scenario's codec
# variants (benchmarks/RESULTS.md). On realistic bands (smooth fields plus noise) blosc-lz4
# with byte shuffling costs ~35% less CPU per GB than zstd level 1 and stores 1.40x smaller
# against zstd's 1.18x; on the emulator's synthetic bands and on random bytes the two cost
# about the same. Uncompressed costs the least CPU in zarr but the most in the kernel
# writing it all out (the whole process pays more), and the most disk.
DEFAULT_COMPRESSION: CompressionName = "lz4"


@dataclass(frozen=True)
class Codec:
    """One ``compression:`` choice: its name, levels allowed, and the level by default."""

    name: CompressionName
    min_level: int
    max_level: int
    default_level: int

    def check_level(self, level: int | None) -> int | None:
        """The level to use; ValueError (one line) for a level this codec has not."""
        if self.name == "none":
            if level is not None:
                raise ValueError("compression_level goes with a codec, not compression: none")
            return None
        if level is None:
            return self.default_level
        if not self.min_level <= level <= self.max_level:
            raise ValueError(
                f"compression_level for {self.name} must be {self.min_level} to "
                f"{self.max_level}, got {level}"
            )
        return level


CODECS: dict[str, Codec] = {
    "none": Codec("none", 0, 0, 0),
    "zstd": Codec("zstd", 1, 22, 1),
    # blosc's clevel (its block size and lz4's effort): 5, blosc's own default, cost no more
    # CPU than 1 in benchmarks/write_path.py and stored 1.40x / 42x against 1.39x / 18x.
    "lz4": Codec("lz4", 1, 9, 5),
    "gzip": Codec("gzip", 1, 9, 1),
}
assert set(CODECS) == set(get_args(CompressionName))


def codec_for(name: str, level: int | None = None) -> tuple[Codec, int | None]:
    """The codec called ``name`` and its checked level (ValueError for either unknown)."""
    codec = CODECS.get(name)
    if codec is None:
        raise ValueError(f"compression must be one of {', '.join(CODECS)}, got {name!r}")
    return codec, codec.check_level(level)


def zarr_compressors(name: str, level: int | None = None, zarr_format: int = 3) -> Any:
    """The ``compressors=`` argument of zarr's ``create_array`` for this choice."""
    codec, level = codec_for(name, level)
    if codec.name == "none" or level is None:
        return None
    if zarr_format == 2:  # v2 arrays take numcodecs' compressors
        from numcodecs import GZip, Zstd
        from numcodecs.blosc import Blosc

        if codec.name == "zstd":
            return Zstd(level=level)
        if codec.name == "lz4":
            return Blosc(cname="lz4", clevel=level, shuffle=Blosc.SHUFFLE)
        return GZip(level=level)
    # zarr is imported here, when an output is created, not when a job is loaded.
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    if codec.name == "zstd":
        return ZstdCodec(level=level)
    if codec.name == "lz4":
        return BloscCodec(cname="lz4", clevel=level, shuffle="shuffle")
    return GzipCodec(level=level)
