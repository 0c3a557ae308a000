"""Verifying fal's webhook deliveries, for a receiver the user runs.

When a run passes ``webhook_url``, fal POSTs ``{"request_id", "gateway_request_id",
"status": "OK" | "ERROR", "payload", "error"}`` to it once the request is done, and
retries for about two hours. Each delivery is signed with Ed25519 over

    {X-Fal-Webhook-Request-Id}\\n{X-Fal-Webhook-User-Id}\\n{X-Fal-Webhook-Timestamp}\\n{sha256 hex of the raw body}

(signature hex-encoded in ``X-Fal-Webhook-Signature``), with fal's public keys published
as a JWKS. A receiver should call :meth:`WebhookVerifier.verify` with the raw body bytes
and the headers, answer 2xx fast, and skip ``duplicate`` deliveries::

    verifier = WebhookVerifier.from_jwks_url(seen=journal.first_delivery)
    delivery = verifier.verify(request.headers, await request.body())
    if not delivery.duplicate:
        handle(delivery.payload)

``cryptography`` is imported only when a signature is checked.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ...errors import SamError

# fal's documented key set; pass another (e.g. the emulator's) to from_jwks_url.
FAL_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
# Deliveries older or newer than this are refused (replays; fal documents 5 minutes).
TIMESTAMP_TOLERANCE_S = 300
# fal suggests caching its keys for up to a day; an unknown signature refetches once.
JWKS_TTL_S = 24 * 3600

HEADERS = ("x-fal-webhook-request-id", "x-fal-webhook-user-id", "x-fal-webhook-timestamp", "x-fal-webhook-signature")


class InvalidWebhook(SamError):
    """A delivery that must not be trusted: missing headers, stale timestamp, bad signature."""


@dataclasses.dataclass(frozen=True)
class WebhookDelivery:
    """A verified delivery. ``duplicate`` is True when this request id was seen before
    (fal retries deliveries): acknowledge it, do not process it again."""

    request_id: str
    gateway_request_id: str | None
    user_id: str
    timestamp: int
    ok: bool
    payload: Any
    error: str | None
    duplicate: bool


def message_to_sign(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode()


def public_keys_from_jwks(jwks: Mapping[str, Any]) -> list[bytes]:
    """Raw 32-byte Ed25519 keys from a JWKS (``kty=OKP``, ``crv=Ed25519``, ``x`` base64url)."""
    keys = []
    for jwk in jwks.get("keys") or []:
        if isinstance(jwk, dict) and jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and jwk.get("x"):
            x = str(jwk["x"])
            keys.append(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))
    return keys


class _SeenSet:
    """In-memory dedupe (one process); use ``Journal.first_delivery`` to survive restarts."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, request_id: str) -> bool:
        with self._lock:
            if request_id in self._seen:
                return False
            self._seen.add(request_id)
            return True


class WebhookVerifier:
    """Checks signature, timestamp window and body/header agreement, and deduplicates.

    ``public_keys``: raw Ed25519 public keys (bytes) to trust; or ``fetch_keys``, called
    for the current keys (cached ``jwks_ttl_s``, refetched once when a signature matches
    none). ``seen(request_id)`` returns True the first time (default: in memory).
    """

    def __init__(self, public_keys: Iterable[bytes] | None = None, *,
                 fetch_keys: Callable[[], list[bytes]] | None = None,
                 tolerance_s: float = TIMESTAMP_TOLERANCE_S, seen: Callable[[str], bool] | None = None,
                 expected_user_id: str | None = None, now: Callable[[], float] = time.time,
                 jwks_ttl_s: float = JWKS_TTL_S) -> None:
        if public_keys is None and fetch_keys is None:
            raise ValueError("give public_keys or fetch_keys")
        self._static = list(public_keys) if public_keys is not None else None
        self._fetch = fetch_keys
        self._cached: tuple[float, list[bytes]] | None = None
        self._tolerance = tolerance_s
        self._seen = seen or _SeenSet()
        self._user = expected_user_id
        self._now = now
        self._ttl = jwks_ttl_s
        self._lock = threading.Lock()

    @classmethod
    def from_jwks_url(cls, url: str = FAL_JWKS_URL, *, timeout_s: float = 10.0, **options: Any) -> WebhookVerifier:
        """Trust the keys published at ``url`` (fetched with httpx when first needed)."""

        def fetch() -> list[bytes]:
            import httpx

            response = httpx.get(url, timeout=timeout_s)
            response.raise_for_status()
            return public_keys_from_jwks(response.json())

        return cls(fetch_keys=fetch, **options)

    def _keys(self, *, refresh: bool = False) -> list[bytes]:
        if self._static is not None:
            return self._static
        assert self._fetch is not None
        with self._lock:
            if refresh or self._cached is None or self._now() - self._cached[0] > self._ttl:
                self._cached = (self._now(), self._fetch())
            return self._cached[1]

    def verify(self, headers: Mapping[str, str], body: bytes) -> WebhookDelivery:
        """The delivery, if genuine; raises :class:`InvalidWebhook` otherwise."""
        lower = {k.lower(): v for k, v in headers.items()}
        missing = [h for h in HEADERS if not lower.get(h)]
        if missing:
            raise InvalidWebhook(f"webhook lacks header(s) {', '.join(missing)}: not a signed fal delivery")
        request_id, user_id, stamp, signature_hex = (lower[h].strip() for h in HEADERS)
        try:
            timestamp = int(stamp)
        except ValueError:
            raise InvalidWebhook(f"webhook timestamp {stamp!r} is not an integer") from None
        skew = abs(self._now() - timestamp)
        if skew > self._tolerance:
            raise InvalidWebhook(f"webhook timestamp is {skew:.0f} s away from now (allowed {self._tolerance:.0f} s): replay or clock skew")
        if self._user is not None and user_id != self._user:
            raise InvalidWebhook(f"webhook is for user {user_id!r}, not {self._user!r}")
        try:
            signature = binascii.unhexlify(signature_hex)
        except (binascii.Error, ValueError):
            raise InvalidWebhook("webhook signature is not hex") from None
        message = message_to_sign(request_id, user_id, stamp, body)
        if not _any_key_verifies(self._keys(), signature, message):
            if self._static is not None or not _any_key_verifies(self._keys(refresh=True), signature, message):
                raise InvalidWebhook(f"webhook signature for request {request_id} does not match any trusted key")
        try:
            doc = json.loads(body)
        except ValueError:
            raise InvalidWebhook("webhook body is not JSON") from None
        if not isinstance(doc, dict) or doc.get("request_id") != request_id:
            raise InvalidWebhook("webhook body's request_id differs from the signed header")
        return WebhookDelivery(
            request_id=request_id, gateway_request_id=doc.get("gateway_request_id"), user_id=user_id,
            timestamp=timestamp, ok=doc.get("status") == "OK", payload=doc.get("payload"),
            error=doc.get("error") or doc.get("payload_error"), duplicate=not self._seen(request_id),
        )


def _any_key_verifies(keys: Iterable[bytes], signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    for raw in keys:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
            return True
        except (InvalidSignature, ValueError):
            continue
    return False


__all__ = ["FAL_JWKS_URL", "InvalidWebhook", "WebhookDelivery", "WebhookVerifier", "message_to_sign", "public_keys_from_jwks"]
