"""A loopback HTTP server that speaks fal's queue, storage and CDN protocols.

Why a real server (and not a mocked transport): the client under test, and later the
official ``fal_client`` pointed at it through its module globals, must go through real
sockets, keep-alive, status codes and headers, so that retry, timeout and disconnect
handling are exercised as they will be against fal. fal's hosts become path prefixes on
one port:

    https://queue.fal.run  -> {base_url}/queue     (submit, status, result, cancel)
    https://fal.run        -> {base_url}/run       (synchronous run)
    https://rest.fal.ai    -> {base_url}/rest      (storage tokens, webhook JWKS)
    https://v3.fal.media   -> {base_url}/cdn       (uploads, multipart uploads, downloads)

Stdlib only (``ThreadingHTTPServer``, HTTP/1.1 keep-alive), bound to 127.0.0.1 on an
ephemeral port. Webhooks (``fal_webhook``) are delivered, signed like fal's (Ed25519 over
request id, user id, timestamp and the body's sha256; ``cryptography`` is imported only
then), to loopback URLs only. ``stop()`` shuts every thread down: the accept loop, the workers, and
the per-connection handler threads (idle keep-alive sockets are shut to release them).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import failures
from .config import KNOWN_APPS, AppSpec, EmulatorConfig
from .faults import FaultAction, FaultHook, Route, RouteCall
from .jobs import Job, JobManager, JobState
from .model import RunContext, resolve_video, run_sam_video
from .schema import Sam31VideoInput, parse_input
from .stats import EmulatorStats, StatsRecorder
from .storage import MultipartError, Storage, StoredFile, parse_lifecycle

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-fal-request-id"
BILLABLE_UNITS_HEADER = "x-fal-billable-units"
ERROR_TYPE_HEADER = "X-Fal-Error-Type"
LIFECYCLE_HEADERS = ("x-fal-object-lifecycle-preference", "x-fal-object-lifecycle")
WEBHOOK_USER_ID = "emulator-user"
# Delivery attempts per webhook copy, this far apart (fal retries for ~2 hours; a test
# receiver is either up or not).
WEBHOOK_ATTEMPTS = 3
WEBHOOK_RETRY_S = 0.2
_REASONS = {499: "Client Closed Request"}


@dataclasses.dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    length: int | None = None  # Content-Length when the body is not sent (HEAD)


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(obj).encode(), "application/json", dict(headers or {}))


def _detail(status: int, detail: Any) -> Response:
    return json_response(status, {"detail": detail})


@dataclasses.dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes


# (route, method, pattern): first match wins, so specific queue paths come before submit.
_ROUTES: list[tuple[Route, str, re.Pattern[str]]] = [
    ("status", "GET", re.compile(r"^/queue/(?P<app>.+?)/requests/(?P<request_id>[^/]+)/status/?$")),
    ("cancel", "PUT", re.compile(r"^/queue/(?P<app>.+?)/requests/(?P<request_id>[^/]+)/cancel/?$")),
    ("result", "GET", re.compile(r"^/queue/(?P<app>.+?)/requests/(?P<request_id>[^/]+)/?$")),
    ("submit", "POST", re.compile(r"^/queue/(?P<app>[^?]+?)/?$")),
    ("run", "POST", re.compile(r"^/run/(?P<app>.+?)/?$")),
    ("token", "POST", re.compile(r"^/rest/storage/auth/token/?$")),
    ("jwks", "GET", re.compile(r"^/rest/\.well-known/jwks\.json$")),
    ("upload", "POST", re.compile(r"^/cdn/files/upload/?$")),
    # Multipart (above 100 MiB): initiate, PUT each part under the file's own URL, complete.
    ("multipart", "POST", re.compile(r"^/cdn/files/upload/multipart/?$")),
    ("multipart_complete", "POST", re.compile(r"^/cdn/files/(?P<key>.+?)/multipart/(?P<upload_id>[^/]+)/complete/?$")),
    ("multipart_part", "PUT", re.compile(r"^/cdn/files/(?P<key>.+?)/multipart/(?P<upload_id>[^/]+)/(?P<part>\d+)/?$")),
    ("download", "GET", re.compile(r"^/cdn/files/(?P<key>.+)$")),
]


def match_route(method: str, path: str) -> tuple[Route, dict[str, str], bool]:
    """(route, path params, method allowed). HEAD is served like GET."""
    probe_method = "GET" if method == "HEAD" else method
    for route, allowed, pattern in _ROUTES:
        m = pattern.match(path)
        if m:
            return route, {k: unquote(v) for k, v in m.groupdict().items()}, allowed in ("*", probe_method)
    return "unknown", {}, True


class _BodyTooLarge(Exception):
    pass


@dataclasses.dataclass
class _MemoSlot:
    """One memoized output (``EmulatorConfig.memoize``), computed by the first request."""

    claimed: bool = False
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)
    value: tuple[dict[str, Any], int] | None = None


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers open connections so stop() can shut idle
    keep-alive sockets (their handler threads would otherwise block server_close())."""

    # Non-daemon so server_close() joins them (socketserver tracks only non-daemon
    # handler threads); close_connections() first makes sure none is left blocking.
    daemon_threads = False
    block_on_close = True
    # socketserver listens with a backlog of 5; a run submits all its requests at once (16
    # for 16 box prompts), and handshakes past a full accept queue are dropped and retried
    # by the kernel for seconds, or fail: the bench's 16-request run got a ReadError after
    # the connect, which the client rightly counts as an uncertain submit.
    request_queue_size = 128

    def __init__(self, emulator: EmulatorServer) -> None:
        self.emulator = emulator
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("emulator connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sam-emulator/0.1"
    timeout = 120  # idle keep-alive connections are dropped after this
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _dispatch(self) -> None:
        emu = self.server.emulator
        try:
            url = urlsplit(self.path)
            route, params, allowed = match_route(self.command, url.path)
            n, n_request = emu._stats.route_call(route, params.get("request_id"))
            try:
                body = self._read_body(emu.config.max_body_bytes)
            except _BodyTooLarge:
                self.close_connection = True
                self._send(_detail(413, f"request body larger than {emu.config.max_body_bytes} bytes"))
                return
            except ValueError:  # unparsable Content-Length or chunk size: framing is lost
                self.close_connection = True
                self._send(_detail(400, "malformed request body framing"))
                return
            action = emu._fault_for(RouteCall(route, n, self.command, url.path, params.get("request_id"), n_request))
            if action is not None and action.delay_s > 0 and emu._stopping.wait(action.delay_s):
                self._drop()
                return
            if action is not None and action.when == "before" and (action.drop or action.status is not None):
                self._apply(action)
                return
            if not allowed:
                response = _detail(405, "Method Not Allowed")
            else:
                request = _Request(
                    self.command, url.path, parse_qs(url.query), {k.lower(): v for k, v in self.headers.items()}, body
                )
                response = emu._handle(route, params, request)
            if action is not None and action.when == "after" and (action.drop or action.status is not None):
                self._apply(action)
                return
            if action is not None and action.cut_after is not None:
                response = dataclasses.replace(response, body=response.body[:int(len(response.body) * action.cut_after)],
                                               length=len(response.body))
                self.close_connection = True
            self._send(response)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            self.close_connection = True  # the client went away; nothing to answer
        except Exception as exc:  # noqa: BLE001 - answer 500 rather than kill the connection thread
            log.exception("emulator handler error")
            try:
                self._send(_detail(500, f"emulator error: {type(exc).__name__}: {exc}"))
            except OSError:
                self.close_connection = True

    def _read_body(self, limit: int) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked(limit)
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            raise _BodyTooLarge()
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) < length:  # the client hung up mid-body: never act on half a request
            raise ConnectionAbortedError("request body truncated")
        return body

    def _read_chunked(self, limit: int) -> bytes:
        chunks, total = [], 0
        while True:
            size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > limit:
                raise _BodyTooLarge()
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _apply(self, action: FaultAction) -> None:
        if action.drop:
            self._drop()
            return
        assert action.status is not None
        body = action.body if action.body is not None else {"detail": "injected fault"}
        if isinstance(body, str):  # a page, e.g. the proxy's own error page
            self._send(Response(action.status, body.encode(), "text/html", dict(action.headers)))
        else:
            self._send(json_response(action.status, body, dict(action.headers)))

    def _drop(self) -> None:
        """Close the connection without a response (the client sees a disconnect)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, response: Response) -> None:
        self.send_response(response.status, _REASONS.get(response.status))
        self.send_header("Content-Type", response.content_type)
        length = response.length if response.length is not None else len(response.body)
        self.send_header("Content-Length", str(length))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)


class EmulatorServer:
    """A fal look-alike on 127.0.0.1:<ephemeral port>.

    Use as a context manager (or ``start()``/``stop()``). Point a client at
    ``queue_url``, ``rest_url`` and ``cdn_url`` with ``key``; ``fal_client_globals()``
    gives the values to patch into ``fal_client.client``.
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self._storage = Storage(self.config.token_ttl_s)
        self._stats = StatsRecorder()
        self._faults: FaultHook | None = self.config.faults
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._jobs: JobManager | None = None
        self._base_url = ""
        self._signing_key: Any = None  # Ed25519 private key, made on first webhook
        self._key_lock = threading.Lock()
        self._deliveries: list[threading.Thread] = []
        self._memo: dict[str, _MemoSlot] = {}
        self._memo_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> EmulatorServer:
        if self._base_url:
            raise RuntimeError("an EmulatorServer starts once; create a new one (a new port would orphan its URLs)")
        jobs = JobManager(
            self._run_job,
            queue_steps=self.config.queue_steps,
            queue_time_s=self.config.queue_time_s,
            service_time_s=self.config.service_time_s,
            workers=self.config.workers,
            result_ttl_s=self.config.result_ttl_s,
            large_result_ttl_s=self.config.large_result_ttl_s,
            log_window=self.config.log_window,
            on_finish=self._job_finished,
            on_start=lambda running: self._stats.peak("max_running", running),
        )
        httpd = _HTTPServer(self)
        self._base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
        jobs.start()
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="sam-emulator-http", daemon=True)
        thread.start()
        self._httpd, self._jobs, self._thread = httpd, jobs, thread
        return self

    def stop(self) -> None:
        """Stop accepting, cancel jobs, release every connection, join every thread."""
        if self._httpd is None:
            return
        httpd, jobs, thread = self._httpd, self._jobs, self._thread
        self._stopping.set()
        httpd.shutdown()  # ends serve_forever; no new connections after this
        assert jobs is not None and thread is not None
        jobs.stop()  # finishes every job, which also wakes /run handlers
        httpd.close_connections()
        httpd.server_close()  # joins the handler threads
        thread.join()
        for delivery in list(self._deliveries):
            delivery.join()
        self._storage.close()
        self._httpd = self._jobs = self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what clients need ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if not self._base_url:
            raise RuntimeError("emulator not started")
        return self._base_url

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def queue_url(self) -> str:
        return self.base_url + "/queue"

    @property
    def run_url(self) -> str:
        return self.base_url + "/run"

    @property
    def rest_url(self) -> str:
        return self.base_url + "/rest"

    @property
    def cdn_url(self) -> str:
        return self.base_url + "/cdn"

    @property
    def stats(self) -> EmulatorStats:
        """A snapshot of the counters (take a new one to see later calls)."""
        return self._stats.snapshot()

    def fal_client_globals(self) -> dict[str, str]:
        """Values for ``fal_client.client``'s module globals to target this emulator."""
        return {
            "QUEUE_URL_FORMAT": self.queue_url + "/",
            "RUN_URL_FORMAT": self.run_url + "/",
            "REST_URL": self.rest_url,
            "CDN_URL": self.cdn_url,
        }

    def set_faults(self, hook: FaultHook | None) -> None:
        """Replace the fault hook while running (e.g. arm faults after test setup)."""
        self._faults = hook

    def job(self, request_id: str) -> Job | None:
        """The emulator's record of a request, for tests that need to look inside."""
        return self._jobs.get(request_id) if self._jobs is not None else None

    def expire(self, request_id: str) -> bool:
        """Forget a request now, as fal does with results after their retention time:
        status and result then answer 404. True if it was known."""
        return self._jobs.forget(request_id) if self._jobs is not None else False

    def cancel_job(self, request_id: str) -> bool:
        """Cancel a request from fal's side (not a client cancel call): it completes as
        cancelled. True if it was still running or queued."""
        job = self.job(request_id)
        if job is None or self._jobs is None:
            return False
        status, _ = self._jobs.cancel(job)
        return status == 202

    def stored_file(self, url: str) -> StoredFile | None:
        """The CDN file behind an ``access_url`` this emulator returned (None if absent or expired)."""
        prefix = self.cdn_url + "/files/"
        if not url.startswith(prefix):
            return None
        return self._storage.get(url[len(prefix):])

    def expire_file(self, url: str) -> bool:
        """Drop a CDN file now, as if the lifetime its uploader asked for had run out."""
        prefix = self.cdn_url + "/files/"
        return url.startswith(prefix) and self._storage.expire(url[len(prefix):])

    def jwks(self) -> dict[str, Any]:
        """The public key webhook deliveries are signed with, as fal publishes its keys."""
        from cryptography.hazmat.primitives import serialization

        raw = self._webhook_key().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "emulator", "use": "sig", "alg": "EdDSA"}]}

    # -- internals -----------------------------------------------------------------------

    def _fault_for(self, call: RouteCall) -> FaultAction | None:
        hook = self._faults
        return hook(call) if hook is not None else None

    def _job_finished(self, job: Job) -> None:
        if job.failure is None:
            self._stats.add("jobs_completed")
        elif job.failure.error_type == failures.CANCELLED:
            self._stats.add("jobs_cancelled")
        else:
            self._stats.add("jobs_failed")
        if job.webhook_url:
            # Called under the job manager's lock: deliver from another thread.
            delivery = threading.Thread(target=self._deliver_webhook, args=(job,), name="sam-emulator-webhook", daemon=True)
            self._deliveries = [t for t in self._deliveries if t.is_alive()] + [delivery]
            delivery.start()

    def _webhook_key(self) -> Any:
        with self._key_lock:
            if self._signing_key is None:
                from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

                self._signing_key = Ed25519PrivateKey.generate()
            return self._signing_key

    def _deliver_webhook(self, job: Job) -> None:
        """POST fal's webhook body, signed, to a loopback URL (never anywhere else)."""
        import urllib.request
        from urllib.parse import urlsplit as _split

        url = job.webhook_url or ""
        if _split(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            log.warning("emulator does not deliver webhooks off loopback: %s", url)
            return
        if job.failure is None:
            body = {"request_id": job.request_id, "gateway_request_id": job.request_id, "status": "OK",
                    "payload": job.output, "error": None}
        else:
            body = {"request_id": job.request_id, "gateway_request_id": job.request_id, "status": "ERROR",
                    "payload": job.failure.body(), "error": job.failure.error}
        data = json.dumps(body).encode()
        for _ in range(self.config.webhook_copies):
            timestamp = str(int(time.time()))
            message = "\n".join([job.request_id, WEBHOOK_USER_ID, timestamp, hashlib.sha256(data).hexdigest()]).encode()
            headers = {
                "Content-Type": "application/json",
                "X-Fal-Webhook-Request-Id": job.request_id,
                "X-Fal-Webhook-User-Id": WEBHOOK_USER_ID,
                "X-Fal-Webhook-Timestamp": timestamp,
                "X-Fal-Webhook-Signature": self._webhook_key().sign(message).hex(),
            }
            for _attempt in range(WEBHOOK_ATTEMPTS):
                try:
                    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers, method="POST"), timeout=5) as r:
                        if 200 <= r.status < 300:
                            self._stats.add("webhook_deliveries")
                            break
                except OSError:
                    pass
                if self._stopping.wait(WEBHOOK_RETRY_S):
                    return

    def _run_job(self, job: Job) -> tuple[dict[str, Any], int]:
        if job.app.app_id not in KNOWN_APPS or job.app.app_id in self.config.unavailable_apps:
            raise failures.app_not_found(job.app.app_id)  # missing_app_at="result"
        parsed = parse_input(job.app.input_model, job.payload)
        if isinstance(parsed, list):  # only when validate_on_submit is off
            raise failures.invalid_input(parsed)
        key = self._memo_key(job, parsed) if self.config.memoize else None
        if key is None:
            return self._compute(job, parsed)
        with self._memo_lock:  # single flight: identical requests running at once compute once
            slot = self._memo.setdefault(key, _MemoSlot())
            first = not slot.claimed
            slot.claimed = True
        if first:
            try:
                slot.value = self._compute(job, parsed)
            finally:
                slot.ready.set()
                if slot.value is None:  # failed: let the next identical request try again
                    with self._memo_lock:
                        self._memo.pop(key, None)
        else:
            slot.ready.wait()
            if slot.value is None:
                return self._compute(job, parsed)
            job.log("Reusing the output of an identical earlier request (memoize)")
        assert slot.value is not None
        return slot.value

    def _compute(self, job: Job, parsed: Any) -> tuple[dict[str, Any], int]:
        ctx = RunContext(self._storage, self.cdn_url, self.config.score, job.cancel, job.log, self.config.rle_layout)
        out = run_sam_video(job.app, parsed, ctx)
        return out.output, out.frames

    def _memo_key(self, job: Job, parsed: Any) -> str | None:
        """Same app, same input apart from the URL, same video bytes -> same output."""
        try:
            data = resolve_video(parsed.video_url, self._storage, self.cdn_url)
        except failures.JobFailure:
            return None
        body = json.dumps({k: v for k, v in job.payload.items() if k != "video_url"}, sort_keys=True)
        return hashlib.sha256(f"{job.app.app_id}\n{body}\n".encode() + hashlib.sha256(data).digest()).hexdigest()

    def _handle(self, route: Route, params: dict[str, str], req: _Request) -> Response:
        if route in ("submit", "run"):
            return self._submit(params["app"], req, run=route == "run")
        if route in ("status", "result", "cancel"):
            return self._request_route(route, params, req)
        if route == "token":
            return self._token(req)
        if route == "upload":
            return self._upload(req)
        if route in ("multipart", "multipart_part", "multipart_complete"):
            return self._multipart(route, params, req)
        if route == "download":
            return self._download(params["key"], head=req.method == "HEAD")
        if route == "jwks":
            return json_response(200, self.jwks())
        return _detail(404, "Not Found")

    def _key_auth(self, req: _Request) -> Response | None:
        header = req.headers.get("authorization")
        if not header:
            self._stats.add("auth_failures")
            return _detail(401, "Missing Authorization header: send 'Authorization: Key <FAL_KEY>'")
        if header != f"Key {self.config.key}":
            self._stats.add("auth_failures")
            return _detail(401, "No user found for Key ID and Secret")
        return None

    def _submit(self, app_path: str, req: _Request, *, run: bool) -> Response:
        if (denied := self._key_auth(req)) is not None:
            return denied
        app = KNOWN_APPS.get(app_path) if app_path not in self.config.unavailable_apps else None
        missing = app is None
        if missing and self.config.missing_app_at == "submit":
            return _detail(404, f"Application '{app_path}' not found")
        if app is None:  # accepted now, "not found" on the result route (see EmulatorConfig)
            app = AppSpec(app_path, "video", Sam31VideoInput)
        try:
            payload = json.loads(req.body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _detail(422, [{"loc": ["body", getattr(exc, "pos", 0)], "msg": "JSON decode error", "type": "json_invalid"}])
        if (self.config.validate_on_submit and not missing) or not isinstance(payload, dict):
            parsed = parse_input(app.input_model, payload)
            if isinstance(parsed, list):
                return _detail(422, parsed)
        webhook = (req.query.get("fal_webhook") or [None])[0]
        owner_app = "/".join(app_path.split("/")[:2])
        assert self._jobs is not None
        try:
            # A webhook client never polls, and polls are what move queued jobs along.
            job, position = self._jobs.submit(app, owner_app, payload, webhook, release_now=run or webhook is not None)
        except RuntimeError:
            return _detail(503, "emulator is stopping")
        headers = {REQUEST_ID_HEADER: job.request_id}
        if run:
            self._stats.add("run_calls")
            self._jobs.wait(job)
            return self._result_response(job)
        self._stats.submitted(app_path, payload)
        base = f"{self.queue_url}/{owner_app}/requests/{job.request_id}"
        return json_response(
            200,
            {
                "request_id": job.request_id,
                "status": "IN_QUEUE",
                "queue_position": position,
                "status_url": base + "/status",
                "response_url": base,
                "cancel_url": base + "/cancel",
            },
            headers,
        )

    def _request_route(self, route: Route, params: dict[str, str], req: _Request) -> Response:
        request_id = params["request_id"]
        if route == "status":
            self._stats.status_call(request_id)
        elif route == "cancel":
            self._stats.cancel_call(request_id)
        else:
            self._stats.add("result_calls")
        if (denied := self._key_auth(req)) is not None:
            return denied
        assert self._jobs is not None
        job = self._jobs.get(request_id)
        # The URL keeps "<owner>/<alias>" of the app id (a sub-path is tolerated).
        if job is None or "/".join(params["app"].split("/")[:2]) != job.owner_app:
            return _detail(404, f"Request '{request_id}' not found")
        headers = {REQUEST_ID_HEADER: job.request_id}
        if route == "status":
            flag = (req.query.get("logs") or ["false"])[0].lower()
            status, body = self._jobs.poll(job, with_logs=flag in ("true", "1"))
            return json_response(status, body, headers)
        if route == "cancel":
            status, body = self._jobs.cancel(job)
            if status == 202 and self.config.cancel_ok_status == 200:
                status, body = 200, {"status": "OK"}
            return json_response(status, body, headers)
        return self._result_response(job)

    def _result_response(self, job: Job) -> Response:
        headers = {REQUEST_ID_HEADER: job.request_id}
        if job.state is not JobState.COMPLETED:
            return json_response(400, {"detail": "Request is still in progress"}, headers)
        if job.failure is not None:
            if job.failure.request_error:
                headers[ERROR_TYPE_HEADER] = job.failure.error_type
            return json_response(job.failure.status_code, job.failure.body(), headers)
        headers[BILLABLE_UNITS_HEADER] = str(job.billable_units)
        return json_response(200, job.output, headers)

    def _token(self, req: _Request) -> Response:
        self._stats.add("token_calls")
        if (denied := self._key_auth(req)) is not None:
            return denied
        token = self._storage.issue_token()
        return json_response(
            200, {"token": token.token, "token_type": "Bearer", "base_url": self.cdn_url, "expires_at": token.expires_at_iso()}
        )

    def _token_auth(self, req: _Request) -> Response | None:
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self._storage.token_valid(token.strip()):
            self._stats.add("auth_failures")
            return _detail(401, "Invalid or expired upload token")
        return None

    @staticmethod
    def _lifecycle(req: _Request) -> dict[str, Any] | None:
        for name in LIFECYCLE_HEADERS:
            if (value := parse_lifecycle(req.headers.get(name))) is not None:
                return value
        return None

    def _upload(self, req: _Request) -> Response:
        if (denied := self._token_auth(req)) is not None:
            return denied
        content_type = req.headers.get("content-type") or "application/octet-stream"
        key = self._storage.put(req.body, content_type, req.headers.get("x-fal-file-name"), self._lifecycle(req))
        self._stats.add("uploads")
        self._stats.add("upload_bytes", len(req.body))
        return json_response(200, {"access_url": f"{self.cdn_url}/files/{key}"})

    def _multipart(self, route: Route, params: dict[str, str], req: _Request) -> Response:
        if (denied := self._token_auth(req)) is not None:
            return denied
        try:
            if route == "multipart":
                content_type = req.headers.get("content-type") or "application/octet-stream"
                key, upload_id = self._storage.begin_multipart(content_type, req.headers.get("x-fal-file-name"), self._lifecycle(req))
                return json_response(200, {"access_url": f"{self.cdn_url}/files/{key}", "uploadId": upload_id})
            if route == "multipart_part":
                etag = self._storage.put_part(params["key"], params["upload_id"], int(params["part"]), req.body)
                self._stats.add("multipart_parts")
                return Response(200, b"", "text/plain", {"ETag": etag})
            try:
                listed = json.loads(req.body or b"{}")["parts"]
                parts = [(int(p["partNumber"]), str(p["etag"])) for p in listed]
            except (ValueError, KeyError, TypeError):
                return _detail(400, 'complete needs {"parts": [{"partNumber": n, "etag": "..."}]}')
            stored = self._storage.complete_multipart(params["key"], params["upload_id"], parts)
        except MultipartError as exc:
            return _detail(exc.status, str(exc))
        self._stats.add("uploads")
        self._stats.add("multipart_uploads")
        self._stats.add("upload_bytes", stored.size)
        return json_response(200, {"access_url": f"{self.cdn_url}/files/{params['key']}"})

    def _download(self, key: str, *, head: bool = False) -> Response:
        stored = self._storage.get(key)
        if stored is None:
            return _detail(404, "File not found")
        if head:
            return Response(200, b"", stored.content_type, length=stored.size)
        self._stats.add("downloads")
        return Response(200, stored.read(), stored.content_type)
