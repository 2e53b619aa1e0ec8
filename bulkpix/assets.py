"""Earth Engine asset ids -> full resource names."""

from __future__ import annotations

__all__ = ["asset_name"]


def asset_name(asset_id: str) -> str:
    """``users/...`` -> earthengine-legacy, ``projects/...`` as is, anything else public."""
    asset_id = asset_id.strip().strip("/")
    if not asset_id:
        raise ValueError("empty asset id")
    if asset_id.startswith("projects/"):
        parts = asset_id.split("/")
        if len(parts) < 4 or parts[2] != "assets" or not all(parts):
            raise ValueError(
                f"asset name {asset_id!r} is not of the form projects/PROJECT/assets/ID"
            )
        return asset_id
    if asset_id.startswith("users/"):
        return f"projects/earthengine-legacy/assets/{asset_id}"
    return f"projects/earthengine-public/assets/{asset_id}"
