"""One CRS value: parsed once, compared by meaning. odc-geo's ``CRS`` is the model.

Every CRS bulkpix meets (the job's ``crs`` and ``region_crs``, an asset's ``crsCode`` or
``crsWkt``) becomes a :class:`CRS` through :meth:`CRS.of`, the one place a CRS string is
parsed. The same text gives the same object, so a string is parsed at most once per process
however many grids, regions and comparisons use it.

Parsing waits until something needs it (the WKT, a reprojection, comparing two different
texts): a grid in a CRS PROJ does not know (Earth Engine's ``SR-ORG:6974``) can still be
sent back to the service by its code, and rasterio (GDAL and PROJ behind it) is imported on
the first parse, not with this module.
"""

from __future__ import annotations

import os
import re
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    import rasterio.crs

__all__ = ["CRS", "CRSLike"]

# An authority code such as EPSG:32633, ESRI:54009 or SR-ORG:6974 (Earth Engine's crsCode).
_AUTHORITY_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*:[A-Za-z0-9_.]+$")


@final
class CRS:
    """An immutable coordinate reference system.

    ``text`` is what it was given as, kept verbatim (it goes into fingerprints and is what
    the service is sent back); ``wkt`` and ``epsg`` are worked out from it. Two CRSs are
    equal when they name the same CRS (``EPSG:4326`` equals its WKT); a string compares
    equal when it parses to the same CRS. Build one with ``CRS.of``.
    """

    text: str

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"a CRS must be a non-empty string, got {text!r}")
        object.__setattr__(self, "text", text)

    @staticmethod
    def of(value: CRSLike) -> CRS:
        """The CRS of ``value`` (a CRS as is, or an authority code, WKT or PROJ string), one
        object per text. ``ValueError`` for an empty text now, and for one that names no
        CRS when it is first parsed (``to_rasterio``, ``wkt``, ...)."""
        if isinstance(value, CRS):
            return value
        return _interned(value)

    # -- what it is ---------------------------------------------------------------------

    @cached_property
    def _parsed(self) -> rasterio.crs.CRS | ValueError:
        # A failure is kept too: a text that names no CRS is not parsed again either.
        try:
            return _parse(self.text)
        except ValueError as exc:
            return exc

    @property
    def _native(self) -> rasterio.crs.CRS:
        parsed = self._parsed
        if isinstance(parsed, ValueError):
            raise ValueError(str(parsed))
        return parsed

    @cached_property
    def wkt(self) -> str:
        """The CRS as WKT, what the output stores; ``ValueError`` when PROJ cannot write
        it out (``EPSG:0``)."""
        from rasterio.errors import CRSError

        try:
            return str(self._native.to_wkt())
        except CRSError as exc:
            raise ValueError(f"cannot describe CRS {self.text!r}: {exc}") from None

    @cached_property
    def epsg(self) -> int | None:
        """The EPSG code, when the CRS is (close enough to) one; else None."""
        code = self._native.to_epsg()
        return None if code is None else int(code)

    @property
    def authority_code(self) -> str | None:
        """``text`` in Earth Engine's ``crsCode`` form (``EPSG:32633``), when it is one."""
        text = self.text.strip()
        return text.upper() if _AUTHORITY_CODE.match(text) else None

    @property
    def is_geographic(self) -> bool:
        return bool(self._native.is_geographic)

    @property
    def linear_units(self) -> str:
        return str(self._native.linear_units or "unknown")

    def to_rasterio(self) -> rasterio.crs.CRS:
        """The parsed rasterio CRS, for rasterio's own functions (no second parse);
        ``ValueError`` naming the text when it names no CRS."""
        return self._native

    # -- a value --------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            try:
                other = CRS.of(other)
            except ValueError:
                return False
        if not isinstance(other, CRS):
            return NotImplemented
        if self is other or self.text == other.text:
            return True
        try:
            return bool(self._native == other._native)
        except ValueError:
            return False  # a text that names no CRS equals only itself

    def __hash__(self) -> int:
        # Equal CRSs may be spelt differently: hash what they share, their EPSG code (a
        # text that names no CRS equals only itself: its own text will do).
        try:
            return hash(self.epsg)
        except ValueError:
            return hash(self.text)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"CRS is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"CRS is immutable: cannot delete {name!r}")

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (CRS.of, (self.text,))

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        shown = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return f"CRS({shown!r})"


CRSLike = CRS | str
"""A CRS, or a string naming one (authority code, WKT or PROJ string)."""


@lru_cache(maxsize=256)
def _interned(text: str) -> CRS:
    # Parsing WKT is slow and the same few strings come back again and again.
    return CRS(text)


def _parse(text: str) -> rasterio.crs.CRS:
    import rasterio
    from rasterio.crs import CRS as RasterioCRS
    from rasterio.errors import CRSError

    # GDAL would print its own "ERROR 1: ..." line for a bad WKT: ours is the one line.
    with rasterio.Env(CPL_LOG=os.devnull):
        try:
            return RasterioCRS.from_user_input(text)
        except (CRSError, ValueError, TypeError) as exc:
            raise ValueError(f"unrecognised CRS {text!r}: {exc}") from None
