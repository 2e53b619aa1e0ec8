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


_COLUMNS = ("client", "wall s", "busy s", "first req s", "tail s", "MB/s", "MB/s busy",
            "requests", "retries", "429 %", "CPU s", "CPU s/GB", "server CPU s", "peak RSS MB",
            "pixels ok")
# Columns a scenario adds when its clients carry the figure (ClientFigures.extra).
_EXTRA_COLUMNS = {"wall_over_floor": "wall / floor", "wall_over_ideal": "wall / ideal",
                  "compression": "codec", "stored_ratio": "stored ratio"}


def _extras(result: ScenarioResult) -> list[str]:
    return [key for key in _EXTRA_COLUMNS if any(key in c.extra for c in result.clients)]


def _format_extra(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "" if value is None else str(value)


def _row(c: ClientFigures, extras: Sequence[str]) -> list[str]:
    return [c.client, f"{c.wall_s:.2f}", f"{c.busy_s:.2f}", f"{c.first_request_s:.2f}",
            f"{c.tail_s:.2f}", f"{c.mb_per_s:.1f}", f"{c.mb_per_s_busy:.1f}", str(c.requests),
            str(c.retries), f"{c.share_429:.1%}", f"{c.cpu_s:.2f}", f"{c.cpu_s_per_gb:.2f}",
            f"{c.emulator_cpu_s:.2f}", f"{c.peak_rss_mb:.0f}", _pixels_ok(c),
            *(_format_extra(c.extra.get(key)) for key in extras)]


def _client_table(result: ScenarioResult) -> Table:
    table = Table(title=result.title, title_justify="left")
    extras = _extras(result)
    for column in (*_COLUMNS, *(_EXTRA_COLUMNS[key] for key in extras)):
        table.add_column(column, justify="left" if column in ("client", "codec") else "right")
    for c in result.clients:
        table.add_row(*_row(c, extras))
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


def machine_line(machine: dict[str, Any]) -> str:
    """The CPU a figure was measured on, as every table in RESULTS.md names it."""
    line = f"{machine.get('cpu_model', 'unknown CPU')}, {machine.get('nproc', '?')} CPUs"
    if machine.get("loadavg"):
        line += f", 1-min load {machine['loadavg'][0]:.1f} at the end"
    return line


def markdown_tables(results: Sequence[ScenarioResult],
                    machine: dict[str, Any] | None = None) -> str:
    """The same tables in Markdown (for benchmarks/RESULTS.md), each naming the CPU."""
    lines: list[str] = []
    where = f" ({machine_line(machine)})" if machine else ""
    for result in results:
        extras = _extras(result)
        header = (*_COLUMNS, *(_EXTRA_COLUMNS[key] for key in extras))
        lines += [f"### {result.title}{where}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for c in result.clients:
            lines.append("| " + " | ".join(_row(c, extras)) + " |")
        lines.append("")
        if result.ideal.get("seconds"):
            lines += [f"Service-model ideal: {result.ideal['seconds']:.2f} s "
                      f"({result.ideal.get('requests')} requests).", ""]
        lines += [f"- {note}" for note in result.notes]
        if result.notes:
            lines.append("")
    lines += [f"### Targets{where}", "", "| scenario | target | value | met | note |",
              "|---|---|---|---|---|"]
    for r in results:
        for t in r.targets:
            lines.append(f"| {t.scenario} | {t.name} | {_format_value(t)} | "
                         f"{'met' if t.met else '**not met**'} | {t.note} |")
    return "\n".join(lines) + "\n"
