"""The layering the folder promises: pure geometry, and no emulator on the download path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(imports: str) -> set[str]:
    code = f"import sys\n{imports}\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(result.stdout.split())


@pytest.mark.parametrize(
    "module",
    [
        "bulkpix.geometry.grid",
        "bulkpix.geometry.tiling",
        "bulkpix.geometry.crs",
        "bulkpix.planning",
        "bulkpix.store.location",  # the output's names, which planning checks band ids against
    ],
)
def test_geometry_imports_no_io(module: str) -> None:
    loaded = _modules_after(f"import {module}")
    for forbidden in ("aiohttp", "zarr", "asyncio"):
        assert forbidden not in loaded, f"{module} pulls in {forbidden}"


def test_download_path_never_imports_the_emulator() -> None:
    loaded = _modules_after(
        "import bulkpix, bulkpix.cli, bulkpix.pipeline, bulkpix.progress, bulkpix.status"
    )
    assert "bulkpix.pipeline" in loaded
    assert not [m for m in loaded if m.startswith("bulkpix.emulator")]


def test_every_shipped_config_is_a_valid_job() -> None:
    from bulkpix.job import load_job

    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for config in configs:
        job = load_job(config)
        assert job.resolved_items()


def _runtime_closure() -> set[str]:
    """The distributions `pip install bulkpix` brings: the declared ones and theirs."""
    import re
    import tomllib
    from importlib import metadata

    def name(requirement: str) -> str:
        return (
            re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")
        )

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [name(r) for r in declared]
    seen: set[str] = set()
    while todo:
        dist = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        try:
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [name(r) for r in requires if "extra ==" not in r]
    return seen


def _catches_import_error(handler: Any) -> bool:
    import ast

    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
               for n in names)


def test_every_runtime_import_is_a_declared_dependency() -> None:
    """The test extras must not hide a missing runtime dependency (pyproj once hid so)."""
    import ast
    from importlib import metadata

    closure = _runtime_closure()
    providers = metadata.packages_distributions()
    missing = {}
    for path in (ROOT / "bulkpix").rglob("*.py"):
        tree = ast.parse(path.read_text())
        # An import guarded by `except ImportError` belongs to an optional extra (e.g.
        # bulkpix.open needs `bulkpix[xarray]`): it must name the extra in its message.
        guarded = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.Try)
            and any(_catches_import_error(h) for h in node.handlers)
            for stmt in node.body
            for inner in ast.walk(stmt)
        } | {
            id(inner)  # `with contextlib.suppress(ImportError):`
            for node in ast.walk(tree)
            if isinstance(node, ast.With)
            and any("suppress(ImportError)" in ast.unparse(w.context_expr) for w in node.items)
            for stmt in node.body
            for inner in ast.walk(stmt)
        } | {
            id(inner)  # typing-only imports
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for stmt in node.body
            for inner in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "bulkpix":
                    continue
                dists = {d.lower().replace("_", "-") for d in providers.get(top, [])}
                if not dists & closure:
                    missing[top] = str(path.relative_to(ROOT))
    assert not missing, f"imported but not a dependency: {missing}"
