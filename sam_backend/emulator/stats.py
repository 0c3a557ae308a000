"""Counters of what clients did to the emulator, for tests to assert on.

Tests read them to check client behaviour that is invisible in results: how many status
polls a job cost, whether a submit was sent twice (``submit_count_by_payload``), whether
uploads were reused. The recorder is mutated by handler threads under a lock;
``snapshot()`` hands out an independent copy.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import hashlib
import json
import threading
from typing import Any


def payload_hash(payload: Any) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of a submit body."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclasses.dataclass
class EmulatorStats:
    """A point-in-time copy of the counters.

    ``submits`` and ``submit_count_by_payload`` hold accepted submits only (a 401/404/422
    is not a submit); ``calls_by_route`` counts every HTTP call by route name, rejected
    ones included (the numbering fault hooks see).
    """

    submits: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    submit_count_by_payload: dict[str, int] = dataclasses.field(default_factory=dict)
    status_calls: int = 0
    status_calls_by_request: dict[str, int] = dataclasses.field(default_factory=dict)
    result_calls: int = 0
    cancel_calls: int = 0
    cancelled_requests: list[str] = dataclasses.field(default_factory=list)  # ids a cancel call named
    run_calls: int = 0
    token_calls: int = 0
    uploads: int = 0
    upload_bytes: int = 0
    multipart_uploads: int = 0  # completed ones
    multipart_parts: int = 0  # part PUTs, retries included
    webhook_deliveries: int = 0
    max_running: int = 0  # most jobs IN_PROGRESS at the same time
    downloads: int = 0
    auth_failures: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    jobs_cancelled: int = 0
    calls_by_route: dict[str, int] = dataclasses.field(default_factory=dict)

    def submit_count(self, payload: Any) -> int:
        """How many times this exact payload was submitted (any app)."""
        return self.submit_count_by_payload.get(payload_hash(payload), 0)


class StatsRecorder:
    """The live counters; every method is one locked update."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = EmulatorStats()
        self._route_calls: collections.Counter[str] = collections.Counter()
        self._request_calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def route_call(self, route: str, request_id: str | None = None) -> tuple[int, int | None]:
        """Count one call to ``route``; returns its number (from 1) overall and for
        ``request_id`` (None without one)."""
        with self._lock:
            self._route_calls[route] += 1
            if request_id is None:
                return self._route_calls[route], None
            self._request_calls[route, request_id] += 1
            return self._route_calls[route], self._request_calls[route, request_id]

    def add(self, field: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self._stats, field, getattr(self._stats, field) + amount)

    def submitted(self, app_id: str, payload: dict[str, Any]) -> None:
        key = payload_hash(payload)
        with self._lock:
            self._stats.submits.append((app_id, copy.deepcopy(payload)))
            self._stats.submit_count_by_payload[key] = self._stats.submit_count_by_payload.get(key, 0) + 1

    def peak(self, field: str, value: int) -> None:
        with self._lock:
            setattr(self._stats, field, max(getattr(self._stats, field), value))

    def cancel_call(self, request_id: str) -> None:
        with self._lock:
            self._stats.cancel_calls += 1
            self._stats.cancelled_requests.append(request_id)

    def status_call(self, request_id: str) -> None:
        with self._lock:
            self._stats.status_calls += 1
            by_id = self._stats.status_calls_by_request
            by_id[request_id] = by_id.get(request_id, 0) + 1

    def snapshot(self) -> EmulatorStats:
        with self._lock:
            snap = copy.deepcopy(self._stats)
            snap.calls_by_route = dict(self._route_calls)
            return snap
