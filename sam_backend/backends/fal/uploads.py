"""Getting a local video to fal: storage upload (single request) or, for tiny files, a data URI.

Protocol (checked against fal-client 1.0.3): a storage token from the REST host, cached
until shortly before it expires, then ``POST {cdn}/files/upload`` with the raw bytes; the
answer's ``access_url`` is what the model endpoint downloads.
"""

from __future__ import annotations

import base64
import datetime as dt
import mimetypes
import threading
from pathlib import Path

from ...errors import UnexpectedResponse
from .client import FalClient

# Renew a cached token this long before fal says it expires (clock skew, slow uploads).
_TOKEN_MARGIN = dt.timedelta(seconds=60)


def content_type_of(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def data_uri(path: Path) -> str:
    payload = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:{content_type_of(path)};base64,{payload}"


class FalStorage:
    """Uploads files to fal's CDN through a :class:`FalClient`."""

    def __init__(self, client: FalClient) -> None:
        self._client = client
        self._token: tuple[str, str, dt.datetime] | None = None  # (type, token, expires)
        self._lock = threading.Lock()
        self.uploads = 0

    def url_for(self, path: Path) -> str:
        """A URL fal can read ``path`` from: inline when small enough, else uploaded."""
        if path.stat().st_size <= self._client.config.data_uri_max_bytes:
            return data_uri(path)
        return self.upload(path)

    def upload(self, path: Path) -> str:
        token_type, token = self._auth()
        cfg = self._client.config
        response = self._client.send(
            "POST",
            f"{cfg.cdn_url.rstrip('/')}/files/upload",
            content=path.read_bytes(),
            headers={
                "Authorization": f"{token_type} {token}",
                "Content-Type": content_type_of(path),
                "X-Fal-File-Name": path.name,
            },
            timeout=cfg.upload_timeout_s,
        )
        if response.status_code != 200:
            self._client.raise_for_response(response, what=f"upload of {path.name}")
        try:
            url = response.json()["access_url"]
        except (ValueError, KeyError):
            raise UnexpectedResponse(f"fal upload answer lacks access_url: {response.text[:200]!r}") from None
        self.uploads += 1
        return url

    def _auth(self) -> tuple[str, str]:
        with self._lock:
            now = dt.datetime.now(dt.timezone.utc)
            if self._token is None or self._token[2] - _TOKEN_MARGIN <= now:
                self._token = self._fetch_token()
            return self._token[0], self._token[1]

    def _fetch_token(self) -> tuple[str, str, dt.datetime]:
        cfg = self._client.config
        response = self._client.send(
            "POST", f"{cfg.rest_url.rstrip('/')}/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={}
        )
        if response.status_code != 200:
            self._client.raise_for_response(response, what="storage token")
        try:
            body = response.json()
            expires = dt.datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=dt.timezone.utc)
            return body.get("token_type", "Bearer"), body["token"], expires
        except (ValueError, KeyError, AttributeError):
            raise UnexpectedResponse(f"fal storage token answer unreadable: {response.text[:200]!r}") from None
