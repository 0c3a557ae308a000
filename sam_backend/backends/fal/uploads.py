"""Getting a local video to fal: storage upload (one request, or multipart for big files),
reused across runs by content hash; a data URI only for tiny files when asked.

Protocol (checked against fal-client 1.0.3): a storage token from the REST host, cached
until shortly before it expires; files up to 100 MiB go in one ``POST {cdn}/files/upload``;
bigger ones are multipart: ``POST {token base_url}/files/upload/multipart`` ->
``{access_url, uploadId}``, ``PUT {access_url}/multipart/{uploadId}/{n}`` per 10 MiB part
(each answered with an ETag, each retried on its own), then ``POST .../complete`` with the
parts in order. The answer's ``access_url`` is what the model endpoint downloads.

Uploaded files are public on fal's CDN, so every upload asks for a short lifetime
(``X-Fal-Object-Lifecycle-Preference``); the journal remembers content hash -> URL until
shortly before that lifetime ends, and a cached URL is checked (HEAD) before reuse.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import hashlib
import json
import math
import mimetypes
import threading
import time
import unicodedata
from pathlib import Path

from ...errors import Cancelled, UnexpectedResponse
from ..base import CancelToken
from .client import FalClient
from .journal import Journal

# Renew a cached token this long before fal says it expires (clock skew, slow uploads).
_TOKEN_MARGIN = dt.timedelta(seconds=60)
# Reuse an uploaded file only while this much of its lifetime is left: a submit made now
# may wait in fal's queue before the runner downloads the video.
_REUSE_MARGIN_S = 15 * 60
# fal does not document its default retention; when no lifetime was asked for, trust a
# cached upload for a day (and the HEAD check) at most.
_DEFAULT_RETENTION_S = 24 * 3600
_HASH_CHUNK = 8 * 1024 * 1024


def content_type_of(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def header_file_name(name: str) -> str:
    """The file name as a header can carry it (HTTP header values are ASCII): accents
    dropped (vidéo -> video), anything else non-ASCII or a control character -> "_"."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    stem, dot, ext = folded.rpartition(".") if "." in folded else (folded, "", "")
    if not stem.strip("._ "):  # nothing left of the name (e.g. all CJK): keep the extension
        folded = f"video{dot}{ext}"
    return "".join(c if 32 <= ord(c) < 127 else "_" for c in folded)


def data_uri(path: Path) -> str:
    payload = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:{content_type_of(path)};base64,{payload}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def lifecycle_headers(lifetime_s: int | None) -> dict[str, str]:
    """fal's object lifecycle headers (CDN uploads read the first, storage the second)."""
    if lifetime_s is None:
        return {}
    value = json.dumps({"expiration_duration_seconds": int(lifetime_s)})
    return {"X-Fal-Object-Lifecycle": value, "X-Fal-Object-Lifecycle-Preference": value}


def reusable_until(uploaded_at: float, lifetime_s: int | None) -> float:
    """Until when a cached upload may be handed to a new submit."""
    life = float(lifetime_s) if lifetime_s is not None else _DEFAULT_RETENTION_S
    margin = min(_REUSE_MARGIN_S, life / 2)
    return uploaded_at + life - margin


class FalStorage:
    """Uploads files to fal's CDN through a :class:`FalClient`; thread-safe."""

    def __init__(self, client: FalClient, journal: Journal | None = None) -> None:
        self._client = client
        self._journal = journal
        self._token: tuple[str, str, str, dt.datetime] | None = None  # (type, token, base_url, expires)
        self._lock = threading.Lock()
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._per_file: dict[str, threading.Lock] = {}  # one upload of the same content at a time
        self.uploads = 0
        self.multipart_uploads = 0
        self.reused = 0

    # -- public

    def url_for(self, path: Path, *, cancel: CancelToken | None = None) -> str:
        """A URL fal can read ``path`` from: inline when small enough (and allowed),
        an earlier upload of the same content while fal still keeps it, else a new upload."""
        size = path.stat().st_size
        if size <= self._client.config.data_uri_max_bytes:
            return data_uri(path)
        digest = self.sha256(path)
        with self._lock:
            file_lock = self._per_file.setdefault(digest, threading.Lock())
        with file_lock:
            if self._journal is not None:
                cached = self._journal.cached_upload(digest, size)
                if cached is not None and self._client.alive(cached):
                    with self._lock:
                        self.reused += 1
                    return cached
                if cached is not None:
                    self._journal.forget_upload(digest)
            uploaded_at = time.time()
            url = self.upload(path, cancel=cancel)
            if self._journal is not None:
                lifetime = self._client.config.upload_lifetime_s
                self._journal.record_upload(digest, size, url, reusable_until(uploaded_at, lifetime))
            return url

    def sha256(self, path: Path) -> str:
        """Content hash of a file, remembered per (path, size, mtime) for this process."""
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._hashes.get(key)
        if known is None:
            known = file_sha256(path)
            with self._lock:
                self._hashes[key] = known
        return known

    def upload(self, path: Path, *, cancel: CancelToken | None = None) -> str:
        """Upload ``path`` now: one request up to the multipart threshold, multipart above."""
        size = path.stat().st_size
        if size > self._client.config.multipart_threshold_bytes:
            url = self._multipart(path, size, cancel or CancelToken())
            with self._lock:
                self.multipart_uploads += 1
        else:
            url = self._single(path)
        with self._lock:
            self.uploads += 1
        return url

    # -- single request

    def _single(self, path: Path) -> str:
        token_type, token, _ = self._auth()
        cfg = self._client.config
        response = self._client.send(
            "POST",
            f"{cfg.cdn_url.rstrip('/')}/files/upload",
            content=path.read_bytes(),
            headers={
                "Authorization": f"{token_type} {token}",
                "Content-Type": content_type_of(path),
                "X-Fal-File-Name": header_file_name(path.name),
                **lifecycle_headers(cfg.upload_lifetime_s),
            },
            timeout=cfg.upload_timeout_s,
        )
        if response.status_code != 200:
            self._client.raise_for_response(response, what=f"upload of {path.name}")
        try:
            body = response.json()
        except ValueError:
            body = None
        return _access_url(body, response.text)

    # -- multipart

    def _multipart(self, path: Path, size: int, cancel: CancelToken) -> str:
        cfg = self._client.config
        token_type, token, base_url = self._auth()
        auth = {"Authorization": f"{token_type} {token}"}
        content_type = content_type_of(path)
        start = self._client.send(
            "POST", f"{base_url.rstrip('/')}/files/upload/multipart",
            headers={**auth, "Accept": "application/json", "Content-Type": content_type,
                     "X-Fal-File-Name": header_file_name(path.name), **lifecycle_headers(cfg.upload_lifetime_s)},
        )
        if start.status_code != 200:
            self._client.raise_for_response(start, what=f"multipart upload of {path.name}")
        try:
            body = start.json()
            access_url, upload_id = str(body["access_url"]), str(body["uploadId"])
        except (ValueError, KeyError, TypeError):
            raise UnexpectedResponse(f"fal multipart start answer lacks access_url/uploadId: {start.text[:200]!r}") from None

        part_size = cfg.multipart_part_bytes
        count = math.ceil(size / part_size)

        def put(number: int) -> tuple[int, str]:
            if cancel.cancelled:
                raise Cancelled(f"upload of {path.name} cancelled")
            with path.open("rb") as f:
                f.seek((number - 1) * part_size)
                data = f.read(part_size)
            response = self._client.send(
                "PUT", f"{access_url}/multipart/{upload_id}/{number}", content=data,
                headers={**auth, "Content-Type": content_type, "Accept-Encoding": "identity"},
                timeout=cfg.upload_timeout_s,
            )
            if response.status_code != 200:
                self._client.raise_for_response(response, what=f"part {number}/{count} of {path.name}")
            etag = response.headers.get("etag")
            if not etag:
                raise UnexpectedResponse(f"fal answered part {number} of {path.name} without an ETag")
            return number, etag

        workers = min(cfg.multipart_concurrency, count)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fal-multipart") as pool:
            futures = [pool.submit(put, n) for n in range(1, count + 1)]
            try:
                parts = sorted(f.result() for f in futures)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        done = self._client.send(
            "POST", f"{access_url}/multipart/{upload_id}/complete",
            json={"parts": [{"partNumber": n, "etag": etag} for n, etag in parts]}, headers=auth,
            timeout=cfg.upload_timeout_s,
        )
        if done.status_code != 200:
            self._client.raise_for_response(done, what=f"completing the multipart upload of {path.name}")
        return access_url

    # -- token

    def _auth(self) -> tuple[str, str, str]:
        with self._lock:
            now = dt.datetime.now(dt.timezone.utc)
            if self._token is None or self._token[3] - _TOKEN_MARGIN <= now:
                self._token = self._fetch_token()
            return self._token[0], self._token[1], self._token[2]

    def _fetch_token(self) -> tuple[str, str, str, dt.datetime]:
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
            return body.get("token_type", "Bearer"), body["token"], body.get("base_url") or cfg.cdn_url, expires
        except (ValueError, KeyError, AttributeError):
            raise UnexpectedResponse(f"fal storage token answer unreadable: {response.text[:200]!r}") from None


def _access_url(body: object, text: str) -> str:
    if isinstance(body, dict) and isinstance(body.get("access_url"), str):
        return body["access_url"]
    raise UnexpectedResponse(f"fal upload answer lacks access_url: {text[:200]!r}")


__all__ = ["FalStorage", "content_type_of", "data_uri", "file_sha256", "lifecycle_headers", "reusable_until"]
