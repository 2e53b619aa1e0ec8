"""The emulator in its own process (the ``bulkpix emulator`` CLI), so its CPU is not the
clients', and its request log (JSON lines) sliced per client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

__all__ = ["EmulatorProcess", "EmulatorSettings", "bulkpix_command"]

_LISTENING = "listening on "


def bulkpix_command() -> list[str]:
    """``bulkpix`` as ``python -m bulkpix``: the checkout on ``sys.path`` runs, whatever
    console script an older install left in the environment."""
    return [sys.executable, "-m", "bulkpix"]


@dataclass(frozen=True)
class EmulatorSettings:
    """One scenario's service: quotas, service-time model and the synthetic assets."""

    assets: tuple[tuple[str, int, int], ...]  # (name, width, height)
    max_concurrent: int = 40
    max_qps: float = 100.0
    service_base_s: float = 0.0
    service_per_mb_s: float = 0.0
    service_jitter: float = 0.1
    seed: int = 0

    def argv(self, log_path: Path) -> list[str]:
        args = ["--port", "0", "--max-concurrent", str(self.max_concurrent),
                "--max-qps", str(self.max_qps), "--service-base", str(self.service_base_s),
                "--service-per-mb", str(self.service_per_mb_s),
                "--service-jitter", str(self.service_jitter), "--seed", str(self.seed),
                "--log", str(log_path)]
        for name, width, height in self.assets:
            args += ["--synthetic", f"{name}:{width}x{height}"]
        return args

    def describe(self) -> dict[str, Any]:
        return {"max_concurrent": self.max_concurrent, "max_qps": self.max_qps,
                "service_base_s": self.service_base_s,
                "service_per_mb_s": self.service_per_mb_s,
                "service_jitter": self.service_jitter,
                "assets": {name: f"{w}x{h}" for name, w, h in self.assets}}


class EmulatorProcess:
    """``with EmulatorProcess(settings, workdir) as emu: emu.url, emu.records(t0, t1)``."""

    def __init__(self, settings: EmulatorSettings, workdir: Path,
                 startup_timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.log_path = workdir / "emulator-log.jsonl"
        self._stderr_path = workdir / "emulator.stderr"
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[str] | None = None
        self.url = ""
        self.last_client_end = 0.0  # epoch seconds; clients keep a quiet gap after it

    def __enter__(self) -> EmulatorProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        argv = [*bulkpix_command(), "emulator", *self.settings.argv(self.log_path)]
        with self._stderr_path.open("w") as stderr:
            self._process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr,
                                             text=True)
        self.url = self._wait_for_url()
        return self

    def _wait_for_url(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        deadline = time.monotonic() + self._startup_timeout_s
        # The CLI prints one line once the port is bound; port 0 means the OS picked one.
        while time.monotonic() < deadline:
            line = self._process.stdout.readline()
            if not line:  # exited
                break
            if _LISTENING in line:
                return line.split(_LISTENING, 1)[1].strip()
        self.__exit__(None, None, None)
        raise RuntimeError(f"the emulator did not start: {self._stderr_path.read_text()[-2000:]}")

    def __exit__(self, *exc_info: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def cpu_s(self) -> float:
        """The emulator's CPU seconds so far (user + sys): on a small machine the server
        competes with the client for cores, so it is reported next to the client's."""
        if self._process is None:
            return 0.0
        times = psutil.Process(self._process.pid).cpu_times()
        return times.user + times.system

    def records(self, since: float, until: float) -> list[dict[str, Any]]:
        """Log records of calls that arrived within [since, until] (epoch seconds)."""
        if not self.log_path.exists():
            return []
        with self.log_path.open(encoding="utf-8") as file:
            records = [json.loads(line) for line in file if line.strip()]
        return [r for r in records if since <= r["time"] <= until]
