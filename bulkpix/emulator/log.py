"""The request log: one record per call, kept in memory and appended as JSON lines."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

__all__ = ["LOG_FIELDS", "RequestLog"]

LOG_FIELDS = (
    "time", "method", "path", "op", "asset", "crs", "affine", "width", "height", "col_off",
    "row_off", "bands", "format", "status", "response_bytes", "request_size", "service_s",
    "fault", "workload_tag", "in_flight",
)


class RequestLog:
    """Records of calls; ``records`` is the list the emulator exposes as ``emu.log``."""

    def __init__(self, path: str | None) -> None:
        self.records: list[dict[str, Any]] = []
        self._path = Path(path) if path else None
        self._lock = threading.Lock()
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def new_record(**fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = dict.fromkeys(LOG_FIELDS)
        record.update(fields)
        return record

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self._path is not None:
            line = json.dumps(record, separators=(",", ":")) + "\n"
            with self._lock, self._path.open("a", encoding="utf-8") as file:
                file.write(line)
