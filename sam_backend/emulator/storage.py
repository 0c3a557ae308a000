"""In-memory stand-in for fal's CDN storage: upload tokens and stored files.

Files live in memory because emulator runs are short and test videos small; everything
goes through :class:`Storage`, so moving bytes to disk later touches only this module.
Multipart upload (fal-client uses it above 100 MiB) is not implemented yet: the server
answers 501 on those routes and :meth:`Storage.put` is the call a multipart ``complete``
would end with.
"""

from __future__ import annotations

import dataclasses
import mimetypes
import re
import secrets
import threading
import time
from datetime import datetime, timezone


@dataclasses.dataclass(frozen=True)
class StoredFile:
    data: bytes
    content_type: str
    file_name: str


@dataclasses.dataclass(frozen=True)
class UploadToken:
    token: str
    expires_at: float  # epoch seconds

    def expires_at_iso(self) -> str:
        # fal-client compares this with an aware datetime: it must carry a timezone.
        return datetime.fromtimestamp(self.expires_at, tz=timezone.utc).isoformat()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_name(name: str | None, content_type: str) -> str:
    """A URL-safe last path segment: the client's name when given, else one from the type."""
    name = _UNSAFE.sub("_", (name or "").strip().split("/")[-1]).strip("._")
    if name:
        return name[:200]
    ext = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".bin"
    return "upload" + ext


class Storage:
    """Thread-safe file store keyed by ``<random>/<file_name>`` (the path after
    ``/cdn/files/``), plus the bearer tokens that may upload to it."""

    def __init__(self, token_ttl_s: float) -> None:
        self._token_ttl_s = token_ttl_s
        self._files: dict[str, StoredFile] = {}
        self._tokens: dict[str, UploadToken] = {}
        self._lock = threading.Lock()

    def issue_token(self) -> UploadToken:
        token = UploadToken(secrets.token_urlsafe(24), time.time() + self._token_ttl_s)
        with self._lock:
            self._tokens[token.token] = token
        return token

    def token_valid(self, token: str) -> bool:
        with self._lock:
            found = self._tokens.get(token)
        return found is not None and found.expires_at > time.time()

    def put(self, data: bytes, content_type: str, file_name: str | None = None) -> str:
        """Store bytes; returns the key to append to ``{cdn_url}/files/``."""
        name = safe_file_name(file_name, content_type)
        key = f"{secrets.token_hex(8)}/{name}"
        with self._lock:
            self._files[key] = StoredFile(data, content_type or "application/octet-stream", name)
        return key

    def get(self, key: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)
