"""Reading the small files a job names (the job itself, a region, a key file), bounded.

A path in a job can name anything: ``/dev/zero`` would be read until memory runs out, and a
FIFO would block the run forever. These helpers read only what is meant to be read, and
never more than a documented size.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = [
    "CREDENTIALS_FILE_MAX_BYTES",
    "JOB_FILE_MAX_BYTES",
    "REGION_FILE_MAX_BYTES",
    "FileRefused",
    "read_bounded",
    "read_job_named_file",
]

JOB_FILE_MAX_BYTES = 1 * 2**20  # 1 MiB: a job with thousands of batch items fits
REGION_FILE_MAX_BYTES = 64 * 2**20  # 64 MiB of GeoJSON: a detailed country outline fits
CREDENTIALS_FILE_MAX_BYTES = 64 * 2**10  # a service-account key is about 2.3 KiB


class FileRefused(OSError):
    """The path is not a regular file, or it is larger than allowed; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _size_text(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit // 2**10} KiB"


def read_bounded(path: Path, limit: int, *, regular_only: bool = True) -> bytes:
    """The bytes of ``path``, refusing anything over ``limit`` bytes.

    ``regular_only`` refuses devices, FIFOs and sockets before reading a byte (the open does
    not block on a FIFO). Without it (the job file, which a shell may hand over as
    ``<(...)``), a stream is read up to ``limit`` bytes and refused past that.
    Raises ``FileRefused`` or the ``OSError`` of the open (``FileNotFoundError`` ...).
    """
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    if regular_only:
        flags |= getattr(os, "O_NONBLOCK", 0)  # opening a FIFO must not wait for a writer
    if "\0" in str(path):
        raise FileRefused("the path holds a NUL character")  # os.open: ValueError
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        if regular_only and not stat.S_ISREG(info.st_mode):
            raise FileRefused("not a regular file")
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise FileRefused(f"larger than {_size_text(limit)}")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileRefused(f"larger than {_size_text(limit)}")
    return data


def read_job_named_file(path: Path, limit: int, what: str) -> bytes:
    """``read_bounded`` for a file a job names (a region, an expression): every refusal is
    one ``JobError`` line starting with ``what`` and the path."""
    from bulkpix.errors import JobError

    where = f"{what} {path}"
    try:
        return read_bounded(path, limit)
    except IsADirectoryError:
        raise JobError(f"{where}: is a directory") from None
    except FileRefused as exc:
        raise JobError(f"{where}: {exc.reason}") from None
    except OSError as exc:
        raise JobError(f"{where}: cannot read it ({exc.strerror})") from None
