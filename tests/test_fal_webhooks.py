"""Webhook deliveries: the verifier against locally generated Ed25519 keys (signature over
request id, user id, timestamp and body hash; timestamp window; dedupe), and end to end:
a run with ``webhook_url`` -> the emulator delivers signed copies to a loopback receiver
that verifies them with the keys the emulator publishes as a JWKS."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sam_backend.backends.base import VideoSource
from sam_backend.backends.fal import FalBackend, FalConfig
from sam_backend.backends.fal.journal import Journal
from sam_backend.backends.fal.webhooks import InvalidWebhook, WebhookVerifier, message_to_sign, public_keys_from_jwks
from sam_backend.emulator import EmulatorConfig, EmulatorServer
from sam_backend.types import SegmentRequest
from sam_backend.video import probe

NOW = 1_800_000_000


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signed(key: Ed25519PrivateKey, body: bytes, *, request_id: str = "req-1", user: str = "user-1",
           timestamp: int = NOW) -> dict[str, str]:
    signature = key.sign(message_to_sign(request_id, user, str(timestamp), body)).hex()
    return {"X-Fal-Webhook-Request-Id": request_id, "X-Fal-Webhook-User-Id": user,
            "X-Fal-Webhook-Timestamp": str(timestamp), "X-Fal-Webhook-Signature": signature}


BODY = json.dumps({"request_id": "req-1", "gateway_request_id": "req-1", "status": "OK", "payload": {"frames": []}}).encode()


def test_valid_delivery_then_duplicate() -> None:
    key = Ed25519PrivateKey.generate()
    verifier = WebhookVerifier([raw_public(key)], now=lambda: NOW + 10)
    first = verifier.verify(signed(key, BODY), BODY)
    assert (first.request_id, first.ok, first.payload, first.duplicate) == ("req-1", True, {"frames": []}, False)
    assert verifier.verify(signed(key, BODY, timestamp=NOW + 5), BODY).duplicate is True  # fal retried it


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda h, b: (h, b.replace(b"OK", b"KO")), "does not match any trusted key"),
        (lambda h, b: ({**h, "X-Fal-Webhook-User-Id": "user-2"}, b), "does not match any trusted key"),
        (lambda h, b: ({k: v for k, v in h.items() if "Signature" not in k}, b), "lacks header"),
        (lambda h, b: ({**h, "X-Fal-Webhook-Signature": "zz"}, b), "not hex"),
        (lambda h, b: ({**h, "X-Fal-Webhook-Timestamp": str(NOW - 301)}, b), "away from now"),
    ],
)
def test_tampered_or_stale_deliveries_are_refused(tamper, message: str) -> None:
    key = Ed25519PrivateKey.generate()
    verifier = WebhookVerifier([raw_public(key)], now=lambda: NOW)
    headers, body = tamper(signed(key, BODY), BODY)
    with pytest.raises(InvalidWebhook, match=message):
        verifier.verify(headers, body)


def test_timestamps_from_the_future_are_refused_like_stale_ones() -> None:
    """A delivery stamped 301 s ahead is as untrusted as one 301 s old (a verifier that
    only checks age would accept a replay window that never closes); 299 s either way,
    and exactly now, are accepted. The clock is not NOW itself, so "ahead" is real."""
    key = Ed25519PrivateKey.generate()
    clock = NOW + 1234
    verifier = WebhookVerifier([raw_public(key)], now=lambda: clock, seen=lambda request_id: True)
    for skew in (301, 3600, 10**6):
        with pytest.raises(InvalidWebhook, match=f"{skew} s away from now"):
            verifier.verify(signed(key, BODY, timestamp=clock + skew), BODY)
    with pytest.raises(InvalidWebhook, match="301 s away from now"):
        verifier.verify(signed(key, BODY, timestamp=clock - 301), BODY)
    for skew in (299, -299, 0):
        assert verifier.verify(signed(key, BODY, timestamp=clock + skew), BODY).timestamp == clock + skew


def test_wrong_key_user_and_body_request_id() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with pytest.raises(InvalidWebhook, match="does not match"):
        WebhookVerifier([raw_public(other)], now=lambda: NOW).verify(signed(key, BODY), BODY)
    with pytest.raises(InvalidWebhook, match="not 'me'"):
        WebhookVerifier([raw_public(key)], now=lambda: NOW, expected_user_id="me").verify(signed(key, BODY), BODY)
    body = BODY.replace(b'"request_id": "req-1"', b'"request_id": "req-2"')
    with pytest.raises(InvalidWebhook, match="differs from the signed header"):
        WebhookVerifier([raw_public(key)], now=lambda: NOW).verify(signed(key, body), body)


def test_rotated_keys_are_refetched_once() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    served = [[raw_public(old)], [raw_public(old), raw_public(new)]]
    fetches: list[int] = []

    def fetch() -> list[bytes]:
        fetches.append(1)
        return served[min(len(fetches) - 1, 1)]

    verifier = WebhookVerifier(fetch_keys=fetch, now=lambda: NOW)
    verifier.verify(signed(old, BODY), BODY)
    verifier.verify(signed(new, BODY, request_id="req-1"), BODY)  # unknown key -> one refetch
    assert len(fetches) == 2
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw_public(new)).rstrip(b"=").decode()}
    assert public_keys_from_jwks({"keys": [jwk, {"kty": "RSA", "n": "x"}]}) == [raw_public(new)]


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append(({k: v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


def test_run_with_webhook_gets_signed_deliveries_verified_once(receiver, small_video, tmp_path: Path) -> None:
    url, got = receiver
    path, _ = small_video
    with EmulatorServer(EmulatorConfig(webhook_copies=2)) as emu, Journal(tmp_path / "j.sqlite3") as journal:
        config = FalConfig(key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url, cdn_url=emu.cdn_url,
                           webhook_url=url, poll_initial_s=0.02)
        with FalBackend(config, journal=journal) as backend:
            run = backend.segment(VideoSource(info=probe(path), path=path), SegmentRequest.build(prompt="red ball"),
                                  work_key="ds/s/sam")
            frames = list(run)
        assert len(frames) == 48
        [entry] = journal.entries()
        assert entry.webhook_url == url and emu.job(entry.request_id).webhook_url == url
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        verifier = WebhookVerifier.from_jwks_url(f"{emu.rest_url}/.well-known/jwks.json", seen=journal.first_delivery)
        deliveries = [verifier.verify(headers, body) for headers, body in got]
        headers, body = got[0]
        with pytest.raises(InvalidWebhook):
            verifier.verify(headers, body + b" ")  # one byte changed: refused (after one key refetch)
    assert [d.duplicate for d in deliveries] == [False, True]
    first = deliveries[0]
    assert first.request_id == entry.request_id and first.ok and len(first.payload["frames"]) == 48
    assert hashlib.sha256(got[0][1]).hexdigest() == hashlib.sha256(got[1][1]).hexdigest()
