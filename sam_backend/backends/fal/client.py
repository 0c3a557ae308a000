"""fal's queue protocol over httpx: submit, status, result, cancel.

Retry rules (pure functions below, unit-tested without a network):
- status, result, cancel and uploads are idempotent: retried with jittered exponential
  backoff on transport errors and on 408/409/429/5xx, honouring ``Retry-After``.
- submit costs money: it is resent only when the failure proves fal did not accept it
  (the connection was never made, 429, or the proxy's own 503; never a 502 or 504, see
  :func:`submit_was_rejected`).
  Any other failure raises :class:`SubmitUncertain`, so nothing is billed twice.
- the key is attached only to fal's queue and REST hosts, never to CDN or video URLs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import enum
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from ...errors import (
    AuthError,
    BackendUnavailable,
    Cancelled,
    InvalidRequest,
    QuotaError,
    RemoteFailure,
    ResultExpired,
    UnexpectedResponse,
)
from .config import FalConfig

# Pieces a streamed result is read in: big enough for few calls, small next to any result.
RESULT_CHUNK_BYTES = 256 * 1024
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 5


class EndpointNotFound(InvalidRequest):
    """fal has no app with this id: 404 on submit, or (unconfirmed whether fal does this)
    an accepted request whose status or result says the application was not found.
    Nothing is billed for it."""

    def __init__(self, endpoint: str, *, detail: str = "404 on submit"):
        self.endpoint = endpoint
        super().__init__(f"fal has no endpoint '{endpoint}' ({detail}); check the endpoint id")


class CancelOutcome(enum.Enum):
    """What fal said to a cancel (its docs list OK, CANCELLATION_REQUESTED,
    ALREADY_COMPLETED and NOT_FOUND)."""

    STOPPING = "stopping"  # 200 OK / 202 CANCELLATION_REQUESTED: fal will stop it, nothing to fetch
    ALREADY_COMPLETED = "already_completed"  # 400: it finished first; its result is paid for
    NOT_FOUND = "not_found"  # 404: fal does not know the request (any more)


# How fal words "no such app" (unconfirmed beyond the 404 on submit): matched on 404 bodies
# of status and result so a missing endpoint is never mistaken for an expired result.
_APP_NOT_FOUND = re.compile(r"\b(application|app)\b.*\bnot found\b|no such app", re.IGNORECASE)


def says_app_not_found(response: httpx.Response) -> bool:
    return response.status_code == 404 and bool(_APP_NOT_FOUND.search(_detail(response)))


class SubmitUncertain(BackendUnavailable):
    """A submit failed in a way that does not prove fal rejected it: it may be running and
    billed. It is not resent; the caller should look for it before submitting again."""


class RequestGone(ResultExpired):
    """fal no longer knows a request id it once accepted (404 on status): its retention ran out."""


class ResultInterrupted(BackendUnavailable):
    """The connection broke while a result was being read: fetching it again is safe."""


class ResultTooLarge(UnexpectedResponse):
    """A result is bigger than ``FalConfig.max_result_bytes``: it was not read further,
    nothing was stored or written, and the request is not resubmitted (it is paid for;
    raise the limit and rerun to read it while fal still keeps it)."""

    def __init__(self, request_id: str, limit: int, size: int | None = None):
        self.request_id, self.limit, self.size = request_id, limit, size
        got = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
        super().__init__(
            f"fal request {request_id}: the result is {got}, over the limit max_result_bytes={limit:,}; it was not "
            "stored and nothing was written. The request is paid for and not resubmitted: raise max_result_bytes "
            "(backend_options={'max_result_bytes': ...}) and rerun within minutes (fal keeps large results ~6 "
            "minutes), or segment fewer frames per request")


class RemoteCancelled(RemoteFailure):
    """fal completed the request as cancelled (by us earlier, or on fal's side)."""


# fal marks request-level errors with this header / error_type.
CANCELLED_ERROR_TYPES = frozenset({"request_cancelled", "cancelled"})

# --------------------------------------------------------------------------- status types


@dataclasses.dataclass(frozen=True)
class RequestHandle:
    """Everything needed to follow one submitted request, from any process."""

    endpoint: str
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str

    @classmethod
    def from_request_id(cls, queue_url: str, endpoint: str, request_id: str) -> RequestHandle:
        """Rebuild the URLs fal returns on submit (owner/app; any sub-path is dropped)."""
        owner_app = "/".join(endpoint.split("/")[:2])
        base = f"{queue_url.rstrip('/')}/{owner_app}/requests/{request_id}"
        return cls(endpoint, request_id, f"{base}/status", base, f"{base}/cancel")


@dataclasses.dataclass
class ResultStream:
    """A result being read: ``chunks`` yields its raw bytes as they arrive (raising
    :class:`ResultTooLarge` past the limit, :class:`BackendUnavailable` on a broken connection)."""

    chunks: Iterator[bytes]
    request_id: str
    billable_units: float | None


@dataclasses.dataclass(frozen=True)
class Queued:
    position: int


@dataclasses.dataclass(frozen=True)
class InProgress:
    logs: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Completed:
    logs: tuple[str, ...] = ()
    inference_time_s: float | None = None
    error: str | None = None
    error_type: str | None = None


Status = Queued | InProgress | Completed


def parse_status(body: Any) -> Status:
    """The one place status bodies are read; anything unknown raises."""
    if not isinstance(body, dict) or "status" not in body:
        raise UnexpectedResponse(f"fal status body has no 'status': {str(body)[:200]}")
    logs = tuple(str(line.get("message", "")) for line in (body.get("logs") or []) if isinstance(line, dict))
    match body["status"]:
        case "IN_QUEUE":
            return Queued(int(body.get("queue_position") or 0))
        case "IN_PROGRESS":
            return InProgress(logs)
        case "COMPLETED":
            metrics = body.get("metrics") or {}
            return Completed(logs, metrics.get("inference_time"), body.get("error"), body.get("error_type"))
    raise UnexpectedResponse(f"unknown fal status {body['status']!r}")


@dataclasses.dataclass(frozen=True)
class FalResult:
    payload: dict[str, Any]
    request_id: str
    billable_units: float | None


# --------------------------------------------------------------------------- retry rules


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a Retry-After header (seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


# A Retry-After longer than this is waited in steps of this length: the retry count then
# bounds the whole wait (a server asking for 30 s six times held a status call over 3 min).
RETRY_AFTER_MAX_S = 20.0


def backoff_delay(attempt: int, *, retry_after: float | None, cap_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff from 0.25 s, at most cap; Retry-After when given, up
    to the larger of cap and RETRY_AFTER_MAX_S."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), max(cap_s, RETRY_AFTER_MAX_S))
    return rng.uniform(0.5, 1.0) * min(cap_s, 0.25 * 2**attempt)


def submit_was_rejected(status_code: int | None, headers: httpx.Headers | None, exc: Exception | None,
                        body: str = "") -> bool:
    """True only when a failed submit provably did not create a request at fal.

    - No TCP connection (or TLS handshake): nothing reached fal.
    - 429: refused by rate limiting.
    - 503 from the proxy (no ``x-fal-request-id``, an nginx page, as fal-client tells a proxy
      answer apart): "unable to handle the request" (RFC 9110 15.6.4), nothing forwarded.
    - Never 502 or 504, even from the proxy: both say it had forwarded the request upstream
      and got a bad or no answer (RFC 9110 15.6.3, 15.6.5), so fal may have queued it.
    """
    if exc is not None:
        return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
    if status_code == 429:
        return True
    if status_code == 503:
        return (headers is None or "x-fal-request-id" not in headers) and "nginx" in body.lower()
    return False


# --------------------------------------------------------------------------- client


class FalClient:
    """One httpx client for everything fal: queue calls, storage, downloads."""

    def __init__(
        self,
        config: FalConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._rng = rng or random.Random()
        timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
        # Redirects are followed by hand, and only to the configured fal hosts (send()).
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)
        self._auth_hosts = {urlsplit(config.queue_url).netloc, urlsplit(config.rest_url).netloc}
        self._fal_hosts = self._auth_hosts | {urlsplit(config.cdn_url).netloc}
        key = config.key.get_secret_value()
        # The key and its halves never appear in a message, whatever a server echoes back.
        self._secrets = sorted({s for s in (key, *key.split(":", 1)) if len(s) >= 6}, key=len, reverse=True)
        self.stats = {"submit": 0, "status": 0, "result": 0, "cancel": 0, "retries": 0}
        self._stats_lock = threading.Lock()
        self._local = threading.local()  # this thread's cancel token (see cancellable)

    # -- plumbing

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self, url: str, extra: dict[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        if "Authorization" not in headers and urlsplit(url).netloc in self._auth_hosts:
            headers["Authorization"] = f"Key {self.config.key.get_secret_value()}"
        return headers

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def send(self, method: str, url: str, *, idempotent: bool = True, headers: dict[str, str] | None = None,
             timeout: float | None = None, stream: bool = False, **kwargs: Any) -> httpx.Response:
        """Send with retries for idempotent calls; return the final response (any status).
        A redirect is followed only to a configured fal host (at most MAX_REDIRECTS).
        ``stream``: a 200's body is left unread (the caller reads and closes it); any other
        final answer is read whole (error bodies are small)."""
        attempt = hops = 0
        while True:
            try:
                request = self._http.build_request(
                    method, url, headers=self._headers(url, headers),
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT, **kwargs,
                )
                response = self._http.send(request, stream=stream)
                if stream and response.status_code != 200:
                    try:
                        response.read()
                    finally:
                        response.close()
            except httpx.LocalProtocolError as exc:  # nothing was sent (e.g. a header it cannot carry): no retry
                raise InvalidRequest(f"could not send a request to {_host(url)}: {type(exc).__name__} "
                                     "(a header value it cannot carry); nothing was sent") from None
            except httpx.TransportError as exc:
                if not idempotent or attempt >= self.config.max_retries:
                    raise BackendUnavailable(
                        f"cannot reach {_host(url)}: {type(exc).__name__}: {self.redact(str(exc))}") from exc
                self._pause(attempt, None)
                attempt += 1
                continue
            if response.is_redirect and response.next_request is not None:
                target = response.next_request.url
                if target.netloc.decode() not in self._fal_hosts or hops >= MAX_REDIRECTS:
                    raise UnexpectedResponse(
                        f"{_host(url)} answered {response.status_code} redirecting to {target.scheme}://{target.host}, "
                        "which is not one of the configured fal hosts (queue_url, rest_url, cdn_url): not followed")
                method, url, hops = response.next_request.method, str(target), hops + 1
                if method == "GET":  # a 303 turns a POST into a GET without its body
                    kwargs.pop("content", None)
                    kwargs.pop("json", None)
                continue
            if idempotent and response.status_code in RETRYABLE_STATUS and attempt < self.config.max_retries:
                self._pause(attempt, retry_after_seconds(response.headers.get("retry-after")))
                attempt += 1
                continue
            return response

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self.stats[name] += 1

    @contextlib.contextmanager
    def cancellable(self, cancel: Any | None) -> Iterator[None]:
        """Within this block, this thread's waits before a retry end at once when ``cancel``
        (a CancelToken) is set, raising Cancelled. ``None``: not cancellable (the cancel
        call itself must still get through)."""
        previous = getattr(self._local, "cancel", None)
        self._local.cancel = cancel
        try:
            yield
        finally:
            self._local.cancel = previous

    def wait_before_retry(self, attempt: int) -> None:
        """The backoff before retrying an idempotent step the caller repeats itself (e.g. a
        result read again after its connection broke); cancellable like every retry wait."""
        self._pause(attempt, None)

    def _pause(self, attempt: int, retry_after: float | None) -> None:
        self._count("retries")
        delay = backoff_delay(attempt, retry_after=retry_after, cap_s=self.config.retry_cap_s, rng=self._rng)
        cancel = getattr(self._local, "cancel", None)
        if cancel is None:
            self._sleep(delay)
        elif cancel.wait(delay):
            raise Cancelled("cancelled while waiting to retry a call to fal")

    # -- queue verbs

    def submit(self, endpoint: str, payload: dict[str, Any], *, webhook_url: str | None = None) -> RequestHandle:
        """Submit once. Resent only when fal provably did not take it (see module doc)."""
        url = f"{self.config.queue_url.rstrip('/')}/{endpoint}"
        params = {"fal_webhook": webhook_url} if webhook_url else None
        attempt = 0
        while True:
            self._count("submit")
            exc: Exception | None = None
            response = None
            try:
                response = self._http.request("POST", url, json=payload, params=params, headers=self._headers(url, None))
            except httpx.LocalProtocolError:  # refused before anything was sent
                raise InvalidRequest(f"could not send the submit to {endpoint}: a header value it cannot carry; "
                                     "nothing was sent") from None
            except httpx.TransportError as e:
                exc = e
            if response is not None and response.status_code == 200:
                return self._handle_from_submit(endpoint, response)
            status = response.status_code if response is not None else None
            if submit_was_rejected(status, response.headers if response is not None else None, exc,
                                   response.text if response is not None else ""):
                if attempt < self.config.max_retries:
                    self._pause(attempt, retry_after_seconds(response.headers.get("retry-after")) if response is not None else None)
                    attempt += 1
                    continue
                raise BackendUnavailable(
                    f"fal did not accept the submit to {endpoint} after {attempt + 1} tries "
                    f"({status or type(exc).__name__}); nothing was billed"
                ) from exc
            if response is None:
                raise SubmitUncertain(
                    f"submit to {endpoint} failed after the connection was made ({type(exc).__name__}); "
                    "fal may have accepted it, so it was not resent"
                ) from exc
            if status == 404:
                raise EndpointNotFound(endpoint)
            if 400 <= status < 500 and status not in (408, 409):  # a refusal: nothing was queued
                self.raise_for_response(response, what=f"submit to {endpoint}")
            raise SubmitUncertain(
                f"submit to {endpoint} answered {status} ({self.redact(_detail(response))}); fal may have accepted it, "
                "so it was not resent"
            )

    def _handle_from_submit(self, endpoint: str, response: httpx.Response) -> RequestHandle:
        body = _json(response, "submit")
        try:
            return RequestHandle(endpoint, body["request_id"], body["status_url"], body["response_url"], body["cancel_url"])
        except KeyError as exc:
            raise UnexpectedResponse(f"fal submit answer lacks {exc}: {str(body)[:200]}") from None

    def status(self, handle: RequestHandle, *, logs: bool = True) -> Status:
        self._count("status")
        response = self.send("GET", handle.status_url, params={"logs": "true" if logs else "false"})
        if says_app_not_found(response):
            raise EndpointNotFound(handle.endpoint, detail=f"status of request {handle.request_id}: {self.redact(_detail(response))}")
        if response.status_code in (404, 410):
            raise RequestGone(
                f"fal no longer knows request {handle.request_id} on {handle.endpoint} (results are kept about 6 "
                "minutes when 10 KB or larger, about an hour otherwise)",
                request_id=handle.request_id,
            )
        if response.status_code not in (200, 202):
            self.raise_for_response(response, what="status", request_id=handle.request_id)
        return parse_status(_json(response, "status"))

    def result(self, handle: RequestHandle) -> FalResult:
        """The whole result, parsed (small results, tools; the backend streams: :meth:`result_stream`)."""
        self._count("result")
        response = self.send("GET", handle.response_url)
        self._check_result(response, handle)
        units = response.headers.get("x-fal-billable-units")
        return FalResult(_json(response, "result"), handle.request_id, float(units) if units else None)

    @contextlib.contextmanager
    def result_stream(self, handle: RequestHandle, *, max_bytes: int | None = None) -> Iterator[ResultStream]:
        """The result's raw bytes as they arrive, never held whole. Past ``max_bytes``
        (announced by Content-Length, or counted) :class:`ResultTooLarge` is raised and
        nothing more is read."""
        self._count("result")
        response = self.send("GET", handle.response_url, stream=True)
        try:
            self._check_result(response, handle)
            declared = response.headers.get("content-length")
            if max_bytes is not None and declared and declared.isdigit() and int(declared) > max_bytes:
                raise ResultTooLarge(handle.request_id, max_bytes, int(declared))
            units = response.headers.get("x-fal-billable-units")
            yield ResultStream(self._limited(response, handle, max_bytes), handle.request_id,
                               float(units) if units else None)
        finally:
            response.close()

    def _limited(self, response: httpx.Response, handle: RequestHandle, max_bytes: int | None) -> Iterator[bytes]:
        total = 0
        try:
            for chunk in response.iter_bytes(RESULT_CHUNK_BYTES):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise ResultTooLarge(handle.request_id, max_bytes)
                yield chunk
        except httpx.TransportError as exc:
            raise ResultInterrupted(f"the connection broke while reading the result of fal request "
                                    f"{handle.request_id} ({type(exc).__name__})") from exc

    def _check_result(self, response: httpx.Response, handle: RequestHandle) -> None:
        if response.status_code == 200:  # a streamed body is still unread: do not look at it
            return
        error_type = response.headers.get("x-fal-error-type") or _error_type(response)
        if says_app_not_found(response):
            raise EndpointNotFound(handle.endpoint, detail=f"result of request {handle.request_id}: {self.redact(_detail(response))}")
        if response.status_code >= 400 and error_type in CANCELLED_ERROR_TYPES:
            raise RemoteCancelled(f"fal cancelled the request ({self.redact(_detail(response))})", request_id=handle.request_id)
        if response.status_code in (404, 410):
            raise ResultExpired(
                "fal no longer has this result (results of 10 KB or more are kept about 6 minutes)",
                request_id=handle.request_id,
            )
        if response.status_code != 200:
            self.raise_for_response(response, what="result", request_id=handle.request_id)

    def cancel(self, handle: RequestHandle) -> CancelOutcome:
        """Ask fal to stop the request; say what fal answered."""
        self._count("cancel")
        response = self.send("PUT", handle.cancel_url)
        status = _json_status(response)
        if response.status_code in (200, 202) and status != "ALREADY_COMPLETED":
            return CancelOutcome.STOPPING
        if response.status_code == 400 or status == "ALREADY_COMPLETED":
            return CancelOutcome.ALREADY_COMPLETED
        if response.status_code == 404:
            return CancelOutcome.NOT_FOUND
        self.raise_for_response(response, what="cancel", request_id=handle.request_id)
        raise AssertionError("unreachable")  # raise_for_response raised

    def alive(self, url: str) -> bool:
        """Whether a public file URL still answers (HEAD 200): fal deletes uploads after
        the lifetime they were given."""
        try:
            return self.send("HEAD", url).status_code == 200
        except BackendUnavailable:
            return False

    def download(self, url: str) -> bytes:
        response = self.send("GET", url, timeout=self.config.upload_timeout_s)
        if response.status_code != 200:
            self.raise_for_response(response, what=f"download of {url}")
        return response.content

    # -- errors

    def raise_for_response(self, response: httpx.Response, *, what: str, request_id: str | None = None) -> None:
        code = response.status_code
        detail = self.redact(_detail(response))
        if code == 401:
            raise AuthError(f"fal refused the key for {what} (401): check FAL_KEY ({detail})")
        if code == 403:
            raise QuotaError(f"fal refused {what} (403): the account is locked or out of balance ({detail})")
        if code == 422:
            raise InvalidRequest([self.redact(line) for line in _validation_lines(response)] or [f"{what}: {detail}"])
        if code in RETRYABLE_STATUS:
            raise BackendUnavailable(f"fal kept failing {what} ({code}: {detail})")
        if request_id is not None:
            raise RemoteFailure(f"fal failed {what} ({code}: {detail})", request_id=request_id)
        raise UnexpectedResponse(f"fal answered {code} to {what}: {detail}")


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise UnexpectedResponse(f"fal {what} answer is not JSON: {response.text[:200]!r}") from None


def _json_status(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("status") if isinstance(body, dict) and isinstance(body.get("status"), str) else None


def _error_type(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error_type") if isinstance(body, dict) else None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:300]
    return str(body)[:300]


def _validation_lines(response: httpx.Response) -> list[str]:
    """fal 422 bodies: {"detail": [{"loc": [...], "msg": ..., "type": ...}]} -> 'a.b[0]: msg'."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return []
    if not isinstance(detail, list):
        return [str(detail)] if detail else []
    lines = []
    for item in detail:
        if not isinstance(item, dict):
            continue
        loc = ""
        for part in [p for p in item.get("loc", []) if p != "body"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        lines.append(f"{loc or 'request'}: {item.get('msg', '')} (fal)")
    return lines
