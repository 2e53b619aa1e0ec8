"""A local S3-compatible server for tests: moto in server mode, on 127.0.0.1, port 0.

``S3Server.start()`` serves from a thread in this process; ``env()`` is what a user sets to
point bulkpix at such a server (MinIO, Ceph, a moto server): fake keys, a region, the
endpoint and plain http allowed. Child processes inherit it through ``os.environ``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

ACCESS_KEY = "bulkpix-test-key"
SECRET_KEY = "bulkpix-test-secret"
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str = ""
    _server: Any = field(default=None, repr=False)

    def start(self) -> S3Server:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def env(self) -> dict[str, str]:
        """The environment a user sets for an S3-compatible endpoint (object_store reads
        every AWS_* variable; AWS_ENDPOINT_URL is also what boto3 and the AWS CLI read)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def storage_options(self) -> dict[str, Any]:
        """The same, as s3fs (fsspec) takes it."""
        return {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "endpoint_url": self.endpoint,
            "client_kwargs": {"region_name": REGION},
        }

    def client(self) -> Any:
        import boto3

        # Its own session: boto3's default one keeps the profile it was first made with.
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def new_bucket(self) -> str:
        name = f"bulkpix-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``, by key relative to it."""
        client = self.client()
        found: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            for entry in page.get("Contents", ()):
                key = entry["Key"]
                body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                found[key[len(prefix) :]] = body
        return found

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        client = self.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            keys.extend(entry["Key"][len(prefix) :] for entry in page.get("Contents", ()))
        return keys


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()
