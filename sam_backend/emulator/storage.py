"""Stand-in for fal's CDN storage: upload tokens, stored files, multipart uploads.

Small files (single-request uploads, rendered outputs) live in memory: emulator runs are
short and test videos small. Multipart uploads exist for big files (fal-client uses them
above 100 MiB, we do too), so their parts and the reassembled file are spooled to a
temporary directory instead, removed by :meth:`Storage.close`.

Lifetimes: an upload may ask for one with fal's ``X-Fal-Object-Lifecycle(-Preference)``
header (``{"expiration_duration_seconds": n}``); the file is then gone after ``n``
seconds, as on fal's CDN, so clients' upload caches can be tested against expiry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mimetypes
import re
import secrets
import shutil
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class StoredFile:
    """A file on the emulated CDN: bytes in memory (``data``) or on disk (``path``)."""

    content_type: str
    file_name: str
    data: bytes | None = None
    path: Path | None = None
    expires_at: float | None = None  # epoch seconds; None = kept for the server's life
    lifecycle: dict[str, Any] | None = None  # the lifecycle preference the uploader sent

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return self.path.stat().st_size

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def sha256(self) -> str:
        digest = hashlib.sha256()
        if self.data is not None:
            digest.update(self.data)
        else:
            assert self.path is not None
            with self.path.open("rb") as f:
                while chunk := f.read(8 * 1024 * 1024):
                    digest.update(chunk)
        return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class UploadToken:
    token: str
    expires_at: float  # epoch seconds

    def expires_at_iso(self) -> str:
        # fal-client compares this with an aware datetime: it must carry a timezone.
        return datetime.fromtimestamp(self.expires_at, tz=timezone.utc).isoformat()


class MultipartError(Exception):
    """A multipart call that cannot succeed; ``status`` is the HTTP code to answer."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclasses.dataclass
class _Multipart:
    key: str
    content_type: str
    file_name: str
    directory: Path
    lifecycle: dict[str, Any] | None
    parts: dict[int, str] = dataclasses.field(default_factory=dict)  # part number -> etag


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_name(name: str | None, content_type: str) -> str:
    """A URL-safe last path segment: the client's name when given, else one from the type."""
    name = _UNSAFE.sub("_", (name or "").strip().split("/")[-1]).strip("._")
    if name:
        return name[:200]
    ext = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".bin"
    return "upload" + ext


def parse_lifecycle(header: str | None) -> dict[str, Any] | None:
    """fal's lifecycle header value (JSON), or None when absent or unreadable."""
    if not header:
        return None
    try:
        value = json.loads(header)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _expiry(lifecycle: dict[str, Any] | None) -> float | None:
    seconds = (lifecycle or {}).get("expiration_duration_seconds")
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0:
        return time.time() + float(seconds)
    return None


class Storage:
    """Thread-safe file store keyed by ``<random>/<file_name>`` (the path after
    ``/cdn/files/``), plus the bearer tokens that may upload to it."""

    def __init__(self, token_ttl_s: float) -> None:
        self._token_ttl_s = token_ttl_s
        self._files: dict[str, StoredFile] = {}
        self._tokens: dict[str, UploadToken] = {}
        self._multipart: dict[str, _Multipart] = {}  # upload id -> state
        self._lock = threading.Lock()
        self._spool: Path | None = None

    # -- tokens

    def issue_token(self) -> UploadToken:
        token = UploadToken(secrets.token_urlsafe(24), time.time() + self._token_ttl_s)
        with self._lock:
            self._tokens[token.token] = token
        return token

    def token_valid(self, token: str) -> bool:
        with self._lock:
            found = self._tokens.get(token)
        return found is not None and found.expires_at > time.time()

    # -- single files

    def put(self, data: bytes, content_type: str, file_name: str | None = None,
            lifecycle: dict[str, Any] | None = None) -> str:
        """Store bytes; returns the key to append to ``{cdn_url}/files/``."""
        name = safe_file_name(file_name, content_type)
        key = f"{secrets.token_hex(8)}/{name}"
        stored = StoredFile(content_type or "application/octet-stream", name, data=data,
                            expires_at=_expiry(lifecycle), lifecycle=lifecycle)
        with self._lock:
            self._files[key] = stored
        return key

    def get(self, key: str) -> StoredFile | None:
        """The file, or None if unknown or past the lifetime its uploader asked for."""
        with self._lock:
            stored = self._files.get(key)
            if stored is not None and stored.expires_at is not None and stored.expires_at <= time.time():
                del self._files[key]
                if stored.path is not None:
                    stored.path.unlink(missing_ok=True)
                return None
            return stored

    def expire(self, key: str) -> bool:
        """Forget a file now (as if its lifetime ran out); True if it existed."""
        with self._lock:
            stored = self._files.pop(key, None)
        if stored is not None and stored.path is not None:
            stored.path.unlink(missing_ok=True)
        return stored is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    # -- multipart

    def begin_multipart(self, content_type: str, file_name: str | None,
                        lifecycle: dict[str, Any] | None = None) -> tuple[str, str]:
        """Start a multipart upload: (key of the future file, upload id)."""
        name = safe_file_name(file_name, content_type)
        key = f"{secrets.token_hex(8)}/{name}"
        upload_id = secrets.token_hex(12)
        directory = self._spool_dir() / upload_id
        directory.mkdir()
        with self._lock:
            self._multipart[upload_id] = _Multipart(key, content_type or "application/octet-stream", name, directory, lifecycle)
        return key, upload_id

    def put_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        """Store one part (a retried part replaces the earlier copy); returns its ETag."""
        upload = self._upload(key, upload_id)
        if not 1 <= part_number <= 10_000:
            raise MultipartError(400, f"part number {part_number} is outside 1..10000")
        etag = '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
        tmp = upload.directory / f"{part_number:05d}.tmp"
        tmp.write_bytes(data)
        tmp.replace(upload.directory / f"{part_number:05d}.part")
        with self._lock:
            upload.parts[part_number] = etag
        return etag

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> StoredFile:
        """Reassemble the listed parts in part-number order (clients list them in the
        order they finished) after checking each ETag; the file then lives at ``key``."""
        upload = self._upload(key, upload_id)
        numbers = [n for n, _ in parts]
        if not parts or len(set(numbers)) != len(numbers):
            raise MultipartError(400, "complete needs each uploaded part listed exactly once")
        with self._lock:
            known = dict(upload.parts)
        for n, etag in parts:
            if n not in known:
                raise MultipartError(400, f"part {n} was never uploaded")
            if etag.strip('"') != known[n].strip('"'):
                raise MultipartError(400, f"part {n}: ETag {etag} does not match the uploaded part ({known[n]})")
        target = self._spool_dir() / f"{upload_id}.bin"
        with target.open("wb") as out:
            for n in sorted(numbers):
                with (upload.directory / f"{n:05d}.part").open("rb") as src:
                    shutil.copyfileobj(src, out, 8 * 1024 * 1024)
        shutil.rmtree(upload.directory, ignore_errors=True)
        stored = StoredFile(upload.content_type, upload.file_name, path=target,
                            expires_at=_expiry(upload.lifecycle), lifecycle=upload.lifecycle)
        with self._lock:
            self._multipart.pop(upload_id, None)
            self._files[key] = stored
        return stored

    def _upload(self, key: str, upload_id: str) -> _Multipart:
        with self._lock:
            upload = self._multipart.get(upload_id)
        if upload is None or upload.key != key:
            raise MultipartError(404, f"no multipart upload {upload_id} for this file")
        return upload

    def _spool_dir(self) -> Path:
        with self._lock:
            if self._spool is None:
                self._spool = Path(tempfile.mkdtemp(prefix="sam-emu-cdn-"))
            return self._spool

    def close(self) -> None:
        """Remove spooled files (multipart parts and reassembled uploads)."""
        with self._lock:
            spool, self._spool = self._spool, None
            self._multipart.clear()
            self._files = {k: f for k, f in self._files.items() if f.path is None}
        if spool is not None:
            shutil.rmtree(spool, ignore_errors=True)
