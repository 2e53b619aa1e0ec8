"""``python -m benchmarks``: bulkpix against today's clients on the same emulator.

Starts the emulator (``bulkpix emulator``) in its own process per scenario, runs every client
in its own process, prints tables and targets and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from benchmarks.ideal import FORMULA
from benchmarks.machine import describe_machine
from benchmarks.report import markdown_tables, print_results, write_json
from benchmarks.scenarios import SCENARIOS, Context, ScenarioResult
from benchmarks.sizes import SIZES

DEFAULT_JSON = Path(__file__).parent / "results" / "latest.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS),
                        help="run only this scenario (repeatable; default: all)")
    parser.add_argument("--size", choices=list(SIZES), default="default")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    parser.add_argument("--skip-peers", action="store_true",
                        help="skip GDAL EEDAI and earthengine-api (bulkpix and the bare loop only)")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    parser.add_argument("--workdir", type=Path,
                        help="keep job files, outputs and logs here (default: a temp dir)")
    return parser


def run(args: argparse.Namespace, console: Console) -> list[ScenarioResult]:
    names = args.scenario or list(SCENARIOS)
    with tempfile.TemporaryDirectory(prefix="bulkpix-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        ctx = Context(args.size, SIZES[args.size], workdir, skip_peers=args.skip_peers)
        results = []
        for name in names:
            console.print(f"[bold]{name}[/] ...")
            started = time.perf_counter()
            results.append(SCENARIOS[name](ctx))
            console.print(f"  done in {time.perf_counter() - started:.1f} s")
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Piped output would wrap at 80 columns; the tables need more.
    console = Console() if sys.stdout.isatty() else Console(width=170)
    started = time.time()
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    results = run(args, console)
    meta = {"size": args.size, "started": started, "seconds": time.time() - started,
            "skip_peers": args.skip_peers, "ideal_formula": FORMULA,
            "machine": describe_machine(), "loadavg_at_start": load_at_start}
    print_results(console, results)
    write_json(args.json, meta, results)
    console.print(f"figures written to {args.json}")
    if args.markdown is not None:
        args.markdown.write_text(markdown_tables(results, meta["machine"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
