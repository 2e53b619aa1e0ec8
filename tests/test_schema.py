"""The job file's JSON Schema and Markdown reference: generated from the model, up to date in
docs/, and accepting what the loader accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bulkpix.cli import main
from bulkpix.job import Job, parse_job
from bulkpix.schema import job_schema, markdown_reference, schema_text

ROOT = Path(__file__).resolve().parent.parent


def test_docs_job_schema_is_up_to_date() -> None:
    path = ROOT / "docs" / "job.schema.json"
    assert path.read_text(encoding="utf-8") == schema_text(), (
        "docs/job.schema.json is out of date; regenerate it with: "
        "python -m bulkpix.schema > docs/job.schema.json"
    )


def test_docs_job_reference_is_up_to_date() -> None:
    path = ROOT / "docs" / "job-reference.md"
    assert path.read_text(encoding="utf-8") == markdown_reference(), (
        "docs/job-reference.md is out of date; regenerate it with: "
        "python -m bulkpix.schema --markdown > docs/job-reference.md"
    )


def _properties(node: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(dotted path, schema) of every property of every object schema inside ``node``."""
    found = []
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            found.append((f"{where}{name}", prop))
        for key, value in node.items():
            found += _properties(value, f"{where}{key}.")
    elif isinstance(node, list):
        for value in node:
            found += _properties(value, where)
    return found


def test_every_key_has_a_one_line_description() -> None:
    props = _properties(job_schema())
    assert len(props) > 50
    undescribed = [name for name, prop in props if not prop.get("description")]
    assert not undescribed, f"keys without a description (a docstring in job.py): {undescribed}"
    assert all("\n" not in prop["description"] for _, prop in props)


def test_the_schema_is_valid_and_hides_internal_fields() -> None:
    schema = job_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "base_dir" not in schema["properties"]
    assert set(schema["properties"]) == set(Job.model_fields) - {"base_dir"}
    assert schema["required"] == ["output"]


def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(job_schema())


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_jobs_validate(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    errors = [e.message for e in _validator().iter_errors(data)]
    assert not errors


BASE = {"asset": "projects/p/assets/a", "output": "o.zarr"}


@pytest.mark.parametrize(
    "keys",
    [
        {"region": [16.9, 46.0, 18.3, 46.9]},
        {"region": "area.geojson"},
        {"region": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}},
        {"region": {"bbox": [0, 0, 10, 10], "region_crs": "EPSG:32633"}},
        {"dimensions": [1024, 512], "crs": "EPSG:3857"},
        {"tile": [1024, 2048]},
        {"nodata": {"B1": 0}},
        {"items": [{"asset": "projects/p/assets/b", "name": "b", "scale": 30}]},
        {"visualization": {"bands": ["B4", "B3", "B2"], "min": 0, "max": 3000}},
    ],
)
def test_the_schema_accepts_what_the_loader_accepts(keys: dict[str, Any]) -> None:
    data = {**BASE, **keys}
    parse_job(data)  # the loader takes it ...
    assert not [e.message for e in _validator().iter_errors(data)]  # ... and so does the schema


@pytest.mark.parametrize(
    "keys",
    [
        {"concurrency": 0},
        {"colour": "red"},
        {"tile": "big"},
        {"dimensions": [0, 10]},
        {"region": [1, 2, 3]},
        {"timeouts": {"connect": -1}},
        {"retries": {"attempts": 3}},
        {"zarr_format": 4},
    ],
)
def test_the_schema_refuses_what_the_loader_refuses(keys: dict[str, Any]) -> None:
    data = {**BASE, **keys}
    with pytest.raises(ValueError):
        parse_job(data)
    assert list(_validator().iter_errors(data))


def test_the_reference_lists_every_key() -> None:
    text = markdown_reference()
    for name in set(Job.model_fields) - {"base_dir"}:
        assert f"| `{name}` |" in text
    for section in ("timeouts", "retries", "service_model", "emulator", "region",
                    "visualization"):
        assert f"### `{section}`" in text
    assert "| `retries.max_attempts` | integer > 0 | `8` |" in text
    assert "| `dimensions` | [2 × integer > 0 and <= 16,777,216] |" in text
    assert "| `tile` | `auto` or [2 × integer > 0] | `auto` |" in text


def test_cli_schema_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == schema_text()
    assert main(["schema", "--markdown"]) == 0
    assert capsys.readouterr().out == markdown_reference()
