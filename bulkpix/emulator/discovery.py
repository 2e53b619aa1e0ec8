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

__all__ = ["discovery_document"]

_RESOURCE = "tests/cloud_api_discovery_document.json"


@functools.cache
def _packaged_document() -> dict[str, Any] | None:
    if importlib.util.find_spec("ee") is None:
        return None
    try:
        text = importlib.resources.files("ee").joinpath(_RESOURCE).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        return None
    return json.loads(text)


def discovery_document(base_url: str) -> dict[str, Any] | None:
    """The document with the emulator as its root, or None when earthengine-api is absent."""
    packaged = _packaged_document()
    if packaged is None:
        return None
    document = copy.deepcopy(packaged)
    document["rootUrl"] = base_url.rstrip("/") + "/"
    document["baseUrl"] = base_url.rstrip("/") + "/"
    document["basePath"] = ""
    document["servicePath"] = ""
    return document
