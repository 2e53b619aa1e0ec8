"""``bulkpix emulator``: serve assets until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
from typing import NoReturn

from bulkpix.emulator.config import (
    ComputeConfig,
    EmulatorConfig,
    FaultConfig,
    FileCollection,
    SyntheticAsset,
    SyntheticCollection,
)
from bulkpix.emulator.server import run_emulator

__all__ = ["build_parser", "main"]

_SYNTHETIC = re.compile(r"(?P<name>.+):(?P<width>\d+)x(?P<height>\d+)")
_COLLECTION = re.compile(
    r"(?P<name>[^:@]+):(?P<rows>\d+)x(?P<cols>\d+)x(?P<dates>\d+)(?::(?P<size>\d+))?"
    r"(?:@(?P<crs>.+))?"
)


class _UsageError(Exception):
    """A bad argument; reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage dump
        raise _UsageError(message)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1]")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bulkpix emulator",
                     description="A stand-in Earth Engine REST server for getPixels.")
    add = parser.add_argument
    add("--asset", action="append", default=[], metavar="NAME=PATH[,PATH...]",
        help="file-backed asset: bands of the files (one grid) concatenated; repeatable")
    add("--synthetic", action="append", default=[], metavar="NAME:WIDTHxHEIGHT",
        help="synthetic asset (bands u8, i16, u16, f32) of that size; repeatable")
    add("--collection", action="append", default=[],
        metavar="NAME:ROWSxCOLSxDATES[:TILE_PX][@CRS,CRS...]",
        help="synthetic tiled collection: rows x cols tiles of TILE_PX (default 512) at 30 m, "
             "over DATES days from 2024-01-01, its grid repeated in each CRS (default "
             "EPSG:32633); repeatable")
    add("--forbidden", action="append", default=[], metavar="NAME",
        help="asset name answered with 403; repeatable")
    add("--token", help="bearer token every API call must carry (default: none checked)")
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=8731)
    add("--max-concurrent", type=int, default=40, help="concurrent calls before 429 (0: no cap)")
    add("--max-qps", type=_non_negative, default=100.0,
        help="the rate quota in calls per second (0: no cap)")
    add("--qps-window", choices=["minute", "second"], default="minute",
        help="count the rate quota as max-qps x 60 per rolling minute, as the service does "
             "(default), or strictly per rolling second")
    add("--service-base", type=_non_negative, default=0.0, metavar="SECONDS",
        help="service time of every getPixels call")
    add("--service-per-mb", type=_non_negative, default=0.0, metavar="SECONDS",
        help="extra service time per MB (1e6 bytes) of counted request size")
    add("--service-jitter", type=_probability, default=0.1, metavar="FRACTION")
    add("--seed", type=int, default=0, help="seed of fault and jitter draws")
    add("--fault-500", type=_probability, default=0.0, metavar="P")
    add("--fault-503", type=_probability, default=0.0, metavar="P")
    add("--fault-429", type=_probability, default=0.0, metavar="P")
    add("--retry-after-share", type=_probability, default=0.0, metavar="SHARE",
        help="share of injected 429s that carry Retry-After")
    add("--retry-after", type=_non_negative, default=1.0, metavar="SECONDS")
    add("--fault-reset", type=_probability, default=0.0, metavar="P",
        help="drop the connection before answering")
    add("--fault-truncate", type=_probability, default=0.0, metavar="P",
        help="send half the body, then drop the connection")
    add("--fault-stall", type=_probability, default=0.0, metavar="P",
        help="send headers, then nothing for --stall-seconds")
    add("--stall-seconds", type=_non_negative, default=30.0)
    add("--bandwidth", type=_non_negative, default=None, metavar="BYTES_PER_S",
        help="pace every getPixels body to this rate")
    add("--fault-400", type=_probability, default=0.0, metavar="P",
        help="answer 400 INVALID_ARGUMENT (permanent)")
    add("--fault-403", type=_probability, default=0.0, metavar="P",
        help="answer 403 PERMISSION_DENIED (permanent)")
    add("--fault-404", type=_probability, default=0.0, metavar="P",
        help="answer 404 NOT_FOUND (permanent)")
    add("--max-request-bytes", type=int, default=50_331_648, metavar="BYTES",
        help="the request-size limit (lower it to play a service that counts differently)")
    add("--compute-memory-limit", type=int, default=None, metavar="PIXELS",
        help="computePixels over this many pixels: 400 'User memory limit exceeded.'")
    add("--compute-timeout", type=int, default=None, metavar="PIXELS",
        help="computePixels over this many pixels: 400 'Computation timed out.'")
    add("--compute-max-concurrent", type=int, default=None, metavar="N",
        help="computations at once before 429 'Too many concurrent aggregations.'")
    add("--compute-budget", type=int, default=None, metavar="PIXELS",
        help="after this many computed pixels, answer with the header "
             "x-earth-engine-quota-status: parallelism_restricted=true")
    add("--log", metavar="PATH", help="append one JSON line per call to PATH")
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    assets: dict[str, list[str]] = {}
    for spec in args.asset:
        name, sep, paths = spec.partition("=")
        if not sep or not name or not paths:
            raise _UsageError(f"--asset {spec!r}: expected NAME=PATH[,PATH...]")
        assets[name] = [p for p in paths.split(",") if p]
    synthetic: dict[str, SyntheticAsset] = {}
    for spec in args.synthetic:
        match = _SYNTHETIC.fullmatch(spec)
        if match is None:
            raise _UsageError(f"--synthetic {spec!r}: expected NAME:WIDTHxHEIGHT")
        synthetic[match["name"]] = SyntheticAsset(int(match["width"]), int(match["height"]))
    collections: dict[str, SyntheticCollection | FileCollection] = {}
    for spec in args.collection:
        match = _COLLECTION.fullmatch(spec)
        if match is None:
            raise _UsageError(
                f"--collection {spec!r}: expected NAME:ROWSxCOLSxDATES[:TILE_PX][@CRS,CRS...]")
        crs = tuple(match["crs"].split(",")) if match["crs"] else ("EPSG:32633",)
        size = int(match["size"] or 512)
        try:
            collections[match["name"]] = SyntheticCollection(
                tiles=(int(match["rows"]), int(match["cols"])), dates=int(match["dates"]),
                tile_size=size, overlap=min(32, size - 1), crs=crs)
        except ValueError as exc:
            raise _UsageError(f"--collection {spec!r}: {exc}") from None
    if not assets and not synthetic and not collections:
        raise _UsageError(
            "nothing to serve: give at least one --asset, --synthetic or --collection")
    faults = FaultConfig(
        p500=args.fault_500, p503=args.fault_503, p429=args.fault_429,
        retry_after_share=args.retry_after_share, retry_after_s=args.retry_after,
        p_reset=args.fault_reset, p_truncate=args.fault_truncate, p_stall=args.fault_stall,
        stall_s=args.stall_seconds, bandwidth_bps=args.bandwidth or None,
        p400=args.fault_400, p403=args.fault_403, p404=args.fault_404)
    return EmulatorConfig(
        assets=assets, synthetic=synthetic, collections=collections,
        forbidden=set(args.forbidden), token=args.token,
        max_concurrent=args.max_concurrent or None, max_qps=args.max_qps or None,
        qps_window=args.qps_window,
        service_base_s=args.service_base, service_per_mb_s=args.service_per_mb,
        service_jitter=args.service_jitter, seed=args.seed, faults=faults, log_path=args.log,
        max_request_bytes=args.max_request_bytes,
        compute=ComputeConfig(memory_limit_pixels=args.compute_memory_limit,
                              timeout_pixels=args.compute_timeout,
                              max_concurrent=args.compute_max_concurrent,
                              budget_pixels=args.compute_budget),
        host=args.host, port=args.port)


async def _serve(config: EmulatorConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on every platform
            loop.add_signal_handler(signum, stop.set)
    async with run_emulator(config) as emulator:
        print(f"bulkpix emulator listening on {emulator.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        config = config_from_args(parser.parse_args(argv))
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except (_UsageError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config))
    except (ValueError, OSError) as exc:  # unreadable asset file, port in use
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
