"""Token providers against a fake OAuth token endpoint (an aiohttp test server).

google-auth's refresh is blocking ``requests`` code. The fake endpoint is served by the
test's own event loop, so a refresh made on the loop would deadlock: these tests can only
pass if the refresh really runs in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bulkpix.ee.auth import (
    EE_SCOPES,
    GOOGLE_TOKEN_URI,
    GoogleAuth,
    NoAuth,
    StaticToken,
    TokenProvider,
    load_credentials,
)
from bulkpix.errors import CredentialsMissing, JobError, TransportError, Unauthenticated
from tests.conftest import exception_texts

CLIENT_SECRET = "SECRET-client-secret-0123456789"
REFRESH_TOKEN = "SECRET-refresh-token-abcdefghij"
PRIVATE_KEY_MARKER = "SECRETKEYMATERIAL"
SECRETS = (CLIENT_SECRET, REFRESH_TOKEN, PRIVATE_KEY_MARKER)


@dataclass
class TokenEndpoint:
    url: str = ""
    forms: list[dict[str, str]] = field(default_factory=list)
    fail_with: tuple[int, dict[str, Any]] | None = None

    @property
    def hits(self) -> int:
        return len(self.forms)


@pytest.fixture
async def token_endpoint() -> AsyncIterator[TokenEndpoint]:
    endpoint = TokenEndpoint()

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        endpoint.forms.append({k: str(v) for k, v in form.items()})
        if endpoint.fail_with is not None:
            status, body = endpoint.fail_with
            return web.json_response(body, status=status)
        return web.json_response(
            {"access_token": f"access-{endpoint.hits}", "expires_in": 3600, "token_type": "Bearer"}
        )

    app = web.Application()
    app.router.add_post("/token", token)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    endpoint.url = str(server.make_url("/token"))
    try:
        yield endpoint
    finally:
        await server.close()


def write_json(tmp_path: Path, info: dict[str, Any], name: str = "creds.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(info))
    return path


def user_info(token_uri: str | None, *, with_type: bool = True) -> dict[str, Any]:
    info: dict[str, Any] = {
        "client_id": "client-id.apps.googleusercontent.com",
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN,
    }
    if with_type:
        info["type"] = "authorized_user"
    if token_uri is not None:
        info["token_uri"] = token_uri
    return info


def assert_no_secret(exc: BaseException) -> None:
    for text in exception_texts(exc):
        for secret in SECRETS:
            assert secret not in text, f"secret leaked into {text!r}"


class FakeUtcNow:
    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        # naive UTC, as google-auth keeps expiry
        return datetime.now(UTC).replace(tzinfo=None) + self.offset


# -- providers ----------------------------------------------------------------------------
async def test_none_and_static_providers() -> None:
    none = load_credentials("none")
    assert isinstance(none, NoAuth) and isinstance(none, TokenProvider)
    assert none.has_credentials is False
    assert await none.headers() == {}

    static = StaticToken("tok-123")
    assert static.has_credentials is True
    assert await static.headers() == {"Authorization": "Bearer tok-123"}
    await static.refresh()
    assert await static.headers() == {"Authorization": "Bearer tok-123"}
    assert "tok-123" not in repr(static)


@pytest.mark.timeout(15)  # a refresh made on the loop deadlocks: fail fast, not in 120 s
async def test_authorized_user_file_refreshes_once_off_loop_under_40_callers(
    tmp_path: Path, token_endpoint: TokenEndpoint
) -> None:
    auth = load_credentials(str(write_json(tmp_path, user_info(token_endpoint.url))))
    assert isinstance(auth, GoogleAuth) and auth.has_credentials
    refresh_threads: list[int] = []
    original_refresh = auth.credentials.refresh

    def recording_refresh(request: Any) -> None:
        refresh_threads.append(threading.get_ident())
        original_refresh(request)

    auth.credentials.refresh = recording_refresh  # type: ignore[method-assign]

    results = await asyncio.wait_for(
        asyncio.gather(*(auth.headers() for _ in range(40))), timeout=20
    )
    assert results == [{"Authorization": "Bearer access-1"}] * 40
    assert token_endpoint.hits == 1 and auth.refreshes == 1
    assert refresh_threads and refresh_threads[0] != threading.get_ident()
    form = token_endpoint.forms[0]
    assert form["grant_type"] == "refresh_token"
    assert form["refresh_token"] == REFRESH_TOKEN
    assert "scope" not in form  # a refresh token keeps the scopes it was granted


async def test_earthengine_credentials_file_without_type(
    tmp_path: Path, token_endpoint: TokenEndpoint
) -> None:
    path = write_json(tmp_path, user_info(token_endpoint.url, with_type=False), "credentials")
    auth = load_credentials(str(path))
    assert await auth.headers() == {"Authorization": "Bearer access-1"}

    # Without token_uri, Google's endpoint (no traffic here: nothing is refreshed).
    default_uri = load_credentials(str(write_json(tmp_path, user_info(None, with_type=False))))
    assert isinstance(default_uri, GoogleAuth)
    assert default_uri.credentials.token_uri == GOOGLE_TOKEN_URI


async def test_expiry_triggers_a_refresh_ahead_of_time(
    tmp_path: Path, token_endpoint: TokenEndpoint
) -> None:
    clock = FakeUtcNow()
    loaded = load_credentials(str(write_json(tmp_path, user_info(token_endpoint.url))))
    assert isinstance(loaded, GoogleAuth)
    auth = GoogleAuth(loaded.credentials, refresh_margin_s=300, utcnow=clock)

    assert await auth.headers() == {"Authorization": "Bearer access-1"}
    clock.offset = timedelta(minutes=54)  # 6 min left: still good
    assert await auth.headers() == {"Authorization": "Bearer access-1"}
    assert token_endpoint.hits == 1
    clock.offset = timedelta(minutes=56)  # 4 min left: inside the 5 min margin
    assert await auth.headers() == {"Authorization": "Bearer access-2"}
    assert token_endpoint.hits == 2


async def test_forced_refresh_after_401_is_shared_by_concurrent_callers(
    tmp_path: Path, token_endpoint: TokenEndpoint
) -> None:
    auth = load_credentials(str(write_json(tmp_path, user_info(token_endpoint.url))))
    await auth.headers()
    await asyncio.wait_for(asyncio.gather(*(auth.refresh() for _ in range(40))), timeout=20)
    assert token_endpoint.hits == 2
    assert await auth.headers() == {"Authorization": "Bearer access-2"}


async def test_rejected_refresh_is_unauthenticated_without_secrets(
    tmp_path: Path, token_endpoint: TokenEndpoint
) -> None:
    token_endpoint.fail_with = (400, {"error": "invalid_grant", "error_description": "Bad Request"})
    auth = load_credentials(str(write_json(tmp_path, user_info(token_endpoint.url))))
    with pytest.raises(Unauthenticated, match="invalid_grant") as info:
        await auth.headers()
    assert_no_secret(info.value)


async def test_token_endpoint_outage_is_retryable(
    tmp_path: Path, token_endpoint: TokenEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # google-auth retries a 503 itself (3 tries, sleeping in its thread): no real sleeps here.
    import google.auth._exponential_backoff as backoff

    monkeypatch.setattr(backoff, "time", SimpleNamespace(sleep=lambda s: None))
    token_endpoint.fail_with = (503, {"error": "internal_failure"})
    auth = load_credentials(str(write_json(tmp_path, user_info(token_endpoint.url))))
    with pytest.raises(TransportError) as info:
        await auth.headers()
    assert_no_secret(info.value)


async def test_quota_project_of_the_credentials_is_sent(
    tmp_path: Path, token_endpoint: TokenEndpoint
) -> None:
    info = user_info(token_endpoint.url) | {"quota_project_id": "my-quota-project"}
    auth = load_credentials(str(write_json(tmp_path, info)))
    headers = await auth.headers()
    assert headers["X-Goog-User-Project"] == "my-quota-project"


def _service_account_info(token_uri: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "kid",
        "private_key": pem,
        "client_email": "bulkpix@p.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }


async def test_service_account_key_asks_for_the_ee_scopes(
    tmp_path: Path, token_endpoint: TokenEndpoint
) -> None:
    auth = load_credentials(str(write_json(tmp_path, _service_account_info(token_endpoint.url))))
    assert await auth.headers() == {"Authorization": "Bearer access-1"}
    form = token_endpoint.forms[0]
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    claims_b64 = form["assertion"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(claims_b64 + "=" * (-len(claims_b64) % 4)))
    assert claims["scope"].split() == list(EE_SCOPES)
    assert claims["iss"] == "bulkpix@p.iam.gserviceaccount.com"


# -- bad input ----------------------------------------------------------------------------
def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(JobError, match=r"cannot read.*not found") as info:
        load_credentials(str(path))
    assert str(path) in str(info.value)


def _bad_files() -> list[tuple[str, str, str]]:
    """(name, file text, expected words) of broken credential files, all holding secrets."""
    user = json.dumps(user_info("https://x"))
    return [
        ("truncated", user[: len(user) // 2 + 20], "not a valid JSON file"),
        ("not-object", json.dumps([CLIENT_SECRET, REFRESH_TOKEN]), "not a JSON object"),
        (
            "unknown-type",
            json.dumps({"type": "alien", "client_secret": CLIENT_SECRET}),
            "unsupported type 'alien'",
        ),
        ("no-type", json.dumps({"refresh_token": REFRESH_TOKEN}), "client_id, client_secret"),
        (
            "user-missing",
            json.dumps({"type": "authorized_user", "client_secret": CLIENT_SECRET}),
            "missing client_id, refresh_token",
        ),
        (
            "sa-missing",
            json.dumps({"type": "service_account", "private_key": PRIVATE_KEY_MARKER}),
            "missing client_email, token_uri",
        ),
        (
            "sa-bad-key",
            json.dumps(
                {
                    "type": "service_account",
                    "client_email": "a@b",
                    "token_uri": "https://x",
                    "private_key": "-----BEGIN PRIVATE KEY-----\n"
                    + PRIVATE_KEY_MARKER
                    + "\n-----END PRIVATE KEY-----\n",
                }
            ),
            "not usable",
        ),
        ("binary", "\udcff", "cannot read"),
    ]


@pytest.mark.parametrize(("name", "text", "expected"), _bad_files(), ids=lambda v: str(v)[:12])
def test_bad_files_give_one_clear_line_without_secrets(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = tmp_path / f"{name}.json"
    if name == "binary":
        path.write_bytes(b"\xff\xfe" + REFRESH_TOKEN.encode())
    else:
        path.write_text(text)
    with pytest.raises(JobError) as info:
        load_credentials(str(path))
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message
    assert_no_secret(info.value)


def test_default_credentials_found_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_json(tmp_path, user_info("https://example.invalid/token"))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    auth = load_credentials("default")
    assert isinstance(auth, GoogleAuth)


def test_missing_default_credentials_give_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    with pytest.raises(CredentialsMissing) as info:
        load_credentials("default")
    assert "absent.json, which does not exist" in str(info.value)
    assert "Application Default Credentials" in str(info.value)
    assert "gcloud auth application-default login" in str(info.value)
    assert "earthengine authenticate" in str(info.value)


def _no_login_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # google-auth: do not probe a metadata server


def test_no_login_at_all_is_its_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_login_anywhere(tmp_path, monkeypatch)
    with pytest.raises(CredentialsMissing) as info:
        load_credentials("default")
    message = str(info.value)
    assert message.startswith("no Earth Engine credentials found")
    assert "earthengine authenticate" in message
    assert "gcloud auth application-default login" in message
    assert "refused the refresh" not in message


def test_earthengine_authenticate_file_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_login_anywhere(tmp_path, monkeypatch)
    ee_file = tmp_path / ".config" / "earthengine" / "credentials"
    ee_file.parent.mkdir(parents=True)
    info = user_info("https://example.invalid/token")
    info.pop("type", None)  # as `earthengine authenticate` writes it
    ee_file.write_text(json.dumps(info))
    assert isinstance(load_credentials("default"), GoogleAuth)


async def test_unreachable_token_endpoint_is_retryable_without_secrets(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    auth = load_credentials(str(write_json(tmp_path, user_info(f"http://127.0.0.1:{port}/t"))))
    with pytest.raises(TransportError, match="unreachable") as info:
        await auth.headers()
    assert_no_secret(info.value)


def test_token_uri_over_plain_http_to_another_host_is_refused(tmp_path: Path) -> None:
    from bulkpix.ee.auth import load_credentials as load

    for token_uri, refused in (
        ("http://203.0.113.5/token", True),
        ("http://127.0.0.1:9/token", False),
        ("https://oauth2.example.com/token", False),
    ):
        key = tmp_path / "user.json"
        key.write_text(
            json.dumps(
                {
                    "type": "authorized_user",
                    "client_id": "id",
                    "client_secret": "CLIENT-SECRET",
                    "refresh_token": "REFRESH-SECRET",
                    "token_uri": token_uri,
                }
            )
        )
        if refused:
            with pytest.raises(JobError, match="plain HTTP") as info:
                load(str(key))
            assert "SECRET" not in str(info.value)
        else:
            assert load(str(key)).has_credentials


def test_refresh_error_keeps_only_the_oauth_code() -> None:
    import google.auth.exceptions

    from bulkpix.ee.auth import _short_reason

    oauth = google.auth.exceptions.RefreshError("invalid_grant: Bad Request", {"error": "x"})
    assert _short_reason(oauth) == "invalid_grant"
    echoed = google.auth.exceptions.RefreshError(
        "grant_type=refresh_token&refresh_token=REFRESH-SECRET&client_secret=CS", None
    )
    assert "SECRET" not in _short_reason(echoed)


def test_default_credentials_with_a_plain_http_token_uri_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bulkpix.ee.auth import load_credentials as load

    key = tmp_path / "sa.json"
    key.write_text(json.dumps(_service_account_info("http://203.0.113.5/token")))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    with pytest.raises(JobError, match="plain HTTP"):
        load("default")
    key.write_text(json.dumps(_service_account_info("https://oauth2.example.com/token")))
    assert load("default").has_credentials
