"""Token providers: where the ``Authorization`` header comes from.

google-auth does the OAuth work; its refresh is a blocking HTTP call, so it runs in a
thread (``asyncio.to_thread``), one at a time, ahead of expiry. Nothing here ever puts key
material or tokens into an exception message or a repr.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import urllib.parse
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bulkpix.errors import CredentialsMissing, JobError, TransportError, Unauthenticated
from bulkpix.files import CREDENTIALS_FILE_MAX_BYTES, FileRefused, read_bounded

# google-auth (with requests, and cryptography for service accounts) costs 0.1-0.35 s to
# import: each is imported where it is used, so `credentials: none` never loads it.
if TYPE_CHECKING:
    import google.auth.credentials
    import google.oauth2.credentials
    import google.oauth2.service_account

__all__ = [
    "EE_SCOPES",
    "GOOGLE_TOKEN_URI",
    "GoogleAuth",
    "NoAuth",
    "StaticToken",
    "TokenProvider",
    "load_credentials",
]

EE_SCOPES: tuple[str, ...] = (
    "https://www.googleapis.com/auth/earthengine",
    "https://www.googleapis.com/auth/cloud-platform",
)
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"

_USER_FIELDS = frozenset({"client_id", "client_secret", "refresh_token"})
_SERVICE_ACCOUNT_FIELDS = frozenset({"client_email", "private_key", "token_uri"})


@runtime_checkable
class TokenProvider(Protocol):
    has_credentials: bool  # True when headers() carries a secret (see EEClient's http check)

    async def headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer ..."}`` (maybe a quota project too), or ``{}``."""
        ...

    async def refresh(self) -> None:
        """Get a new token now (after a 401)."""
        ...


class NoAuth:
    """No credentials at all (the emulator, public test servers)."""

    has_credentials = False

    async def headers(self) -> dict[str, str]:
        return {}

    async def refresh(self) -> None:
        return None

    def __repr__(self) -> str:
        return "NoAuth()"


class StaticToken:
    """A fixed bearer token (tests, or a caller of the library); refresh cannot renew it."""

    has_credentials = True

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty token")
        self._token = token

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    async def refresh(self) -> None:
        return None  # nothing to renew; the caller's retry then fails as Unauthenticated

    def __repr__(self) -> str:
        return "StaticToken(<redacted>)"


def _utcnow() -> datetime:
    # google-auth keeps expiry as a naive UTC datetime.
    return datetime.now(UTC).replace(tzinfo=None)


class GoogleAuth:
    """google-auth credentials, refreshed off the event loop, ahead of expiry, one at a time."""

    has_credentials = True

    def __init__(
        self,
        credentials: google.auth.credentials.Credentials,
        *,
        refresh_margin_s: float = 300.0,
        utcnow: Callable[[], datetime] = _utcnow,
        project: str | None = None,
    ) -> None:
        self.credentials = credentials
        self.refresh_margin = timedelta(seconds=refresh_margin_s)
        self.project = project  # the project google.auth.default() found, if any
        self.refreshes = 0
        self._utcnow = utcnow
        self._lock = asyncio.Lock()
        import google.auth.transport.requests

        self._request = google.auth.transport.requests.Request()

    def _needs_refresh(self) -> bool:
        creds = self.credentials
        if not creds.token:
            return True
        expiry = creds.expiry
        if expiry is None:
            return False
        if expiry.tzinfo is not None:
            expiry = expiry.astimezone(UTC).replace(tzinfo=None)
        return self._utcnow() >= expiry - self.refresh_margin

    async def headers(self) -> dict[str, str]:
        if self._needs_refresh():
            await self._refresh_if(self._needs_refresh)
        headers = {"Authorization": f"Bearer {self.credentials.token}"}
        quota_project = getattr(self.credentials, "quota_project_id", None)
        if quota_project:
            headers["X-Goog-User-Project"] = quota_project
        return headers

    async def refresh(self) -> None:
        rejected = self.credentials.token
        # 40 requests rejected with the same token need one new token, not 40.
        await self._refresh_if(lambda: self.credentials.token == rejected)

    async def _refresh_if(self, still_needed: Callable[[], bool]) -> None:
        import google.auth.exceptions

        async with self._lock:
            if not still_needed():
                return  # another caller refreshed while we waited for the lock
            # Raised after the except blocks so google-auth's exception (whose chain can
            # reach the token request and its form, secrets included) is not kept as context.
            problem: Exception | None = None
            try:
                await asyncio.to_thread(self.credentials.refresh, self._request)
            except google.auth.exceptions.RefreshError as exc:
                reason = f"token refresh failed: {_short_reason(exc)}"
                if getattr(exc, "retryable", False):
                    problem = TransportError(reason)
                else:
                    problem = Unauthenticated(reason, status=401)
            except google.auth.exceptions.TransportError as exc:
                problem = TransportError(
                    f"token refresh failed: token endpoint unreachable ({type(exc).__name__})"
                )
            if problem is not None:
                raise problem
            self.refreshes += 1

    def __repr__(self) -> str:
        return f"GoogleAuth({type(self.credentials).__module__}.{type(self.credentials).__name__})"


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_token_uri(token_uri: str, path: Path) -> None:
    """Refresh tokens and signed assertions go over HTTPS, or plain HTTP to this machine."""
    url = urllib.parse.urlsplit(token_uri)
    if url.scheme == "https" or (url.scheme == "http" and is_loopback_host(url.hostname or "")):
        return
    raise JobError(
        f"credentials {path}: refusing to send credentials to token_uri over plain HTTP "
        f"(only https, or http to a loopback address)"
    )


_OAUTH_ERROR = re.compile(r"[a-z_]{3,40}")


def _short_reason(exc: BaseException) -> str:
    # RefreshError's first arg is "error: description" when the endpoint answered OAuth JSON,
    # but the raw response body when it did not, and a body may echo the request (refresh
    # token, client secret). Only the OAuth error code is kept.
    first = str(exc.args[0]) if exc.args else ""
    code = first.split(":", 1)[0].strip()
    if _OAUTH_ERROR.fullmatch(code):
        return code
    return "the token endpoint refused the refresh"


def load_credentials(spec: str, *, scopes: Sequence[str] = EE_SCOPES) -> TokenProvider:
    """``"none"``, ``"default"`` (Application Default Credentials) or a JSON key file path.

    Files: a service-account key, an authorized-user file (gcloud), or the file
    ``earthengine authenticate`` writes (client_id, client_secret, refresh_token, no type).
    ``scopes`` apply to service accounts and ADC; user refresh tokens keep the scopes they
    were granted (asking for more makes the token endpoint refuse the refresh).
    """
    if spec == "none":
        return NoAuth()
    if spec == "default":
        return _load_default(scopes)
    return _load_file(Path(spec).expanduser(), scopes)


def earthengine_credentials_path() -> Path:
    """Where ``earthengine authenticate`` writes its refresh token (as the ee library reads it)."""
    return Path("~/.config/earthengine/credentials").expanduser()


def _load_default(scopes: Sequence[str]) -> GoogleAuth:
    """Application Default Credentials, else the file ``earthengine authenticate`` wrote."""
    import google.auth
    import google.auth.exceptions

    missing = False
    try:
        credentials, project = google.auth.default(scopes=list(scopes))
    except google.auth.exceptions.DefaultCredentialsError:
        # Usually simply no login at all; a broken key file named by
        # GOOGLE_APPLICATION_CREDENTIALS says so below, by name.
        missing = True
    if missing:
        named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        where = "no Earth Engine credentials found"
        if named:
            if Path(named).expanduser().exists():
                return _load_file(Path(named).expanduser(), scopes)  # says what is wrong
            where = f"GOOGLE_APPLICATION_CREDENTIALS names {named}, which does not exist"
        else:
            ee_file = earthengine_credentials_path()
            if ee_file.is_file():
                return _load_file(ee_file, scopes)
        raise CredentialsMissing(
            f"{where}: log in with `earthengine authenticate` or "
            "`gcloud auth application-default login --scopes=" + ",".join(scopes) + "` "
            "(Application Default Credentials), or give `credentials:` a key file in the job"
        )
    token_uri = getattr(credentials, "_token_uri", None) or getattr(credentials, "token_uri", None)
    if isinstance(token_uri, str):
        _check_token_uri(token_uri, Path("(Application Default Credentials)"))
    return GoogleAuth(credentials, project=project)


def _load_file(path: Path, scopes: Sequence[str]) -> GoogleAuth:
    # Errors are raised outside the except blocks: UnicodeDecodeError and JSONDecodeError
    # keep the file's content, and would otherwise ride along as __context__.
    text, failure = _read_text(path)
    if failure == "FileNotFoundError":
        raise JobError(f"cannot read credentials file {path}: file not found")
    if text is None:
        raise JobError(f"cannot read credentials file {path} ({failure})")
    info = _parse_json(text)
    if info is _NOT_JSON:
        raise JobError(f"credentials file {path} is not a valid JSON file")
    if not isinstance(info, dict):
        raise JobError(f"credentials file {path} is not a JSON object")

    kind = info.get("type")
    if kind == "service_account":
        return GoogleAuth(_service_account(path, info, scopes))
    if kind == "authorized_user" or (kind is None and info.keys() >= _USER_FIELDS):
        return GoogleAuth(_user_credentials(path, info))
    if kind is None:
        missing = ", ".join(sorted(_USER_FIELDS - info.keys()))
        raise JobError(
            f"credentials file {path} has no 'type' and is not an earthengine credentials "
            f"file (missing {missing})"
        )
    label = kind[:40] if isinstance(kind, str) else type(kind).__name__
    raise JobError(
        f"credentials file {path} has unsupported type {label!r} "
        "(expected service_account or authorized_user)"
    )


def _read_text(path: Path) -> tuple[str | None, str]:
    """(text, "") or (None, what is wrong: the error's name, or why the file was refused)."""
    try:
        return read_bounded(path, CREDENTIALS_FILE_MAX_BYTES).decode("utf-8"), ""
    except FileRefused as exc:
        return None, exc.reason
    except (OSError, UnicodeDecodeError) as exc:
        return None, type(exc).__name__


_NOT_JSON = object()


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return _NOT_JSON


def _service_account(
    path: Path, info: dict[str, Any], scopes: Sequence[str]
) -> google.oauth2.service_account.Credentials:
    missing = _SERVICE_ACCOUNT_FIELDS - info.keys()
    if missing:
        raise JobError(f"service-account key {path} is missing {', '.join(sorted(missing))}")
    failure = ""
    if not isinstance(info.get("token_uri"), str):
        raise JobError(f"service-account key {path}: token_uri is not a string")
    _check_token_uri(info["token_uri"], path)
    import google.oauth2.service_account

    try:
        return google.oauth2.service_account.Credentials.from_service_account_info(
            info, scopes=list(scopes)
        )
    except (ValueError, TypeError, KeyError) as exc:
        failure = type(exc).__name__  # only the class name: parser messages may quote the key
    # Raised outside the except block so the parser's exception is not kept as __context__.
    raise JobError(f"service-account key {path} is not usable ({failure})")


def _user_credentials(path: Path, info: dict[str, Any]) -> google.oauth2.credentials.Credentials:
    missing = _USER_FIELDS - info.keys()
    if missing:
        raise JobError(
            f"authorized-user credentials {path} are missing {', '.join(sorted(missing))}"
        )
    failure = ""
    import google.oauth2.credentials

    try:
        credentials = google.oauth2.credentials.Credentials.from_authorized_user_info(info)
    except (ValueError, TypeError, KeyError) as exc:  # e.g. a malformed "expiry"
        failure = type(exc).__name__
    if failure:
        raise JobError(f"authorized-user credentials {path} are not usable ({failure})")
    # from_authorized_user_info always sets Google's endpoint; honour the file's own.
    token_uri = info.get("token_uri") or GOOGLE_TOKEN_URI
    if not isinstance(token_uri, str):
        raise JobError(f"authorized-user credentials {path}: token_uri is not a string")
    _check_token_uri(token_uri, path)
    return credentials.with_token_uri(token_uri)
