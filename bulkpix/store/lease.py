"""The output's lease: which run may write into it, kept as one object in the store itself.

``{output}/.bulkpix/lease.json`` names the job that holds the output (a hash of its
fingerprints), whether the holder is exclusive (a ``--restart``, ``verify``), and the run that
renewed it last: run id, host, pid, since, and an expiry in wall-clock seconds.

- The zarr Store API (get, set, set_if_not_exists, delete), so the same code works on a
  local disk and on object stores, with conditional replaces where the store allows them
  (below). A new lease is created with ``set_if_not_exists`` and read back; whoever's run id
  is read back holds it.
- Runs of the SAME job (not exclusive) share the lease: each renews it with its own details,
  so cooperating workers (several processes, Dask) can write one output together. The
  document lists every such run as a holder, each with its own expiry; a run that ends takes
  itself off the list and deletes the lease only when no other holder is live, so a run of
  another job cannot take the output while one of the cooperating runs still writes. A run
  of a different job, or any exclusive run, is refused with ``OutputInUse`` while the lease
  is live.
- A lease is stale once every holder expired or, for an output on this machine (a local
  path, memory), being on this host, has no process any more; a stale lease is taken over.
  On an object store holders may run on any machine: only their expiry counts.
- The holder renews every ``ttl / 4``. When a renewal finds the lease held by another job,
  or no renewal succeeded for a whole ``ttl``, ``check()`` raises ``LeaseLost``; the tile
  record calls it before writing every marker, so a run that lost its lease stops before
  recording anything more.

On an object store opened through obstore (``bulkpix.store.cloud.CloudStore``) every change is
conditional: the lease is created with one conditional PUT (``If-None-Match: *``), and
renewals, joins, releases and take-overs of a stale lease replace it only if it is still the
version read (``If-Match``; a GCS generation), re-reading on a conflict. Two runs cannot both
create it or both take it over, and holders renewing at the same instant both stay listed.
An S3-compatible server without conditional updates gets plain puts (below).

On a local disk (zarr's ``LocalStore``) the same conditional path is used: a document's version
is the sha256 of its bytes, and each conditional replace or delete is made under an exclusive
``flock`` on ``.bulkpix/lease.lock`` (taken in a worker thread, held only for the compare and
the rename; the file stays, so there is no race on the lock file itself). Reads take no lock:
every write is a rename, so a read is never torn. The last holder's release deletes the lease
conditionally too, so the entry of a run joining at that instant is not deleted with it.
``flock`` also covers NFS on Linux (the kernel maps it to POSIX locks); a memory store changes
the lease with no await between its read and its write, so it needs none.

Elsewhere (fsspec stores: today's behaviour) the holder list is read-modify-written: two
holders renewing at the same instant can drop one's newest entry (its previous one stays until
it expires, and it writes itself back at its next renewal); a run that joins reads its entry
back, and writes it again, before it starts. Where the store's create-if-absent is
check-then-put (fsspec's s3fs, gcsfs ...), a new lease is read back only after ``settle_s``
(1 s), so that of two runs creating it at the same moment both read the same winner. Limit:
there, taking over a STALE lease is delete-then-create; two runs doing so at the same instant
can still both read themselves back; the loser finds out at its first renewal (at most
``ttl / 4``) and stops before writing another chunk or marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore, MemoryStore, ObjectStore

from bulkpix.errors import LeaseLost, OutputInUse
from bulkpix.store.cloud import CloudStore, Version, inner_store
from bulkpix.store.location import RECORD_DIR

if sys.platform != "win32":
    import fcntl

__all__ = [
    "DEFAULT_TTL_S",
    "LEASE_KEY",
    "LEASE_LOCK_KEY",
    "Holder",
    "Lease",
    "LeaseInfo",
    "LocalVersions",
    "read_lease",
]

LEASE_KEY = f"{RECORD_DIR}/lease.json"
# Locked around each conditional change of the lease on a local disk. It stays (only a
# directory a refused run made, holding nothing else, is removed with it).
LEASE_LOCK_KEY = f"{RECORD_DIR}/lease.lock"
DEFAULT_TTL_S = 60.0
_ACQUIRE_ATTEMPTS = 5


@dataclass(frozen=True)
class Holder:
    """One run holding the lease."""

    run_id: str
    host: str
    pid: int
    since: str
    expires: float

    def live(self, now: float, check_pid: bool = True) -> bool:
        """Unexpired, and (``check_pid``: for an output on this machine's disk or memory) its
        process still there when it ran on this host."""
        if self.expires <= now:
            return False
        if not check_pid:
            return True
        # A run on this host whose process is gone holds nothing, whatever its expiry says.
        return not (self.host == socket.gethostname() and not _pid_alive(self.pid))


@dataclass(frozen=True)
class LeaseInfo:
    """One lease document as stored."""

    run_id: str
    job: str
    exclusive: bool
    host: str
    pid: int
    since: str  # ISO time the renewing run started
    expires: float  # wall-clock seconds (time.time())
    # Every run of the job holding it (the renewing one too); none listed: that run alone.
    holders: tuple[Holder, ...] = ()

    def all_holders(self) -> tuple[Holder, ...]:
        if self.holders:
            return self.holders
        return (Holder(self.run_id, self.host, self.pid, self.since, self.expires),)

    def live(self, now: float, check_pid: bool = True) -> bool:
        return any(holder.live(now, check_pid) for holder in self.all_holders())

    def describe(self) -> str:
        what = "an exclusive run (--restart or verify)" if self.exclusive else "a run"
        return f"{what} on host {self.host}, pid {self.pid}, since {self.since}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LeaseInfo | None:
        try:
            value = json.loads(data)
            holders = tuple(
                Holder(
                    run_id=str(h["run_id"]),
                    host=str(h["host"]),
                    pid=int(h["pid"]),
                    since=str(h["since"]),
                    expires=float(h["expires"]),
                )
                for h in value.get("holders", ())
            )
            return cls(
                run_id=str(value["run_id"]),
                job=str(value["job"]),
                exclusive=bool(value["exclusive"]),
                host=str(value["host"]),
                pid=int(value["pid"]),
                since=str(value["since"]),
                expires=float(value["expires"]),
                holders=holders,
            )
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
            return None  # torn or foreign: holds nothing


async def read_lease(store: Store) -> tuple[bool, LeaseInfo | None]:
    """(whether a lease object exists, its content when it parses)."""
    buffer = await store.get(LEASE_KEY, prototype=default_buffer_prototype())
    if buffer is None:
        return False, None
    return True, LeaseInfo.from_json(buffer.to_bytes())


class _Versioned(Protocol):
    """A store that can replace an object only if it is still the version read."""

    async def get_versioned(self, key: str) -> tuple[bytes, Version] | None: ...

    async def set_if_version(self, key: str, value: bytes, version: Version) -> bool: ...


class LocalVersions:
    """``CloudStore``'s conditional replace for a directory on a local disk: the version is the
    sha256 of the bytes, compared and replaced under an exclusive ``flock`` on
    ``LEASE_LOCK_KEY``. Every write is a rename, so reads need no lock."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def get_versioned(self, key: str) -> tuple[bytes, Version] | None:
        try:
            data = await asyncio.to_thread((self.root / key).read_bytes)
        except FileNotFoundError:
            return None
        return data, _digest(data)

    async def set_if_version(self, key: str, value: bytes, version: Version) -> bool:
        return await asyncio.to_thread(self._change_if, key, value, version)

    async def delete_if_version(self, key: str, version: Version) -> bool:
        return await asyncio.to_thread(self._change_if, key, None, version)

    def _change_if(self, key: str, value: bytes | None, version: Version) -> bool:
        """In a worker thread: the lock is held for the compare and the rename only."""
        path = self.root / key
        with self._locked():
            try:
                if _digest(path.read_bytes()) != version:
                    return False
            except FileNotFoundError:
                return False
            if value is None:
                path.unlink()
                return True
            # The name zarr's LocalStore gives its temp files: one left by a crash is tidied.
            temp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
            try:
                temp.write_bytes(value)
                os.replace(temp, path)
            finally:
                temp.unlink(missing_ok=True)
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.root / LEASE_LOCK_KEY
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def _digest(data: bytes) -> Version:
    return Version(hashlib.sha256(data).hexdigest(), None)


class Lease:
    """``async with Lease(store, job, exclusive=...) as lease:`` holds the output; use
    ``lease.check`` as the tile record's guard."""

    def __init__(
        self,
        store: Store,
        job: str,
        *,
        exclusive: bool = False,
        output: str = "the output",
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
        settle_s: float | None = None,
    ) -> None:
        self.store = store
        self.job = job
        self.exclusive = exclusive
        self.output = output
        self.ttl_s = ttl_s
        self.clock = clock  # wall clock: expiries are compared across processes and hosts
        # This run's own deadline: immune to clock steps, and counting time asleep (a run
        # suspended past its expiry must find out before it writes again).
        self.monotonic = monotonic or _boot_clock
        self.run_id = uuid.uuid4().hex
        self.since = datetime.now(UTC).isoformat(timespec="seconds")
        # Local and in-memory stores create atomically (os.link, setdefault), an fsspec
        # memory filesystem lives in this process alone, and obstore's create is one
        # conditional PUT (If-None-Match): nothing to wait for.
        inner = inner_store(store)
        machine_local = isinstance(inner, LocalStore | MemoryStore) or _in_process(inner)
        atomic = machine_local or isinstance(inner, ObjectStore)
        self.settle_s = settle_s if settle_s is not None else (0.0 if atomic else 1.0)
        # A pid says whether a holder lives only where the output is this machine's: an
        # object store's holders run anywhere (same-named containers, other pid namespaces),
        # and there a holder lives exactly as long as its expiry.
        self.check_pid = machine_local
        # Renewals, joins, releases and take-overs replace the document only if unchanged
        # since read: on object stores by the store's own conditional put, on a local disk
        # under a file lock (no flock on Windows: the read-modify-write stays there).
        self._versioned: _Versioned | None = None
        if isinstance(inner, CloudStore):
            self._versioned = inner
        elif isinstance(inner, LocalStore) and sys.platform != "win32":
            self._versioned = LocalVersions(inner.root)
        self.joined = False  # True: another run of this job held it when this one started
        self._lost: str | None = None
        self._valid_until = 0.0  # monotonic(): no renewal for a whole ttl means lost
        self._renewer: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- holding

    def _mine(self, current: LeaseInfo | None = None) -> LeaseInfo:
        """The document with this run renewing it, and the other live holders of ``current``
        (a lease of this job that it shares) kept."""
        now = self.clock()
        me = Holder(self.run_id, socket.gethostname(), os.getpid(), self.since, now + self.ttl_s)
        others: tuple[Holder, ...] = ()
        if current is not None and self._shares_with(current) and not self.exclusive:
            others = tuple(
                h
                for h in current.all_holders()
                if h.run_id != self.run_id and h.live(now, self.check_pid)
            )
        return LeaseInfo(
            run_id=me.run_id,
            job=self.job,
            exclusive=self.exclusive,
            host=me.host,
            pid=me.pid,
            since=me.since,
            expires=me.expires,
            holders=(me, *others),
        )

    def _shares_with(self, other: LeaseInfo) -> bool:
        return other.run_id == self.run_id or (
            not self.exclusive and not other.exclusive and other.job == self.job
        )

    async def _read(self) -> tuple[bool, LeaseInfo | None, Version | None]:
        """``read_lease``, and the document's version where the store can replace it
        conditionally."""
        if self._versioned is None:
            return (*await read_lease(self.store), None)
        found = await self._versioned.get_versioned(LEASE_KEY)
        if found is None:
            return False, None, None
        return True, LeaseInfo.from_json(found[0]), found[1]

    async def _replace(self, document: LeaseInfo, version: Version | None) -> bool:
        """Write ``document``; where the store can, only over the version read (False: it
        changed since, nothing written)."""
        data = document.to_json()
        if self._versioned is not None and version is not None:
            try:
                return await self._versioned.set_if_version(LEASE_KEY, data, version)
            except NotImplementedError:  # an S3-compatible without If-Match: plain puts
                self._versioned = None
        await self.store.set(LEASE_KEY, default_buffer_prototype().buffer.from_bytes(data))
        return True

    async def _write(self, current: LeaseInfo | None, version: Version | None = None) -> bool:
        if not await self._replace(self._mine(current), version):
            return False
        self._valid_until = self.monotonic() + self.ttl_s
        return True

    async def _create(self) -> bool:
        """Create the lease if none exists; True if this run's is the one read back."""
        data = default_buffer_prototype().buffer.from_bytes(self._mine().to_json())
        await self.store.set_if_not_exists(LEASE_KEY, data)
        if self.settle_s:
            await asyncio.sleep(self.settle_s)
        _, now_held = await read_lease(self.store)
        if now_held is not None and now_held.run_id == self.run_id:
            self._valid_until = self.monotonic() + self.ttl_s
            return True
        return False

    async def acquire(self) -> None:
        """Hold (or join) the lease; ``OutputInUse`` naming the holder when it is live."""
        for _ in range(_ACQUIRE_ATTEMPTS):
            exists, current, version = await self._read()
            if not exists:
                if await self._create():
                    return
                continue
            if current is not None and current.live(self.clock(), self.check_pid):
                if not self._shares_with(current):
                    raise OutputInUse(
                        f"output {self.output} is in use by {current.describe()}; wait for "
                        "it to finish or stop it (a lease left by a dead run expires "
                        f"{self.ttl_s:.0f} s after its last renewal)"
                    )
                self.joined = current.run_id != self.run_id
                if await self._write(current, version) and await self._listed():
                    return
                continue  # a holder renewing at the same instant wrote over this run's entry
            # Stale (expired, its process gone) or unreadable: take it over. Where the store
            # replaces conditionally, in one step that only one of several runs can make.
            if version is not None and self._versioned is not None:
                if await self._write(None, version):
                    return
                continue
            with contextlib.suppress(FileNotFoundError):
                await self.store.delete(LEASE_KEY)
        raise OutputInUse(f"output {self.output}: could not take its lease (others kept taking it)")

    async def renew(self) -> None:
        """Extend the lease, or note that it was lost (``check`` then raises)."""
        for _ in range(_ACQUIRE_ATTEMPTS):
            if await self._renew_once():
                return

    async def _renew_once(self) -> bool:
        """One renewal; False when another holder changed the lease in between (retry)."""
        if self._lost is not None:
            return True
        exists, current, version = await self._read()
        if not exists:
            # A run sharing it released it on exit: carry it on, unless another took it.
            if not await self._create():
                _, current = await read_lease(self.store)
                if current is None or not self._shares_with(current):
                    self._lost = current.describe() if current else "an unreadable lease"
            return True
        if current is None or not self._shares_with(current):
            self._lost = current.describe() if current else "an unreadable lease"
            return True
        return await self._write(current, version)

    async def _listed(self) -> bool:
        _, current = await read_lease(self.store)
        return current is not None and any(h.run_id == self.run_id for h in current.all_holders())

    def check(self) -> None:
        """Raise ``LeaseLost`` unless this run still holds the lease."""
        if self._lost is not None:
            raise LeaseLost(
                f"output {self.output}: this run lost its lease to {self._lost}; "
                "it stopped before writing more"
            )
        if self.monotonic() > self._valid_until:
            raise LeaseLost(
                f"output {self.output}: the lease could not be renewed for {self.ttl_s:.0f} s; "
                "this run stopped before writing more"
            )

    async def release(self) -> None:
        """Take this run off the lease; delete it when no other holder is live (one that
        may still be writing keeps it, renewing it as its own)."""
        with contextlib.suppress(OSError):
            for _ in range(_ACQUIRE_ATTEMPTS):
                if await self._release_once():
                    return

    async def _release_once(self) -> bool:
        """False when another holder changed the lease in between (retry)."""
        _, current, version = await self._read()
        if current is None or not any(h.run_id == self.run_id for h in current.all_holders()):
            return True  # not this run's lease any more: left alone
        now = self.clock()
        others = [
            h
            for h in current.all_holders()
            if h.run_id != self.run_id and h.live(now, self.check_pid)
        ]
        if not others:
            if isinstance(self._versioned, LocalVersions) and version is not None:
                # Not over a run that joined since the read (object stores have no
                # conditional delete; there a joining run finds the lease gone and makes it again).
                return await self._versioned.delete_if_version(LEASE_KEY, version)
            await self.store.delete(LEASE_KEY)
            return True
        latest = max(others, key=lambda h: h.expires)
        left = replace(
            current,
            run_id=latest.run_id,
            host=latest.host,
            pid=latest.pid,
            since=latest.since,
            expires=latest.expires,
            holders=tuple(others),
        )
        return await self._replace(left, version)

    # ---------------------------------------------------------------- context manager

    async def _renew_forever(self) -> None:
        while self._lost is None:
            await asyncio.sleep(self.ttl_s / 4)
            # A failed renewal (a store hiccup) is retried next time; ``check`` gives up
            # once a whole ttl passed without one.
            with contextlib.suppress(OSError):
                await self.renew()

    async def __aenter__(self) -> Lease:
        await self.acquire()
        self._renewer = asyncio.create_task(self._renew_forever(), name="bulkpix-lease")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._lost is None:
            await self.release()


def _in_process(store: Store) -> bool:
    protocol = getattr(getattr(store, "fs", None), "protocol", ())
    return "memory" in ((protocol,) if isinstance(protocol, str) else tuple(protocol))


def _boot_clock() -> float:
    if hasattr(time, "CLOCK_BOOTTIME"):  # Linux: monotonic, and counts suspend
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or cannot tell: assume alive)
    return True


def job_token(parts: Any) -> str:
    """A short, stable hash of a job's fingerprints: what 'the same job' means to the lease."""
    data = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:16]
