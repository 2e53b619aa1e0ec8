"""The CRS value object: parsed once, immutable, equal by meaning, shared by grids,
planning and the store."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkpix.geometry import crs as crs_module
from bulkpix.geometry.crs import CRS
from bulkpix.geometry.grid import PixelGrid, Window, same_crs
from bulkpix.job import parse_job

UTM_PROJ = "+proj=utm +zone=33 +datum=WGS84 +units=m +no_defs"


def test_equal_by_meaning_whatever_the_spelling() -> None:
    lonlat = CRS.of("EPSG:4326")
    from_wkt = CRS.of(lonlat.wkt)
    assert lonlat == from_wkt and hash(lonlat) == hash(from_wkt)
    assert CRS.of("epsg:32633") == CRS.of(UTM_PROJ)
    assert lonlat != CRS.of("EPSG:32633")
    assert lonlat == "EPSG:4326" and lonlat != "not a crs"
    assert (lonlat.epsg, from_wkt.epsg) == (4326, 4326)
    assert (lonlat.authority_code, from_wkt.authority_code) == ("EPSG:4326", None)
    assert str(from_wkt) == lonlat.wkt  # the text as given


def test_one_object_per_text_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    crs_module._interned.cache_clear()
    parsed: list[str] = []
    real_parse = crs_module._parse

    def counting(text: str) -> object:
        parsed.append(text)
        return real_parse(text)

    monkeypatch.setattr(crs_module, "_parse", counting)
    utm = CRS.of("EPSG:32633")
    assert CRS.of("EPSG:32633") is utm and CRS.of(utm) is utm
    grid = PixelGrid("EPSG:32633", Affine(10, 0, 0, 0, -10, 0), 100, 100)
    assert grid.crs is utm
    assert grid.window_grid(Window(10, 10, 5, 5)).crs is utm
    assert parsed == []  # nothing needed parsing yet
    assert utm.wkt and utm.epsg == 32633 and utm == CRS.of(UTM_PROJ)
    assert same_crs("EPSG:32633", UTM_PROJ)
    assert parsed == ["EPSG:32633", UTM_PROJ]  # each text once, however often compared
    assert pickle.loads(pickle.dumps(grid)).crs is utm


def test_immutable() -> None:
    crs = CRS.of("EPSG:4326")
    with pytest.raises(AttributeError):
        crs.text = "EPSG:3857"  # type: ignore[misc]
    with pytest.raises(ValueError, match="non-empty"):
        CRS.of("  ")


def test_a_code_proj_does_not_know_still_round_trips_to_the_service() -> None:
    modis = CRS.of("SR-ORG:6974")
    grid = PixelGrid(modis, Affine(463.3, 0, 0, 0, -463.3, 0), 10, 10)
    assert grid.to_ee()["crsCode"] == "SR-ORG:6974"
    assert PixelGrid.from_ee(grid.to_ee()) == grid
    assert modis != CRS.of("EPSG:4326")  # not equal, and no error for comparing
    with pytest.raises(ValueError, match="SR-ORG:6974"):
        _ = modis.wkt
    with pytest.raises(ValueError):
        same_crs("SR-ORG:6974", "EPSG:4326")


def test_the_job_and_the_plan_share_one_parsed_crs() -> None:
    text = "EPSG:32634"
    job = parse_job({"asset": "a/b", "output": "o.zarr", "crs": text, "scale": 10})
    [item] = job.resolved_items()
    assert item.crs == text
    # Validation answered from PROJ's database (no parse: test_startup checks rasterio is not
    # loaded) on the one interned object planning reuses; its parse, when needed, happens once.
    assert "_catalogued" in vars(CRS.of(text))
    parsed = CRS.of(text).to_rasterio()
    assert CRS.of(text).to_rasterio() is parsed
    with pytest.raises(Exception, match="unknown CRS"):
        parse_job({"asset": "a/b", "output": "o.zarr", "crs": "EPSG:0", "scale": 10})


# -- the PROJ database lookup agrees with rasterio --------------------------------------

# Codes the database answers for (geographic or projected, current), in the spellings jobs use.
LISTED = [
    "EPSG:4326", "EPSG:4269", "EPSG:32633", "EPSG:3857", "EPSG:27700", "EPSG:2154",
    "EPSG:4258", "EPSG:6933", "EPSG:4979", "ESRI:54009", "ESRI:102003", "epsg:4326",
    " EPSG:4326 ", "ePsG:3857", "IGNF:LAMB93", "OGC:CRS84",
]
# Codes it leaves to rasterio: none such, not a CRS (an ellipsoid, a unit), deprecated,
# geocentric, compound, an authority in the wrong case, odd spellings.
UNSETTLED = [
    "EPSG:999999", "EPSG:0", "EPSG:1", "EPSG:7030", "EPSG:9001", "EPSG:3785", "EPSG:4978",
    "EPSG:5498", "esri:54009", "EPSG:04326", "EPSG:+4326", "EPSG: 4326", "EPSG:-1",
    "IGNF:Lamb93", "SR-ORG:6974", UTM_PROJ,
]


def _rasterio_says(text: str) -> tuple[bool, bool | None]:
    """(names a CRS, is geographic) by rasterio's own parse."""
    import os

    import rasterio
    from rasterio.crs import CRS as RasterioCRS

    with rasterio.Env(CPL_LOG=os.devnull):
        try:
            parsed = RasterioCRS.from_user_input(text)
        except Exception:
            return False, None
    return True, bool(parsed.is_geographic)


def _bulkpix_says(text: str) -> tuple[bool, bool | None]:
    crs = CRS(text)  # not interned: nothing cached from another test
    try:
        crs.check()
    except ValueError:
        return False, None
    return True, crs.is_geographic


@pytest.mark.parametrize("text", LISTED + UNSETTLED)
def test_the_database_lookup_agrees_with_rasterio(text: str) -> None:
    assert _bulkpix_says(text) == _rasterio_says(text)
    # The listed ones really are answered without a parse (else this would prove nothing).
    assert (crs_module._catalogued_geographic(text) is not None) == (text in LISTED)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=100_000))
def test_any_epsg_code_gets_rasterios_answer(code: int) -> None:
    text = f"EPSG:{code}"
    assert _bulkpix_says(text) == _rasterio_says(text)
    catalogued = crs_module._catalogued_geographic(text)
    if catalogued is not None:
        assert _rasterio_says(text) == (True, catalogued)
        _assert_describable_without_a_parse(text)


def _assert_describable_without_a_parse(text: str) -> None:
    """A code the database settles passes ``check_describable`` with no parse, and rasterio
    can indeed write it as WKT (what the output stores)."""
    crs = CRS(text)
    crs.check_describable()
    assert "_parsed" not in vars(crs)
    assert crs.wkt.startswith(("GEOGCS[", "PROJCS[", "GEOGCRS[", "PROJCRS[", "BOUNDCRS["))


@pytest.mark.parametrize("text", LISTED)
def test_a_listed_code_is_describable_without_a_parse(text: str) -> None:
    _assert_describable_without_a_parse(text)


@pytest.mark.parametrize("text", ["EPSG:0", "SR-ORG:6974"])
def test_a_code_nothing_can_describe_is_refused_by_check_describable(text: str) -> None:
    with pytest.raises(ValueError):
        CRS(text).check_describable()


def test_without_a_readable_proj_database_the_lookup_abstains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing here parses with rasterio: PROJ would remember the folder without proj.db. The
    # lookup's None means the parse decides, as the tests above check.
    crs_module._proj_catalogue.cache_clear()
    try:
        monkeypatch.setenv("PROJ_DATA", str(tmp_path))  # a folder without proj.db
        assert crs_module._proj_db() is None
        assert crs_module._catalogued_geographic("EPSG:4326") is None
        (tmp_path / "proj.db").write_text("not a database")
        crs_module._proj_catalogue.cache_clear()
        assert crs_module._catalogued_geographic("EPSG:4326") is None
        (tmp_path / "proj.db").unlink()
        monkeypatch.delenv("PROJ_DATA")
        monkeypatch.delenv("PROJ_LIB", raising=False)
        db = crs_module._proj_db()  # the one in rasterio's wheel
        assert db is not None and db.parent.name == "proj_data"
        monkeypatch.setenv("PROJ_LIB", f"{tmp_path}{os.pathsep}{db.parent}")
        assert crs_module._proj_db() == db  # the first folder of the list holding one
    finally:
        crs_module._proj_catalogue.cache_clear()
