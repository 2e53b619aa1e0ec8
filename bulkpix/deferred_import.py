"""A module put in ``sys.modules`` whose code runs on its first real use.

The ``bulkpix`` command defers boto3: rasterio imports it (120-160 ms of CPU) only to learn
whether it is installed, and ``bulkpix run`` never uses it.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from typing import Any

__all__ = ["defer_import"]


class _DeferredModule(types.ModuleType):
    """A module whose code runs when an attribute it does not have yet is first asked for.

    Not the stdlib's ``importlib.util.LazyLoader``: its module loads on *any* attribute,
    and an ``import`` statement reads ``__spec__`` (to see whether the module is still
    initialising), so rasterio's ``import boto3`` would load boto3 there and then. Here
    ``__getattr__`` runs only for a missing attribute; ``__spec__``, ``__name__`` and
    ``__path__`` are set, so importing the name, or a submodule of it, costs nothing more.
    """

    def __getattr__(self, attr: str) -> Any:
        with _DEFERRED_LOCK:
            if type(self) is _DeferredModule and self.__name__ not in _DEFERRED_LOADING:
                _DEFERRED_LOADING.add(self.__name__)
                try:
                    spec = self.__spec__
                    assert spec is not None and spec.loader is not None  # defer_import checked
                    spec.loader.exec_module(self)
                except BaseException:
                    # As a failed import does: the name no longer resolves to a broken module.
                    sys.modules.pop(self.__name__, None)
                    raise
                finally:
                    _DEFERRED_LOADING.discard(self.__name__)
                    self.__class__ = types.ModuleType  # type: ignore[assignment]
        if type(self) is _DeferredModule:  # asked for by its own code while it loads
            raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")
        return getattr(self, attr)


# Re-entrant: the module's own code may ask for one of its attributes while it loads. Another
# thread asking for a name not yet set waits for the load to end (3.11's LazyLoader is not
# thread-safe on first access).
_DEFERRED_LOCK = threading.RLock()
_DEFERRED_LOADING: set[str] = set()


def defer_import(name: str) -> None:
    """Put a top-level module in ``sys.modules`` that runs its code on first real use.

    ``import name`` then binds it (and ``name is not None`` holds) without paying for it.
    Only in the ``bulkpix`` process (``entry``): ``sys.modules`` of a library user's process is
    not ours to change. Nothing if the module is not installed or is already imported.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _DeferredModule
    sys.modules[name] = module
