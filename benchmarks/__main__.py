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
    parser.add_argument("--no-compile", action="store_true",
                        help="do not byte-compile bulkpix and the clients first (with "
                             "PYTHONDONTWRITEBYTECODE set, each client then compiles them)")
    return parser


def compile_sources(root: Path | None = None) -> list[str]:
    """Byte-compile bulkpix and the benchmark clients, as installing a package does.

    Where PYTHONDONTWRITEBYTECODE is set (it is on some machines), every client process
    would otherwise compile bulkpix's modules from source: about 0.1 CPU-s a run, a
    quarter second on a slow core, that no installed bulkpix pays. ``root`` given: the
    packages of that source tree, not the imported ones. Returns the folders.
    """
    import compileall
    import importlib.util

    folders = []
    for package in ("bulkpix", "benchmarks"):
        if root is not None:
            found = [str(root / package)] if (root / package).is_dir() else []
        else:
            spec = importlib.util.find_spec(package)
            found = list((spec.submodule_search_locations or []) if spec else [])
        for folder in found:
            compileall.compile_dir(folder, quiet=1)
            folders.append(folder)
    return folders


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
    compiled = [] if args.no_compile else compile_sources()
    results = run(args, console)
    meta = {"size": args.size, "started": started, "seconds": time.time() - started,
            "skip_peers": args.skip_peers, "ideal_formula": FORMULA,
            "bytecode_precompiled": compiled,
            "machine": describe_machine(), "loadavg_at_start": load_at_start}
    print_results(console, results)
    write_json(args.json, meta, results)
    console.print(f"figures written to {args.json}")
    if args.markdown is not None:
        args.markdown.write_text(markdown_tables(results, meta["machine"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
