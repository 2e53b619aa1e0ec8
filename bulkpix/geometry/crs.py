"""One CRS value: parsed once, compared by meaning. odc-geo's ``CRS`` is the model.

Every CRS bulkpix meets (the job's ``crs`` and ``region_crs``, an asset's ``crsCode`` or
``crsWkt``) becomes a :class:`CRS` through :meth:`CRS.of`, the one place a CRS string is
parsed. The same text gives the same object, so a string is parsed at most once per process
however many grids, regions and comparisons use it.

Parsing waits until something needs it (the WKT, a reprojection, comparing two different
texts): a grid in a CRS PROJ does not know (Earth Engine's ``SR-ORG:6974``) can still be
sent back to the service by its code, and rasterio (GDAL and PROJ behind it) is imported on
the first parse, not with this module. Whether an authority code names a CRS, and whether
that CRS is lon/lat, is first looked up in the PROJ database rasterio ships (plain SQLite):
validating a job that names ``EPSG:32633`` then loads neither rasterio nor numpy.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
import threading
from collections.abc import Sequence
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    import rasterio.crs

__all__ = ["CRS", "CRSLike", "is_lonlat_crs", "lonlat_problem"]

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

    @cached_property
    def _catalogued(self) -> bool | None:
        # PROJ's database answer (is it geographic?) for a plain authority code it lists;
        # None when only a parse can tell.
        return _catalogued_geographic(self.text)

    def check(self) -> None:
        """``ValueError`` when the text names no CRS. An authority code PROJ's database
        lists is taken as is (no rasterio); anything else is parsed."""
        if self._catalogued is None:
            self.to_rasterio()

    def check_describable(self) -> None:
        """``ValueError`` when the output could not store this CRS as WKT (``EPSG:0``). A
        geographic or projected code PROJ's database lists always can be (tests/test_crs.py
        checks a sample with rasterio), so only other texts are parsed now."""
        if self._catalogued is None:
            _ = self.wkt

    @property
    def is_geographic(self) -> bool:
        catalogued = self._catalogued
        if catalogued is not None:
            return catalogued
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


def is_lonlat_crs(crs: CRSLike) -> bool:
    """Whether ``crs`` counts in degrees of longitude and latitude (EPSG:4326 and kin)."""
    try:
        return CRS.of(crs).is_geographic
    except ValueError:
        return False


def lonlat_problem(bounds: Sequence[float], crs: CRSLike = "EPSG:4326") -> str | None:
    """Why ``bounds`` cannot be longitudes and latitudes, or None when they can be.

    Longitudes up to +-360 pass (a region may cross the antimeridian as 170..190); a
    latitude past +-90 never does. Metres given without ``region_crs`` are the usual cause.
    """
    xmin, ymin, xmax, ymax = (float(v) for v in bounds)
    if xmin >= -360 and xmax <= 360 and ymin >= -90 and ymax <= 90:
        return None
    return (
        f"outside the longitude/latitude range of {crs} ([-180, 180] x [-90, 90]); "
        "did you mean region_crs? (e.g. region_crs: EPSG:32633 for UTM metres)"
    )


# -- PROJ's database, without rasterio ---------------------------------------------------

# What the lookup answers for: rasterio takes EPSG in any case but other authorities only as
# the database spells them, and a code with a sign or leading zeros goes to rasterio.
_LOOKUP_CODE = re.compile(
    r"^(?:(?P<epsg>[Ee][Pp][Ss][Gg])|(?P<auth>[A-Z][A-Z0-9_]*))"
    r":(?P<code>[1-9][0-9]*|[A-Z][A-Za-z0-9_]*)$"
)

# The CRS kinds whose is_geographic follows from the kind alone (a compound CRS's depends
# on its parts: rasterio decides).
_GEOGRAPHIC_KINDS = {"geographic 2D": True, "geographic 3D": True, "projected": False}


def _proj_db() -> Path | None:
    """The proj.db rasterio would use: PROJ_DATA or PROJ_LIB when set (rasterio's order),
    else the one in rasterio's wheel; None when there is none (then rasterio decides)."""
    for var in ("PROJ_DATA", "PROJ_LIB"):
        if var in os.environ:
            for folder in os.environ[var].split(os.pathsep):
                if folder and (Path(folder) / "proj.db").is_file():
                    return Path(folder) / "proj.db"
            return None
    try:
        spec = importlib.util.find_spec("rasterio")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    db = Path(spec.origin).parent / "proj_data" / "proj.db"
    return db if db.is_file() else None


# One connection per process (SQLite's rule: a forked child must not use its parent's), used
# by one thread at a time.
_CATALOGUE_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _proj_catalogue(pid: int) -> sqlite3.Connection | None:
    db = _proj_db()
    if db is None:
        return None
    try:
        return sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error:
        return None


def _catalogued_geographic(text: str) -> bool | None:
    """Whether the authority code ``text`` names a geographic (True) or projected (False)
    CRS, per PROJ's database; None for anything the database cannot settle (not a plain
    code, not listed, deprecated (GDAL swaps in the replacement), another kind of CRS, no
    database), which rasterio then parses as before."""
    match = _LOOKUP_CODE.match(text.strip())
    if match is None:
        return None
    auth = "EPSG" if match["epsg"] else match["auth"]
    with _CATALOGUE_LOCK:
        catalogue = _proj_catalogue(os.getpid())
        if catalogue is None:
            return None
        try:
            rows = catalogue.execute(
                "SELECT type, deprecated FROM crs_view WHERE auth_name = ? AND code = ?",
                (auth, match["code"]),
            ).fetchall()
        except sqlite3.Error:  # not the database PROJ would read: let rasterio decide
            return None
    if len(rows) != 1:
        return None
    kind, deprecated = rows[0]
    if deprecated:
        return None
    return _GEOGRAPHIC_KINDS.get(kind)


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
