"""The results as rich tables on the terminal and as one JSON document."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.figures import ClientFigures, Target
from benchmarks.scenarios import ScenarioResult

__all__ = ["print_results", "write_json"]


def _pixels_ok(c: ClientFigures) -> str:
    """yes: every expected pixel arrived and the sampled values are right; n/a: the client
    throws its bytes away (the bare loop)."""
    if c.pixels != c.expected_pixels:
        return "NO"
    return "yes" if c.verified else "n/a"


def _client_table(result: ScenarioResult) -> Table:
    table = Table(title=result.title, title_justify="left")
    for column in ("client", "wall s", "busy s", "MB/s", "MB/s busy", "requests", "retries",
                   "429 %", "CPU s", "CPU s/GB", "server CPU s", "peak RSS MB", "pixels ok"):
        table.add_column(column, justify="left" if column == "client" else "right")
    for c in result.clients:
        pixels_ok = _pixels_ok(c)
        table.add_row(c.client, f"{c.wall_s:.2f}", f"{c.busy_s:.2f}", f"{c.mb_per_s:.1f}",
                      f"{c.mb_per_s_busy:.1f}", str(c.requests), str(c.retries),
                      f"{c.share_429:.1%}", f"{c.cpu_s:.2f}", f"{c.cpu_s_per_gb:.1f}",
                      f"{c.emulator_cpu_s:.2f}", f"{c.peak_rss_mb:.0f}", pixels_ok)
    return table


def _format_value(target: Target) -> str:
    if target.unit == "share":
        return f"{target.value:.1%} (limit {target.threshold:.0%})"
    if target.unit == "s":
        sign = ">=" if target.higher_is_better else "<="
        return f"{target.value:.2f} s (target {sign} {target.threshold:g} s)"
    if target.unit == "MB":
        return f"{target.value:.0f} MB (limit {target.threshold:.0f} MB)"
    sign = ">=" if target.higher_is_better else "<="
    return f"{target.value:.2f}x (target {sign} {target.threshold:g}x)"


def _target_table(targets: Sequence[Target]) -> Table:
    table = Table(title="Targets", title_justify="left")
    for column in ("scenario", "target", "value", "met", "note"):
        table.add_column(column)
    for t in targets:
        table.add_row(t.scenario, t.name, _format_value(t),
                      "[green]met[/]" if t.met else "[red]NOT MET[/]", t.note)
    return table


def print_results(console: Console, results: Sequence[ScenarioResult]) -> None:
    for result in results:
        console.print(_client_table(result))
        if result.ideal:
            console.print(f"  ideal: {json.dumps(result.ideal)}", markup=False)
        for note in result.notes:
            console.print(f"  note: {note}", markup=False)
    console.print(_target_table([t for r in results for t in r.targets]))


def write_json(path: Path, meta: dict[str, Any], results: Sequence[ScenarioResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "scenarios": {r.name: r.as_dict() for r in results}}
    path.write_text(json.dumps(document, indent=2) + "\n")


def markdown_tables(results: Sequence[ScenarioResult]) -> str:
    """The same tables in Markdown (for benchmarks/RESULTS.md)."""
    lines: list[str] = []
    header = ("client", "wall s", "busy s", "MB/s", "MB/s busy", "requests", "retries",
              "429 %", "CPU s", "CPU s/GB", "server CPU s", "peak RSS MB", "pixels ok")
    for result in results:
        lines += [f"### {result.title}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for c in result.clients:
            ok = _pixels_ok(c)
            lines.append(
                f"| {c.client} | {c.wall_s:.2f} | {c.busy_s:.2f} | {c.mb_per_s:.1f} | "
                f"{c.mb_per_s_busy:.1f} | {c.requests} | {c.retries} | {c.share_429:.1%} | "
                f"{c.cpu_s:.2f} | {c.cpu_s_per_gb:.1f} | {c.emulator_cpu_s:.2f} | "
                f"{c.peak_rss_mb:.0f} | {ok} |")
        lines.append("")
    lines += ["### Targets", "", "| scenario | target | value | met | note |",
              "|---|---|---|---|---|"]
    for r in results:
        for t in r.targets:
            lines.append(f"| {t.scenario} | {t.name} | {_format_value(t)} | "
                         f"{'met' if t.met else '**not met**'} | {t.note} |")
    return "\n".join(lines) + "\n"
