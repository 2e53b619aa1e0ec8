"""The Zarr output store and the record of finished tiles kept inside it."""
