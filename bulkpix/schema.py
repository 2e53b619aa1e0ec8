"""The job file's JSON Schema, generated from the pydantic model, and a Markdown reference.

The repository carries both, kept up to date by tests::

    python -m bulkpix.schema > docs/job.schema.json
    python -m bulkpix.schema --markdown > docs/job-reference.md

An editor with a YAML language server checks and completes a job file that starts with
``# yaml-language-server: $schema=<path or URL of job.schema.json>``.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["SCHEMA_DIALECT", "job_schema", "main", "markdown_reference", "schema_text"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
"""The dialect pydantic generates."""


def _tidy(node: Any) -> Any:
    """Descriptions on one line each (docstrings wrap), RST ``code`` as Markdown `code`."""
    if isinstance(node, dict):
        out = {k: _tidy(v) for k, v in node.items()}
        if isinstance(out.get("description"), str):
            out["description"] = " ".join(out["description"].split()).replace("``", "`")
        return out
    if isinstance(node, list):
        return [_tidy(v) for v in node]
    return node


def _attribute_docstrings(source: str) -> dict[str, dict[str, str]]:
    """Each class's ``{field: docstring}``: the string right after an annotated attribute,
    as pydantic's ``use_attribute_docstrings`` reads it."""
    docs: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        fields = docs.setdefault(node.name, {})
        for before, after in itertools.pairwise(node.body):
            if (
                isinstance(before, ast.AnnAssign)
                and isinstance(before.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                fields[before.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _describe_fields() -> None:
    """Give the job models' fields their docstrings as descriptions, then rebuild the
    models so the schema carries them. Done here, when a schema is asked for, rather than
    by pydantic on every import of ``bulkpix.job``: that parses each class's source."""
    from pydantic import BaseModel

    from bulkpix import job as job_module

    docs = _attribute_docstrings(inspect.getsource(job_module))
    models = [
        model for model in vars(job_module).values()
        if isinstance(model, type) and issubclass(model, BaseModel)
        and model.__module__ == job_module.__name__
    ]
    changed = False
    for model in models:
        for name, info in model.model_fields.items():
            # The docstring in the class that declares the field, as pydantic reads it.
            owner = next((c for c in model.__mro__ if name in inspect.get_annotations(c)), model)
            doc = docs.get(owner.__name__, {}).get(name)
            if info.description is None and doc is not None:
                info.description = doc
                changed = True
    if changed:
        # Parts before the models that hold them: each rebuild takes its parts' schemas.
        for model in sorted(models, key=lambda m: inspect.getsourcelines(m)[1]):
            model.model_rebuild(force=True)


def job_schema() -> dict[str, Any]:
    """The JSON Schema of a job file (what ``bulkpix schema`` prints)."""
    from bulkpix.job import Job

    _describe_fields()
    schema = _tidy(Job.model_json_schema(mode="validation"))
    schema.pop("title", None)
    schema.pop("description", None)
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "bulkpix job",
        "description": (
            "A bulkpix job file: one item (asset, bands, region, crs, scale or dimensions at "
            "the top level) or a batch (items, the top level giving shared defaults), and the "
            "run's settings."
        ),
        **schema,
    }


def schema_text() -> str:
    """``job_schema()`` as the file ``docs/job.schema.json`` holds it."""
    return json.dumps(job_schema(), indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- Markdown


def _def_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _literal(value: Any) -> str:
    return f"`{value if isinstance(value, str) else json.dumps(value)}`"


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _type_text(prop: dict[str, Any]) -> str:
    """A short human rendering of a property's type."""
    if "$ref" in prop:
        return "item mapping" if _def_name(prop["$ref"]) == "ItemSpec" else "mapping (below)"
    if "anyOf" in prop:
        kinds = [p for p in prop["anyOf"] if p.get("type") != "null"]
        texts = list(dict.fromkeys(_type_text(p) for p in kinds))
        return " or ".join(texts)
    if "const" in prop:
        return _literal(prop["const"])
    if "enum" in prop:
        return " \\| ".join(_literal(v) for v in prop["enum"])
    kind = prop.get("type")
    if kind == "array":
        if "prefixItems" in prop:
            texts = [_type_text(p) for p in prop["prefixItems"]]
            if len(set(texts)) == 1:
                return f"[{len(texts)} × {texts[0]}]"
            return "[" + ", ".join(texts) + "]"
        items = prop.get("items")
        return f"list of {_type_text(items)}" if items else "list"
    if kind == "object":
        values = prop.get("additionalProperties")
        if isinstance(values, dict) and values:
            return f"mapping of {_type_text(values)}"
        return "mapping"
    text = {"integer": "integer", "number": "number", "string": "text", "boolean": "true/false"}
    name = text.get(str(kind), str(kind))
    bounds = []
    for key, sign in (("exclusiveMinimum", ">"), ("minimum", ">="), ("exclusiveMaximum", "<"),
                      ("maximum", "<=")):
        if key in prop:
            bounds.append(f"{sign} {_number(prop[key])}")
    return f"{name} {' and '.join(bounds)}" if bounds else name


def _default_text(name: str, prop: dict[str, Any], required: Sequence[str]) -> str:
    if name in required:
        return "required"
    if "default" not in prop or prop["default"] is None:
        return ""
    default = prop["default"]
    if isinstance(default, dict):
        return ""  # a section: its keys' defaults are listed in its own table
    return _literal(default)


def _table(
    rows: dict[str, dict[str, Any]], required: Sequence[str], prefix: str = ""
) -> list[str]:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, prop in rows.items():
        description = prop.get("description", "").replace("|", "\\|")
        lines.append(
            f"| `{prefix}{name}` | {_type_text(prop)} | {_default_text(name, prop, required)} "
            f"| {description} |"
        )
    return lines


def _sections(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(key, its mapping's schema) for every key whose value is a mapping of known keys."""
    defs = schema.get("$defs", {})
    found: list[tuple[str, dict[str, Any]]] = []
    for name, prop in schema["properties"].items():
        refs = [prop.get("$ref")] + [p.get("$ref") for p in prop.get("anyOf", [])]
        ref = next((r for r in refs if r), None)
        if ref is None or _def_name(ref) == "ItemSpec":
            continue
        target = defs[_def_name(ref)]
        if "properties" not in target:  # a union of shorthands: the mapping form's keys
            target = next(p for p in target["anyOf"] if "properties" in p and "bbox" in
                          p["properties"]) | {"description": target.get("description", "")}
        if not target.get("description"):
            target = target | {"description": prop.get("description", "")}
        found.append((name, target))
    return found


def markdown_reference(schema: dict[str, Any] | None = None) -> str:
    """The job reference as Markdown tables: item keys, run keys, then each section's keys."""
    schema = schema or job_schema()
    props: dict[str, dict[str, Any]] = schema["properties"]
    item_def = schema["$defs"]["ItemSpec"]["properties"]
    item_keys = {k: props.get(k, item_def[k]) for k in item_def}
    run_keys = {k: v for k, v in props.items() if k not in item_def}
    required = schema.get("required", [])
    lines = [
        "<!-- Generated by `python -m bulkpix.schema --markdown`; do not edit by hand. -->",
        "",
        "### Item keys",
        "",
        "At the top level (one item, or the shared defaults of a batch) or in each entry of "
        "`items`. `asset` is required, at one level or the other.",
        "",
        *_table(item_keys, required),
        "",
        "### Run keys",
        "",
        *_table(run_keys, required),
    ]
    for name, section in _sections(schema):
        lines += [
            "",
            f"### `{name}`",
            "",
            section.get("description", ""),
            "",
            *_table(section["properties"], section.get("required", []), prefix=f"{name}."),
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bulkpix schema", description="Print the job file's JSON Schema (or its reference)."
    )
    parser.add_argument(
        "--markdown", action="store_true", help="the Markdown reference tables instead"
    )
    args = parser.parse_args(argv)
    sys.stdout.write(markdown_reference() if args.markdown else schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
