"""Progress from the Python API inside a running loop, as in a notebook cell: rich's live bars
on the console given (in a notebook, redrawn in an ipywidgets output widget), and a plain line
every few seconds where a notebook has no ipywidgets.

No Jupyter kernel runs here: the notebook is IPython's display() and ipywidgets' Output, stood
in for by small fakes that record what rich hands them."""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import bulkpix
from bulkpix.pipeline import ItemStats, RunStats
from bulkpix.progress import status_line, text_progress
from tests.conftest import emulator_thread, run_virtual

ASSET = "projects/demo/assets/src"


def _job(url: str, output: Path) -> dict[str, Any]:
    return {"asset": ASSET, "output": str(output), "endpoint": url, "credentials": "none",
            "region": {"bbox": [600000, 5195000, 603000, 5197500], "region_crs": "EPSG:32633"},
            "chunk": 128, "tile": [256, 256], "concurrency": 4}


@pytest.fixture
def emulator() -> Any:
    from bulkpix.emulator import SyntheticAsset

    with emulator_thread(synthetic={ASSET: SyntheticAsset(width=2000, height=2000)}) as emu:
        yield emu


async def test_run_inside_a_running_loop_draws_on_the_console_given(
    emulator: Any, tmp_path: Path
) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    asyncio.get_running_loop()  # a cell's loop is running: run() goes to its own thread
    summary = bulkpix.run(_job(emulator.url, tmp_path / "out.zarr"), progress=True,
                          console=console)
    assert summary.complete and summary.tiles > 1
    drawn = buffer.getvalue()
    assert "total" in drawn and f"{summary.tiles}/{summary.tiles}" in drawn


class _Notebook:
    """IPython.display.display and ipywidgets.Output, recording what is shown where."""

    def __init__(self) -> None:
        self.shown: list[tuple[Any, Any]] = []  # (widget the output went to or None, object)
        self.widgets: list[Any] = []
        self.clears = 0
        self._inside = threading.local()
        notebook = self

        class Output:
            def __enter__(self) -> Output:
                notebook._inside.widget = self
                return self

            def __exit__(self, *exc: object) -> None:
                notebook._inside.widget = None

            def clear_output(self, wait: bool = False) -> None:
                notebook.clears += 1

        def display(obj: Any) -> None:
            if isinstance(obj, Output):
                notebook.widgets.append(obj)
            else:
                notebook.shown.append((getattr(notebook._inside, "widget", None), obj))

        self.modules = {
            "IPython": types.ModuleType("IPython"),
            "IPython.display": types.ModuleType("IPython.display"),
            "ipywidgets": types.ModuleType("ipywidgets"),
        }
        self.modules["IPython.display"].display = display  # type: ignore[attr-defined]
        self.modules["ipywidgets"].Output = Output  # type: ignore[attr-defined]

    def texts(self, in_widget: bool) -> list[str]:
        return [obj.text for widget, obj in self.shown if (widget is not None) == in_widget]


async def test_in_a_notebook_with_ipywidgets_the_bars_redraw_in_an_output_widget(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = _Notebook()
    for name, module in notebook.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    console = Console(force_jupyter=True, width=120)
    summary = bulkpix.run(_job(emulator.url, tmp_path / "out.zarr"), progress=True,
                          console=console)
    assert summary.complete
    # One output widget, cleared and redrawn in place; the last drawing is the finished bar.
    assert len(notebook.widgets) == 1 and notebook.clears >= 1
    drawings = notebook.texts(in_widget=True)
    assert drawings and "total" in drawings[-1]
    assert f"{summary.tiles}/{summary.tiles}" in drawings[-1]


async def test_in_a_notebook_without_ipywidgets_a_plain_line_is_printed(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets -> ImportError
    buffer = io.StringIO()
    console = Console(file=buffer, force_jupyter=True)
    with _no_warnings():
        summary = bulkpix.run(_job(emulator.url, tmp_path / "out.zarr"), progress=True,
                              console=console)
    lines = buffer.getvalue().splitlines()
    assert lines[-1].startswith(f"bulkpix: {summary.tiles}/{summary.tiles} tiles (100%), ")
    assert "MB/s" in lines[-1] and "retries 0" in lines[-1]


class _no_warnings:
    """No 'install ipywidgets' warning from rich: the plain line replaces its live display."""

    def __enter__(self) -> None:
        import warnings

        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc: object) -> None:
        self._catcher.__exit__(*exc)
        assert not [w for w in self._caught if "ipywidgets" in str(w.message)]


def test_the_plain_line_comes_every_ten_seconds_and_at_the_end() -> None:
    lines: list[str] = []

    async def main() -> None:
        stats = RunStats(items=[ItemStats(label="a", total=40, done_before=10)])
        ready: asyncio.Future[RunStats] = asyncio.get_running_loop().create_future()
        async with text_progress(ready, lines.append, every=10.0):
            ready.set_result(stats)
            await asyncio.sleep(5.0)  # tiles finish at 5, 15 and 25 s: between the lines
            for _ in range(3):
                stats.items[0].done += 5
                await asyncio.sleep(10.0)
            stats.notices.append("a notice, said once")

    run_virtual(main)
    # Lines at 10, 20 and 30 s, then the notice and the final line when the run ends at 35 s.
    assert [line.split(",")[0] for line in lines] == [
        "bulkpix: 15/40 tiles (38%)",
        "bulkpix: 20/40 tiles (50%)",
        "bulkpix: 25/40 tiles (62%)",
        "bulkpix: a notice",
        "bulkpix: 25/40 tiles (62%)",
    ]


def test_status_line_estimates_the_time_left_at_the_pace_so_far() -> None:
    stats = RunStats(items=[ItemStats(label="a", total=100, done_before=20, done=20)])
    stats.started -= 60.0  # 20 tiles fetched in 60 s: 60 more take 180 s
    assert status_line(stats).endswith(", about 3 min left")
