"""Where an output lives, and the names bulkpix keeps in it: checked before anything else.

Pure ``pathlib``: no zarr, so a run can refuse a bad output path at once, while the store's
libraries are still loading.
"""

from __future__ import annotations

import os
from pathlib import Path

from bulkpix.errors import JobError

__all__ = [
    "BATCH_KEY",
    "COORD_NAMES",
    "CUBE_COORD_NAMES",
    "GRID_MAPPING",
    "JOB_KEY",
    "METADATA_NAMES",
    "RECORD_DIR",
    "RESERVED_NAMES",
    "V2_ARRAY",
    "V2_ATTRS",
    "V2_CONSOLIDATED",
    "V2_GROUP",
    "V2_GROUP_FILES",
    "V3_METADATA",
    "check_output_location",
]

RECORD_DIR = ".bulkpix"  # the tile record lives here, see bulkpix.store.record
JOB_KEY = "job.json"  # an item's fingerprint, under {path}/.bulkpix/
BATCH_KEY = f"{RECORD_DIR}/batch.json"  # a batch root's record: the items it was made with

# Zarr's metadata documents: v3 keeps a node's in one; v2 (zarr_format: 2) in several.
V3_METADATA = "zarr.json"
V2_GROUP = ".zgroup"
V2_ARRAY = ".zarray"
V2_ATTRS = ".zattrs"
V2_CONSOLIDATED = ".zmetadata"
V2_GROUP_FILES = (V2_GROUP, V2_ATTRS, V2_CONSOLIDATED)
METADATA_NAMES = (V3_METADATA, V2_GROUP, V2_ARRAY, V2_ATTRS, V2_CONSOLIDATED)

# The nodes an item holds next to its band arrays: the coordinates and the CF grid mapping.
GRID_MAPPING = "spatial_ref"
COORD_NAMES = ("x", "y", GRID_MAPPING)
CUBE_COORD_NAMES = ("time", "image_id")  # a time cube's coordinates, besides COORD_NAMES
# Names no band may take: they would clash with the item's own nodes or Zarr's metadata.
RESERVED_NAMES = frozenset({*COORD_NAMES, RECORD_DIR, *METADATA_NAMES})


def check_output_location(output: str) -> None:
    """Refuse an output that cannot be ours before anything is written."""
    if "://" in output:
        return
    path = Path(output).expanduser()
    for link in (path, *path.parents):
        if link.is_symlink() and not link.exists():  # mkdir would say only "File exists"
            raise JobError(
                f"output {output}: {link} is a symbolic link to {os.readlink(link)}, which "
                "does not exist; create its target, or remove the link"
            )
    if path.is_file():
        raise JobError(f"output {output} is a file, not a Zarr store")
    if path.exists() and not path.is_dir():  # /dev/null, a FIFO, a socket
        raise JobError(f"output {output} exists and is not a directory")
    recorded = (path / BATCH_KEY).is_file() or (path / RECORD_DIR / JOB_KEY).is_file()
    # A .bulkpix folder alone may hold the lease of a run starting this very moment; what
    # it holds is judged by inspect_output.
    others = path.is_dir() and any(entry.name != RECORD_DIR for entry in path.iterdir())
    is_zarr = (path / V3_METADATA).is_file() or (path / V2_GROUP).is_file()
    if others and not is_zarr and not recorded:
        raise JobError(f"output {output} exists and is not a Zarr store; choose another path")
    if not path.exists():
        parent = path.parent if str(path.parent) else Path(".")
        probe = parent
        while not probe.exists():
            probe = probe.parent
        if probe.is_file():
            raise JobError(f"output {output}: {probe} is a file, not a directory")
