"""The discovery document earthengine-api fetches on initialize.

earthengine-api ships one in its test data; it is served with its root and base URLs pointing
at the emulator. Its method paths are v1alpha ones, which the emulator serves too.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import importlib.util
import json
from typing import Any

__all__ = ["discovery_document", "packaged_ee_json"]

_RESOURCE = "tests/cloud_api_discovery_document.json"


@functools.cache
def packaged_ee_json(resource: str) -> dict[str, Any] | None:
    """A JSON file earthengine-api ships in its package (its test data), or None when
    earthengine-api is not installed (only its users ask for these)."""
    if importlib.util.find_spec("ee") is None:
        return None
    try:
        text = importlib.resources.files("ee").joinpath(resource).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        return None
    document = json.loads(text)
    return document if isinstance(document, dict) else None


def discovery_document(base_url: str) -> dict[str, Any] | None:
    """The document with the emulator as its root, or None when earthengine-api is absent."""
    packaged = packaged_ee_json(_RESOURCE)
    if packaged is None:
        return None
    document = copy.deepcopy(packaged)
    document["rootUrl"] = base_url.rstrip("/") + "/"
    document["baseUrl"] = base_url.rstrip("/") + "/"
    document["basePath"] = ""
    document["servicePath"] = ""
    return document
