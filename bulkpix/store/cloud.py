"""Object-store outputs (``s3://``, ``gs://``, ``az://`` ...) through zarr's ``ObjectStore``.

zarr's ``ObjectStore`` adapter over obstore (Rust's ``object_store``), rather than an fsspec
``FsspecStore`` (s3fs, gcsfs, adlfs), because:

- obstore's calls are not bound to an event loop (its I/O runs on its own Rust runtime), so
  chunks written from the write loop's thread, markers from the run's loop and, under Dask,
  each worker's own loop all share one store; s3fs keeps an aiohttp session per loop and
  fails when a second loop uses it.
- ``set_if_not_exists`` is one conditional PUT (``If-None-Match: *``): two runs creating the
  lease at the same instant cannot both win. FsspecStore's is check-then-put.
- Credentials come from the environment as ``object_store`` reads it: every ``AWS_*``
  variable (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
  ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for MinIO and the like,
  ``AWS_ALLOW_HTTP=true`` for a plain-http endpoint), web identity and instance metadata,
  and ``AWS_PROFILE`` through boto3 when it is installed (object_store reads no profiles);
  ``GOOGLE_APPLICATION_CREDENTIALS`` / ``GOOGLE_SERVICE_ACCOUNT``; ``AZURE_*``
  (``AZURE_STORAGE_ACCOUNT_NAME``, ``AZURE_STORAGE_ACCOUNT_KEY``, ``AZURE_STORAGE_SAS_TOKEN``
  ...).

obstore's errors are not ``OSError``s; ``CloudStore`` turns them into ``StoreError`` (one
line, no credentials: obstore's messages name the request, never its signature), so the CLI
reports them as it reports a full disk and the lease's renewal retries them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, Iterable, Iterator
from types import ModuleType
from typing import Any, NamedTuple

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import ObjectStore, WrapperStore

from bulkpix.errors import StoreError

__all__ = [
    "OBJECT_STORE_SCHEMES",
    "CloudStore",
    "Version",
    "inner_store",
    "is_object_store_url",
    "open_object_store",
]

# The URL schemes obstore's from_url takes for the three clouds (object_store's own list).
OBJECT_STORE_SCHEMES = frozenset({"s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl"})
INSTALL_HINT = "pip install 'bulkpix[cloud]'"

def inner_store(store: Store) -> Store:
    """The store under any wrappers (``ChecksumStore`` ...): what decides how it behaves."""
    while isinstance(store, WrapperStore):
        store = store._store
    return store


def is_object_store_url(url: str) -> bool:
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() in OBJECT_STORE_SCHEMES


def open_object_store(url: str, *, read_only: bool = False) -> CloudStore:
    """The zarr store for an object-store URL; ``StoreError`` when obstore is missing or the
    URL (or the environment's configuration) is unusable."""
    try:
        from obstore.store import from_url
    except ImportError:
        raise StoreError(
            f"cannot open {url}: object-store outputs need obstore ({INSTALL_HINT})"
        ) from None
    try:
        # No client config: every setting comes from the environment, as for the AWS CLI.
        provider = _aws_profile_credentials(url)
        if provider is not None:
            return CloudStore(from_url(url, credential_provider=provider), read_only=read_only)
        return CloudStore(from_url(url), read_only=read_only)
    except Exception as exc:  # obstore's configuration errors have no common base
        raise StoreError(f"cannot open {url}: {_first_line(exc)}") from None


def _aws_profile_credentials(url: str) -> Any:
    """boto3's credentials (and region) for ``AWS_PROFILE``, which object_store does not
    read (it reads the AWS_* keys, web identity and instance metadata); None when keys are
    in the environment, no profile is named, or boto3 is not installed."""
    scheme = url.partition("://")[0].lower()
    if scheme not in ("s3", "s3a") or "AWS_ACCESS_KEY_ID" in os.environ:
        return None
    if not os.environ.get("AWS_PROFILE"):
        return None
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    return Boto3CredentialProvider(boto3.Session())


def _first_line(exc: BaseException) -> str:
    # obstore appends a multi-line "Debug source" dump; its first line says what failed.
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _obstore() -> ModuleType:
    try:
        import obstore
        import obstore.exceptions
    except ImportError:  # a CloudStore exists only where obstore does
        raise StoreError(f"object-store outputs need obstore ({INSTALL_HINT})") from None
    return obstore


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except _obstore().exceptions.BaseError as exc:
        raise StoreError(f"object store: {_first_line(exc)}") from exc


class Version(NamedTuple):
    """What identifies one version of an object (either may be missing)."""

    e_tag: str | None
    version: str | None


class CloudStore(ObjectStore[Any]):
    """zarr's ObjectStore whose failures are ``StoreError`` (an ``OSError``)."""

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        with _translated():
            return await super().get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        with _translated():
            return await super().get_partial_values(prototype, key_ranges)

    async def exists(self, key: str) -> bool:
        with _translated():
            return await super().exists(key)

    async def set(self, key: str, value: Buffer) -> None:
        with _translated():
            await super().set(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        with _translated():
            await super().set_if_not_exists(key, value)

    async def delete(self, key: str) -> None:
        with _translated():
            await super().delete(key)

    async def delete_dir(self, prefix: str) -> None:
        with _translated():
            await super().delete_dir(prefix)

    async def getsize(self, key: str) -> int:
        with _translated():
            return await super().getsize(key)

    async def getsize_prefix(self, prefix: str) -> int:
        with _translated():
            return await super().getsize_prefix(prefix)

    # Conditional updates, which zarr's Store API lacks: the lease replaces a document only
    # if it is still the one it read (S3 If-Match, GCS generation, Azure ETag).

    async def get_versioned(self, key: str) -> tuple[bytes, Version] | None:
        """The object's bytes and version; None when there is none."""
        obs = _obstore()
        with _translated():
            try:
                result = await obs.get_async(self.store, key)
            except FileNotFoundError:
                return None
            data = bytes(await result.bytes_async())
            return data, Version(result.meta.get("e_tag"), result.meta.get("version"))

    async def set_if_version(self, key: str, value: bytes, version: Version) -> bool:
        """Replace the object only if it is still at ``version``: False when it changed or
        went. ``NotImplementedError`` when the store cannot put conditionally."""
        obs = _obstore()
        self._check_writable()
        mode = {
            name: value
            for name, value in (("e_tag", version.e_tag), ("version", version.version))
            if value is not None
        }
        with _translated():
            try:
                await obs.put_async(self.store, key, value, mode=mode)
            except (obs.exceptions.PreconditionError, FileNotFoundError):
                return False
            except obs.exceptions.NotSupportedError as exc:
                raise NotImplementedError(_first_line(exc)) from None
        return True

    async def list(self) -> AsyncGenerator[str, None]:
        with _translated():
            async for key in super().list():
                yield key

    async def list_prefix(self, prefix: str) -> AsyncGenerator[str, None]:
        with _translated():
            async for key in super().list_prefix(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncGenerator[str, None]:
        with _translated():
            async for key in super().list_dir(prefix):
                yield key
