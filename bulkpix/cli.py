"""``bulkpix run | plan | status | verify | export | preview | emulator``: a thin shell over the
async core.

Exit codes: 0 done; 1 a failure while running (failed tiles, asset not found, access denied);
2 a bad job file, bad arguments or an output holding another job; 3 no credentials found
(log in first); 130 interrupted (Ctrl-C or SIGTERM; resumable).
Bad input prints one line; ``--debug`` (before or after the subcommand) adds the traceback,
and never changes the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from rich.console import Console

from bulkpix import __version__
from bulkpix.deferred_import import defer_import
from bulkpix.errors import (
    BulkpixError,
    CredentialsMissing,
    JobError,
    JobTooLarge,
    StoreMismatch,
    TransportError,
)

__all__ = ["entry", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_CREDENTIALS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: bad input gets one clear message.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bulkpix",
        description="Bulk, resumable, quota-aware Earth Engine pixel downloads into Zarr.",
    )
    # Its own dest: a subcommand's --debug (default False) must not reset this one.
    parser.add_argument("--debug", dest="debug_global", action="store_true",
                        help="show tracebacks (the exit code stays the same)")
    parser.add_argument("--version", action="version", version=f"bulkpix {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run or resume a job")
    run.add_argument("job", help="the YAML job file")
    run.add_argument("--restart", action="store_true", help="discard the old output first")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "--yes", action="store_true", help="do not ask before a job far past the native pixels"
    )
    run.add_argument("--debug", action="store_true", help="show tracebacks")
    run.add_argument("--dask", dest="set_dask", metavar="SCHEDULER",
                     help="run the tiles on this Dask cluster (tcp://host:8786): executor.dask")
    _add_job_overrides(run)

    plan = commands.add_parser("plan", help="show the grid and tiles; fetch no pixels")
    plan.add_argument("job", help="the YAML job file")
    plan.add_argument("--debug", action="store_true", help="show tracebacks")
    _add_job_overrides(plan)

    status = commands.add_parser("status", help="finished, failed and missing tiles of an output")
    status.add_argument("output", help="the output store, or the job file that writes it")
    status.add_argument("--debug", action="store_true", help="show tracebacks")

    export = commands.add_parser(
        "export", help="write an output (one item) as a Cloud-Optimized GeoTIFF"
    )
    export.add_argument("output", help="the output store")
    export.add_argument("destination", help="the GeoTIFF to write, e.g. out.tif")
    export.add_argument("--item", help="the item of a batch output")
    export.add_argument("--bands", type=_band_list, help="bands, comma-separated (default all)")
    export.add_argument(
        "--dtype", help="convert every band to this type (needed when band types differ)"
    )
    export.add_argument("--compress", default="DEFLATE", help="DEFLATE (default), ZSTD, LZW, NONE")
    export.add_argument(
        "--resampling", default="nearest", help="for overviews: nearest (default), average, ..."
    )
    export.add_argument(
        "--partial", action="store_true", help="export an output that is not complete yet"
    )
    export.add_argument("--debug", action="store_true", help="show tracebacks")

    preview = commands.add_parser("preview", help="a quicklook PNG, from a decimated read")
    preview.add_argument("output", help="the output store")
    preview.add_argument("destination", help="the PNG to write, e.g. out.png")
    preview.add_argument("--item", help="the item of a batch output")
    preview.add_argument(
        "--bands", type=_band_list, help="one band (gray) or three (r,g,b); default: the first"
    )
    preview.add_argument(
        "--size", type=int, default=1024, help="longest side in pixels (default 1024)"
    )
    preview.add_argument(
        "--percentiles",
        type=_percentiles,
        default=(2.0, 98.0),
        help="the stretch, LOW,HIGH percentiles (default 2,98)",
    )
    preview.add_argument("--debug", action="store_true", help="show tracebacks")

    verify = commands.add_parser(
        "verify",
        help="re-read every stored chunk against its checksum; clear the tiles that fail "
        "(exit 0 ok, 1 damage found, 2 not a bulkpix output)",
    )
    verify.add_argument("output", help="the output store, or the job file that writes it")
    verify.add_argument("--debug", action="store_true", help="show tracebacks")

    schema = commands.add_parser("schema", help="print the job file's JSON Schema, for editors")
    schema.add_argument(
        "--markdown", action="store_true", help="the job reference as Markdown tables instead"
    )
    schema.add_argument("--debug", action="store_true", help="show tracebacks")

    expression = commands.add_parser(
        "expression",
        help="write a computed image's graph (for a job's expression:) from a Python snippet "
        "that builds `image` with earthengine-api",
    )
    expression.add_argument("snippet", help="a Python file; `ee` is initialized for it")
    expression.add_argument("-o", "--output", help="the JSON file to write (default: stdout)")
    expression.add_argument("--project", help="the Cloud project earthengine-api uses")
    expression.add_argument("--endpoint", help="a stand-in's URL, e.g. the emulator's")
    expression.add_argument("--debug", action="store_true", help="show tracebacks")

    commands.add_parser("emulator", help="serve the local Earth Engine stand-in", add_help=False)
    return parser


def _band_list(text: str) -> list[str]:
    bands = [b.strip() for b in text.split(",") if b.strip()]
    if not bands:
        raise argparse.ArgumentTypeError("give band ids, comma-separated")
    return bands


def _percentiles(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("give two numbers, LOW,HIGH (e.g. 2,98)") from None
    return low, high


# Keys of the job file a dash can override on `run` and `plan`: (flag, key, type, help).
_OVERRIDES: tuple[tuple[str, str, Any, str], ...] = (
    ("--output", "output", str, "the output store"),
    ("--asset", "asset", str, "the asset id"),
    ("--bands", "bands", lambda v: [b.strip() for b in v.split(",")], "bands, comma-separated"),
    ("--crs", "crs", str, "the output CRS"),
    ("--scale", "scale", float, "the output pixel size, in crs units"),
    ("--endpoint", "endpoint", str, "the service URL, or 'emulator'"),
    ("--project", "project", str, "the Cloud project charged"),
    ("--credentials", "credentials", str, "default, none, or a key file"),
    ("--concurrency", "concurrency", int, "requests in flight at most"),
    ("--qps", "qps", float, "requests per second at most"),
    ("--chunk", "chunk", int, "the Zarr chunk side, px"),
    ("--memory-mb", "memory_mb", int, "response bodies held at once, MB"),
    ("--workload-tag", "workload_tag", str, "the service's workload tag"),
)


def _add_job_overrides(command: argparse.ArgumentParser) -> None:
    group = command.add_argument_group(
        "overrides", "these replace the job file's key of the same name (batch: the shared one)"
    )
    for flag, key, kind, text in _OVERRIDES:
        group.add_argument(flag, dest=f"set_{key}", type=kind, metavar=key.upper(), help=text)
    group.add_argument("--bbox", dest="set_bbox", type=float, nargs=4,
                       metavar=("XMIN", "YMIN", "XMAX", "YMAX"), help="the region, a bbox")
    group.add_argument("--region-crs", dest="set_region_crs", metavar="CRS",
                       help="the CRS of --bbox (default EPSG:4326, lon/lat)")


def _job_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {
        key: getattr(args, f"set_{key}")
        for _, key, _, _ in _OVERRIDES
        if getattr(args, f"set_{key}", None) is not None
    }
    bbox = getattr(args, "set_bbox", None)
    region_crs = getattr(args, "set_region_crs", None)
    if region_crs is not None and bbox is None:
        raise JobError("--region-crs goes with --bbox")
    if bbox is not None:
        overrides["region"] = {"bbox": bbox, **({"region_crs": region_crs} if region_crs else {})}
    dask = getattr(args, "set_dask", None)
    if dask is not None:
        overrides["executor"] = {"dask": dask}
    return overrides


def _load(args: argparse.Namespace) -> Any:
    from bulkpix.job import load_job

    return load_job(args.job, overrides=_job_overrides(args))


class _Terminated(KeyboardInterrupt):
    """SIGTERM before the run's own handlers are in place: stop as Ctrl-C would."""


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    # Without this, a SIGTERM while bulkpix starts up (imports, job file, metadata) kills
    # it without a word. The run installs its own graceful handler once it starts.
    def terminate(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (a caller's thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "emulator" in argv and set(argv[: argv.index("emulator")]) <= {"--debug"}:
        # The emulator's CLI owns its flags; it is imported only when asked for.
        from bulkpix.emulator.cli import main as emulator_main

        return emulator_main(argv[argv.index("emulator") + 1 :])
    with _sigterm_stops():
        try:
            args = _build_parser().parse_args(argv)
            debug = bool(args.debug_global or getattr(args, "debug", False))
            return _dispatch(args, debug)
        except _Terminated:
            print("bulkpix: terminated (SIGTERM)", file=sys.stderr)
            return EXIT_INTERRUPTED
        except KeyboardInterrupt:
            print("bulkpix: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace, debug: bool) -> int:
    err = _console(stderr=True)
    try:
        if args.command == "run":
            return _run(args, err)
        if args.command == "plan":
            return _plan(args)
        if args.command == "export":
            return _export(args)
        if args.command == "preview":
            return _preview(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "expression":
            return _expression(args)
        if args.command == "schema":
            from bulkpix.schema import markdown_reference, schema_text

            sys.stdout.write(markdown_reference() if args.markdown else schema_text())
            return EXIT_OK
        return _status(args)
    except CredentialsMissing as exc:
        return _failed(exc, EXIT_NO_CREDENTIALS, debug)
    except (JobError, StoreMismatch) as exc:
        return _failed(exc, EXIT_USAGE, debug)
    except BulkpixError as exc:
        return _failed(exc, EXIT_FAILED, debug)
    except OSError as exc:  # the disk filled up, the output went away, ...
        text = f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}"
        return _failed(exc, EXIT_FAILED, debug, text)


def _expression(args: argparse.Namespace) -> int:
    import json

    from bulkpix.computed_run import graph_from_snippet

    graph = graph_from_snippet(Path(args.snippet), project=args.project, endpoint=args.endpoint)
    text = json.dumps(graph, indent=1) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return EXIT_OK


def _failed(exc: BaseException, code: int, debug: bool, text: str | None = None) -> int:
    """One line (after the traceback, with --debug); the exit code is the same either way."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    _fail(text if text is not None else exc)
    return code


def entry() -> NoReturn:
    """The ``bulkpix`` command: ``main``, then exit without tearing the interpreter down.

    Python's teardown (finalising every module and object left) took 0.25-0.45 s after the
    last write on two busy cores: most of the time from the last response to exit. When
    ``main`` returns, every write has been awaited and every file bulkpix wrote is closed,
    so the exit handlers run and the standard streams are flushed, and that is all.
    """
    # numpy's OpenBLAS starts a pool of spinning threads; bulkpix does no linear algebra.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # rasterio imports boto3 (120-160 ms of CPU) only to learn whether it is there; run
    # never uses it (rasterio loads on a worker thread, and touches no boto3 attribute).
    defer_import("boto3")
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe or stream: nothing more can be said anyway.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _console(*, stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        # Piped or captured: wide enough that tables keep whole asset names and paths.
        console = Console(stderr=stderr, highlight=False, width=160)
    return console


def _fail(exc: BaseException | str) -> None:
    # Plain print, not rich: one message must stay one line whatever the terminal width,
    # and whatever the message quotes (a multi-line repr, a server's text).
    print(f"bulkpix: error: {' '.join(str(exc).split())}", file=sys.stderr)


def _run(args: argparse.Namespace, err: Console) -> int:
    from bulkpix.pipeline import RunStats, run_job
    from bulkpix.progress import confirm_large_job, live_progress, print_summary

    job = _load(args)

    async def go(yes: bool) -> RunStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()
        assert main_task is not None

        def on_signal() -> None:
            if stop.is_set():  # a second Ctrl-C: stop now
                main_task.cancel()
            else:
                err.print(
                    "\nbulkpix: stopping: finishing the tiles in flight (Ctrl-C again to abort)",
                    markup=False,
                )
                stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        stats_ready: asyncio.Future[RunStats] = loop.create_future()
        def running() -> Coroutine[Any, Any, RunStats]:
            return run_job(job, restart=args.restart, stop=stop, stats_ready=stats_ready, yes=yes)

        if args.quiet:
            return await running()
        async with live_progress(err, stats_ready):
            return await running()

    try:
        try:
            stats = asyncio.run(go(args.yes))
        except JobTooLarge as exc:  # nothing written yet: ask (on a terminal), then go again
            if not confirm_large_job(err, exc):
                raise
            stats = asyncio.run(go(True))
    except asyncio.CancelledError:
        err.print(
            f"bulkpix: aborted; finished tiles are kept. Resume with: bulkpix run {args.job}",
            markup=False,
        )
        return EXIT_INTERRUPTED
    print_summary(err, stats, job.output)
    if stats.aborted is not None:
        _fail(f"{stats.aborted}; fix access, then rerun `bulkpix run {args.job}` to resume")
        return EXIT_FAILED
    abandoned = [item.abandoned for item in stats.items if item.abandoned]
    for why in abandoned:
        _fail(why)
    if abandoned:
        err.print(
            f"bulkpix: rerun `bulkpix run {args.job}` once access is fixed to fetch the rest",
            markup=False,
        )
        return EXIT_FAILED
    if stats.interrupted:
        err.print(
            f"bulkpix: interrupted; {stats.finished}/{stats.total} tiles are saved. "
            f"Resume with: bulkpix run {args.job}",
            markup=False,
        )
        return EXIT_INTERRUPTED
    if stats.failed:
        err.print(
            f"bulkpix: {stats.failed} tile(s) failed (listed above); rerun "
            f"`bulkpix run {args.job}` to retry only those",
            markup=False,
        )
        return EXIT_FAILED
    return EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    from bulkpix.pipeline import plan_job
    from bulkpix.planning import job_plan
    from bulkpix.progress import print_plan

    job = _load(args)
    # A plan is interactive: an unreachable server is reported in seconds, not after the
    # minute a run's full backoff would spend on it.
    retries = job.retries.model_copy(update={"max_attempts": min(job.retries.max_attempts, 3)})
    job = job.model_copy(update={"retries": retries})
    try:
        plans = asyncio.run(plan_job(job))
    except TransportError as exc:
        # A plan needs each asset's metadata (bands, types, grid): one GET per asset.
        raise TransportError(
            f"plan needs the asset's metadata from {job.endpoint}, and cannot reach it "
            f"({exc}); check the network, or plan against `endpoint: emulator` offline"
        ) from None
    print_plan(_console(), job_plan(plans, job))
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from bulkpix.readers.export import export_cog

    result = export_cog(
        args.output,
        args.destination,
        item=args.item,
        bands=args.bands,
        dtype=args.dtype,
        compress=args.compress,
        resampling=args.resampling,
        partial=args.partial,
    )
    nodata = "none" if result.nodata is None else result.nodata
    note = "" if result.complete else " (from an incomplete output)"
    print(
        f"wrote {result.path}: {result.width} x {result.height} px, bands "
        f"{', '.join(result.bands)}, {result.dtype}, nodata {nodata}{note}"
    )
    return EXIT_OK


def _preview(args: argparse.Namespace) -> int:
    from bulkpix.readers.preview import write_preview

    result = write_preview(
        args.output,
        args.destination,
        item=args.item,
        bands=args.bands,
        size=args.size,
        percentiles=args.percentiles,
    )
    print(f"wrote {result.path}: {result.width} x {result.height} px of {', '.join(result.bands)}")
    return EXIT_OK


def _output_of(output_or_job: str) -> str:
    """The output named on the command line, or the one a job file (a regular file) writes."""
    if "://" not in output_or_job and Path(output_or_job).is_file():
        from bulkpix.job import load_job

        return load_job(output_or_job).output
    return output_or_job


def _status(args: argparse.Namespace) -> int:
    from bulkpix.status import print_status, read_status

    report = asyncio.run(read_status(_output_of(args.output)))
    print_status(_console(), report)
    return EXIT_OK if report.complete else EXIT_FAILED


def _verify(args: argparse.Namespace) -> int:
    from bulkpix.store.verify import verify_output

    report = asyncio.run(verify_output(_output_of(args.output)))
    out = _console()
    checked = sum(item.tiles for item in report.items)
    chunks = sum(item.chunks for item in report.items)
    unverified = sum(item.unverified for item in report.items)
    for what in report.damage:
        out.print(f"damaged: {what}", markup=False)
    for item in report.items:
        for bad in item.bad:
            out.print(
                f"bad chunk: item {item.label}, tile {bad.tile}, {bad.chunk}: {bad.why}",
                markup=False,
            )
    bad_tiles = sum(len(item.cleared) for item in report.items)
    out.print(
        f"verified {checked} tile(s), {chunks} chunk(s)"
        + (f"; {unverified} tile(s) recorded without checksums" if unverified else ""),
        markup=False,
    )
    if bad_tiles:
        out.print(
            f"{bad_tiles} tile(s) failed and were cleared: rerun the job to fetch them again",
            markup=False,
        )
    if report.damage:
        out.print(
            "`bulkpix run --restart` discards the damaged output and starts again", markup=False
        )
    return EXIT_OK if report.ok else EXIT_FAILED


if __name__ == "__main__":
    entry()
