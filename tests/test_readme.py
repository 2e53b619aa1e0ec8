"""The README's promises a new user acts on: its job reference is the generated one, and its
quick start (the demo job, then the snippet that opens the result) works as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bulkpix.cli import main
from bulkpix.schema import markdown_reference

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_job_reference_is_the_generated_one() -> None:
    block = re.search(
        r"<!-- job-reference:start -->\n(.*)<!-- job-reference:end -->", README, re.DOTALL
    )
    assert block is not None, "README lacks the job-reference markers"
    assert block.group(1) == markdown_reference(), (
        "README's job reference is stale: paste `python -m bulkpix.schema --markdown` "
        "between the job-reference markers"
    )


def _quick_start_snippet() -> str:
    section = README.split("## Try it without an account", 1)[1].split("\n## ", 1)[0]
    snippets = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(snippets) == 1
    return snippets[0]


def test_the_quick_start_runs_and_opens_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The demo job as shipped, over a smaller box so the test stays quick; the README's
    # snippet then runs unchanged against what it wrote.
    monkeypatch.chdir(tmp_path)
    job = str(ROOT / "configs" / "demo.yaml")
    assert main(["run", "--quiet", job, "--bbox", "17.0", "46.1", "17.05", "46.13"]) == 0
    assert (tmp_path / "out" / "demo.zarr" / "zarr.json").is_file()
    namespace: dict[str, object] = {}
    exec(compile(_quick_start_snippet(), "README.md", "exec"), namespace)
    ds = namespace["ds"]
    assert list(ds.data_vars) == ["u8", "i16", "u16", "f32"]  # the job's (asset's) order
    assert ds.rio.crs.to_epsg() == 32633
    assert ds.rio.transform().a == 10.0
