"""Run one client in its own process and measure it: wall time, CPU time, peak RSS.

CPU and RSS come from ``os.wait4`` on that very child, so neither the emulator (another
process) nor the harness is counted. A child reports what it delivered as JSON in a file.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ChildFailed", "ChildRun", "run_child"]


class ChildFailed(RuntimeError):
    """A client exited with an error (or was killed on timeout)."""


@dataclass
class ChildRun:
    """What one client process cost; ``started``/``ended`` are epoch seconds (log clock)."""

    name: str
    returncode: int
    started: float
    ended: float
    wall_s: float
    user_s: float
    sys_s: float
    peak_rss_mb: float
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def run_child(name: str, argv: Sequence[str], workdir: Path, *, timeout_s: float,
              env: Mapping[str, str] | None = None, cwd: Path | None = None,
              result_path: Path | None = None) -> ChildRun:
    """Run ``argv`` to completion; raise ChildFailed (with its stderr) if it fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
    child_env = dict(os.environ if env is None else env)
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        started = time.time()
        t0 = time.perf_counter()
        process = subprocess.Popen(list(argv), stdout=out, stderr=err, env=child_env, cwd=cwd)
        # A watchdog, because wait4 itself has no timeout.
        timer = threading.Timer(timeout_s, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): leave no client running behind the harness.
            process.kill()
            process.wait()
            raise
        finally:
            timer.cancel()
        wall_s = time.perf_counter() - t0
        ended = time.time()
    returncode = os.waitstatus_to_exitcode(status)
    process.returncode = returncode  # reaped already: keep Popen from waiting again
    if returncode != 0:
        raise ChildFailed(f"{name} exited with {returncode} after {wall_s:.1f} s "
                          f"(timeout {timeout_s:.0f} s): {_tail(stderr_path)}")
    result: dict[str, Any] = {}
    if result_path is not None:
        try:
            result = json.loads(result_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ChildFailed(f"{name} wrote no result ({exc}): {_tail(stderr_path)}") from None
    return ChildRun(name=name, returncode=returncode, started=started, ended=ended,
                    wall_s=wall_s, user_s=usage.ru_utime, sys_s=usage.ru_stime,
                    peak_rss_mb=usage.ru_maxrss * 1024 / 1e6,  # ru_maxrss is in KiB on Linux
                    result=result)
