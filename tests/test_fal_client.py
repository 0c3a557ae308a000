"""The fal queue client on httpx.MockTransport: retry rules, submit never resent blindly,
errors mapped to typed exceptions, the key only sent to fal's own hosts."""

from __future__ import annotations

import random

import httpx
import pytest

from sam_backend.backends.fal.client import (
    Completed,
    EndpointNotFound,
    FalClient,
    InProgress,
    Queued,
    RequestHandle,
    SubmitUncertain,
    backoff_delay,
    parse_status,
    retry_after_seconds,
    submit_was_rejected,
)
from sam_backend.backends.fal.config import FalConfig
from sam_backend.errors import (
    AuthError,
    BackendUnavailable,
    InvalidRequest,
    QuotaError,
    ResultExpired,
    SamError,
    UnexpectedResponse,
)

KEY = "kid:ksecret"
CONFIG = FalConfig(key=KEY, queue_url="https://queue.test", rest_url="https://rest.test", cdn_url="https://cdn.test")
# What nginx serves for its own 5xx (the proxy fal-client recognises by "nginx" in the body).
NGINX_PAGE = "<html><head><title>%d</title></head><body><hr><center>nginx</center></body></html>"
SUBMIT_OK = {
    "request_id": "r1",
    "status": "IN_QUEUE",
    "queue_position": 0,
    "status_url": "https://queue.test/fal-ai/sam-3-1/requests/r1/status",
    "response_url": "https://queue.test/fal-ai/sam-3-1/requests/r1",
    "cancel_url": "https://queue.test/fal-ai/sam-3-1/requests/r1/cancel",
}


def make_client(handler) -> tuple[FalClient, list[float]]:
    sleeps: list[float] = []
    client = FalClient(CONFIG, transport=httpx.MockTransport(handler), sleep=sleeps.append, rng=random.Random(0))
    return client, sleeps


def test_config_reads_key_and_hides_it() -> None:
    cfg = FalConfig.from_env({"FAL_KEY_ID": "a", "FAL_KEY_SECRET": "b"})
    assert cfg.key.get_secret_value() == "a:b"
    assert "a:b" not in repr(cfg) and "a:b" not in str(cfg.model_dump())
    with pytest.raises(AuthError, match="FAL_KEY is not set"):
        FalConfig.from_env({})
    # A key passed as an option wins over the environment (it raised a TypeError when FAL_KEY was set).
    for environ in ({}, {"FAL_KEY": "env-id:env-secret"}):
        assert FalConfig.from_env(environ, key="opt-id:opt-secret").key.get_secret_value() == "opt-id:opt-secret"


def test_parse_status_types() -> None:
    assert parse_status({"status": "IN_QUEUE", "queue_position": 3}) == Queued(3)
    assert parse_status({"status": "IN_PROGRESS", "logs": [{"message": "frame 1"}]}) == InProgress(("frame 1",))
    assert parse_status({"status": "IN_PROGRESS", "logs": None}) == InProgress(())
    done = parse_status({"status": "COMPLETED", "logs": None, "metrics": {"inference_time": 1.5}})
    assert done == Completed((), 1.5, None, None)
    assert parse_status({"status": "COMPLETED", "error": "boom", "error_type": "X"}).error == "boom"
    with pytest.raises(UnexpectedResponse, match="unknown fal status 'WEIRD'"):
        parse_status({"status": "WEIRD"})
    with pytest.raises(UnexpectedResponse):
        parse_status(["nope"])


def test_retry_rules_are_pure() -> None:
    rng = random.Random(1)
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert retry_after_seconds("soon") is None
    delays = [backoff_delay(a, retry_after=None, cap_s=10, rng=rng) for a in range(8)]
    assert all(0 < d <= 10 for d in delays) and delays[5] > delays[0]
    assert backoff_delay(0, retry_after=4.0, cap_s=2, rng=rng) == 4.0  # Retry-After wins over the cap
    assert backoff_delay(0, retry_after=300.0, cap_s=2, rng=rng) == 20.0  # ... up to 20 s a wait
    assert submit_was_rejected(None, None, httpx.ConnectError("refused"))
    assert not submit_was_rejected(None, None, httpx.ReadTimeout("slow"))
    assert submit_was_rejected(429, httpx.Headers(), None)
    assert submit_was_rejected(503, httpx.Headers(), None, NGINX_PAGE % 503)
    assert not submit_was_rejected(503, httpx.Headers(), None, '{"detail": "busy"}')  # not the proxy's page
    assert not submit_was_rejected(503, httpx.Headers({"x-fal-request-id": "r"}), None, NGINX_PAGE % 503)
    # A gateway that answers 502/504 had forwarded the submit: fal may have queued it.
    assert not submit_was_rejected(502, httpx.Headers(), None, NGINX_PAGE % 502)
    assert not submit_was_rejected(504, httpx.Headers(), None, NGINX_PAGE % 504)
    assert not submit_was_rejected(500, httpx.Headers(), None)


def test_submit_and_key_only_on_fal_hosts() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "queue.test" and request.method == "POST":
            return httpx.Response(200, json=SUBMIT_OK)
        return httpx.Response(200, content=b"video bytes")

    client, _ = make_client(handler)
    handle = client.submit("fal-ai/sam-3-1/video-rle", {"video_url": "u"})
    assert handle == RequestHandle("fal-ai/sam-3-1/video-rle", "r1", SUBMIT_OK["status_url"], SUBMIT_OK["response_url"], SUBMIT_OK["cancel_url"])
    assert seen[0].url == "https://queue.test/fal-ai/sam-3-1/video-rle"
    assert seen[0].headers["authorization"] == f"Key {KEY}"
    assert client.download("https://cdn.test/files/x.mp4") == b"video bytes"
    assert "authorization" not in seen[1].headers


def test_handle_rebuilt_from_request_id_matches_fal_urls() -> None:
    handle = RequestHandle.from_request_id("https://queue.test", "fal-ai/sam-3-1/video-rle", "r1")
    assert (handle.status_url, handle.response_url, handle.cancel_url) == (
        SUBMIT_OK["status_url"], SUBMIT_OK["response_url"], SUBMIT_OK["cancel_url"])


def test_submit_resent_only_when_fal_provably_did_not_take_it() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ConnectError("refused")
        if calls["n"] == 2:
            return httpx.Response(429, headers={"retry-after": "2"}, json={"detail": "slow down"})
        return httpx.Response(200, json=SUBMIT_OK)

    client, sleeps = make_client(handler)
    assert client.submit("fal-ai/sam-3-1/video-rle", {}).request_id == "r1"
    assert calls["n"] == 3 and sleeps[1] == 2.0


@pytest.mark.parametrize(
    "failure",
    [
        lambda: (_ for _ in ()).throw(httpx.ReadTimeout("no answer")),
        lambda: httpx.Response(500, json={"detail": "boom"}),
        lambda: httpx.Response(504, headers={"x-fal-request-id": "r9"}, json={"detail": "gateway"}),
        lambda: httpx.Response(504, text=NGINX_PAGE % 504),  # the proxy's own page: forwarded, then timed out
        lambda: httpx.Response(502, text=NGINX_PAGE % 502),
    ],
)
def test_ambiguous_submit_failures_are_never_resent(failure) -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return failure()

    client, _ = make_client(handler)
    with pytest.raises(SubmitUncertain, match="not resent"):
        client.submit("fal-ai/sam-3-1/video-rle", {})
    assert calls["n"] == 1


@pytest.mark.parametrize(
    ("status", "body", "error", "text"),
    [
        (401, {"detail": "bad key"}, AuthError, "check FAL_KEY"),
        (403, {"detail": "locked"}, QuotaError, "locked or out of balance"),
        (422, {"detail": [{"loc": ["body", "point_prompts", 0, "label"], "msg": "must be 0 or 1", "type": "x"}]},
         InvalidRequest, "point_prompts[0].label: must be 0 or 1 (fal)"),
        (404, {"detail": "Application not found"}, EndpointNotFound, "no endpoint 'fal-ai/sam-3-1/video-rle'"),
    ],
)
def test_submit_errors_are_typed(status: int, body: dict, error: type, text: str) -> None:
    client, _ = make_client(lambda r: httpx.Response(status, json=body))
    with pytest.raises(error) as info:
        client.submit("fal-ai/sam-3-1/video-rle", {})
    assert text in str(info.value)
    assert KEY not in str(info.value)


def test_idempotent_calls_retry_then_succeed_and_map_expiry() -> None:
    handle = RequestHandle.from_request_id("https://queue.test", "fal-ai/sam-3-1/video-rle", "r1")
    answers = iter([
        httpx.Response(503, json={"detail": "busy"}),
        httpx.Response(429, headers={"retry-after": "1"}),
        httpx.Response(202, json={"status": "IN_PROGRESS", "logs": None}),
    ])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status"):
            assert request.url.params["logs"] == "true"
            return next(answers)
        return httpx.Response(410, json={"detail": "gone"})

    client, sleeps = make_client(handler)
    assert client.status(handle) == InProgress(())
    assert len(sleeps) == 2 and sleeps[1] == 1.0
    with pytest.raises(ResultExpired) as info:
        client.result(handle)
    assert info.value.request_id == "r1"


def test_unreachable_host_fails_fast_with_clear_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Name or service not known")

    client, sleeps = make_client(handler)
    handle = RequestHandle.from_request_id("https://queue.test", "a/b", "r1")
    with pytest.raises(BackendUnavailable, match="cannot reach https://queue.test"):
        client.status(handle)
    assert len(sleeps) == CONFIG.max_retries
    assert sum(sleeps) < 20  # fails within seconds, not minutes


@pytest.mark.parametrize(("status", "body", "outcome"), [
    (202, {"status": "CANCELLATION_REQUESTED"}, "stopping"),
    (200, {"status": "OK"}, "stopping"),
    (200, {"success": True}, "stopping"),  # fal's generated client types
    (400, {"status": "ALREADY_COMPLETED"}, "already_completed"),
    (200, {"status": "ALREADY_COMPLETED"}, "already_completed"),
    (404, {"status": "NOT_FOUND"}, "not_found"),
])
def test_cancel_answers(status: int, body: dict, outcome: str) -> None:
    from sam_backend.backends.fal.client import CancelOutcome

    handle = RequestHandle.from_request_id("https://queue.test", "a/b", "r1")
    client, _ = make_client(lambda r: httpx.Response(status, json=body))
    assert client.cancel(handle) is CancelOutcome(outcome)


def test_app_not_found_after_submit_is_not_an_expired_result() -> None:
    handle = RequestHandle.from_request_id("https://queue.test", "fal-ai/sam-3-1/video-rle-objects", "r1")
    client, _ = make_client(lambda r: httpx.Response(404, json={"detail": "Application 'fal-ai/sam-3-1/video-rle-objects' not found"}))
    with pytest.raises(EndpointNotFound, match="result of request r1"):
        client.result(handle)
    with pytest.raises(EndpointNotFound, match="status of request r1"):
        client.status(handle)
    client, _ = make_client(lambda r: httpx.Response(404, json={"detail": "Request not found"}))
    with pytest.raises(ResultExpired):
        client.result(handle)


def test_gone_and_cancelled_requests_are_typed() -> None:
    from sam_backend.backends.fal.client import RemoteCancelled, RequestGone

    handle = RequestHandle.from_request_id("https://queue.test", "fal-ai/sam-3-1/video-rle", "r1")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status"):
            return httpx.Response(404, json={"detail": "Request not found"})
        return httpx.Response(499, headers={"X-Fal-Error-Type": "request_cancelled"},
                              json={"detail": "Request was cancelled", "error_type": "request_cancelled"})

    client, sleeps = make_client(handler)
    with pytest.raises(RequestGone, match="no longer knows request r1") as gone:
        client.status(handle)
    assert isinstance(gone.value, ResultExpired) and gone.value.request_id == "r1"
    with pytest.raises(RemoteCancelled, match="cancelled the request") as cancelled:
        client.result(handle)
    assert cancelled.value.request_id == "r1" and sleeps == []  # neither is retried


def test_alive_checks_a_public_file_without_the_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200 if request.url.path.endswith("/here.mp4") else 404)

    client, _ = make_client(handler)
    assert client.alive("https://cdn.test/files/here.mp4") is True
    assert client.alive("https://cdn.test/files/gone.mp4") is False
    assert all(r.method == "HEAD" and "authorization" not in r.headers for r in seen)


# --------------------------------------------------------------------------- key, options, redirects


def test_a_key_with_a_line_break_is_refused_without_showing_it() -> None:
    secret = "kid123:sec456\nrest789"
    for build in (lambda: FalConfig.from_env({"FAL_KEY": secret}), lambda: FalConfig(key=secret)):
        with pytest.raises(AuthError) as info:
            build()
        assert "line break at position 13" in str(info.value)
        assert all(part not in str(info.value) for part in ("kid123", "sec456", "rest789"))


def test_unknown_backend_options_are_refused_with_the_valid_ones() -> None:
    from sam_backend.backends.base import get_backend

    with pytest.raises(InvalidRequest, match=r"unknown fal backend option\(s\) 'enpoint'; valid options: .*endpoint.*"):
        get_backend("fal", environ={"FAL_KEY": "kid:secret"}, enpoint="fal-ai/sam-3-1/video-rle")
    with pytest.raises(InvalidRequest, match="'text_mod'"):
        get_backend("emulator", text_mod="union")


def test_redirects_are_followed_only_to_fal_hosts() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.path.endswith("/status") and request.url.host == "queue.test":
            return httpx.Response(307, headers={"location": "https://elsewhere.test/steal"})
        return httpx.Response(202, json={"status": "IN_PROGRESS", "logs": None})

    client, sleeps = make_client(handler)
    handle = RequestHandle.from_request_id("https://queue.test", "fal-ai/sam-3-1/video-rle", "r1")
    with pytest.raises(UnexpectedResponse, match="redirecting to https://elsewhere.test, which is not one of the configured fal hosts"):
        client.status(handle)
    assert seen == ["queue.test"] and sleeps == []  # not followed, not retried

    def moved(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "queue.test":
            return httpx.Response(302, headers={"location": "https://rest.test/moved/status"})
        return httpx.Response(202, json={"status": "IN_QUEUE", "queue_position": 3})

    seen.clear()
    client, _ = make_client(moved)
    assert client.status(handle) == Queued(3) and seen == ["queue.test", "rest.test"]


def test_a_server_echoing_the_key_never_gets_it_into_a_message() -> None:
    key = CONFIG.key.get_secret_value()
    client, _ = make_client(lambda r: httpx.Response(418, json={"detail": f"bad header {r.headers['authorization']}"}))
    handle = RequestHandle.from_request_id("https://queue.test", "fal-ai/sam-3-1/video-rle", "r1")
    with pytest.raises(SamError) as info:
        client.result(handle)
    assert "bad header Key ***" in str(info.value)
    assert key not in str(info.value) and key.split(":")[1] not in str(info.value)
