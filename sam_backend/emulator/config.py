"""Emulator settings and the table of apps it serves.

Kept apart from the server so tests (and later fault-injection scenarios) can build a
config without importing any HTTP machinery, and so adding an app is one table row.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from .faults import FaultHook

# How the RLE apps lay out their masks (fal has not documented it; the client has one
# decoder per plausible shape, and the emulator can produce each of them):
# - "per_frame": {"frames": [{"frame_index", "masks": [{"rle", "metadata": {index, score, box, label}}]}]}
# - "per_object": {"objects": [{"object_id", "label", "score", "rles": [rle or null per frame]}]}
# - "mask_file": {"mask_url": "<CDN url of a JSON file holding the per_frame layout>"}
RleShape = Literal["per_frame", "per_object", "mask_file"]

DEFAULT_KEY = "emu-key-id:emu-key-secret"


@dataclasses.dataclass(frozen=True)
class AppSpec:
    """One fal endpoint the emulator answers. ``rle`` adds per-frame COCO RLE masks to
    the output (the ``*-rle`` variants); the documented endpoint returns files only."""

    app_id: str
    rle: bool


KNOWN_APPS: dict[str, AppSpec] = {
    spec.app_id: spec
    for spec in (
        AppSpec("fal-ai/sam-3-1/video", rle=False),
        AppSpec("fal-ai/sam-3-1/video-rle", rle=True),
        AppSpec("fal-ai/sam-3/video-rle", rle=True),
    )
}


@dataclasses.dataclass(frozen=True)
class EmulatorConfig:
    """Knobs of one emulator instance. Defaults give a fast, well-behaved fal.

    - ``key``: the only FAL key accepted (``Authorization: Key <key>``).
    - ``queue_steps``: status polls a job answers IN_QUEUE (positions ``queue_steps-1``
      down to 0) before it is handed to a worker; 0 hands it over at submit. Jobs are
      driven by polls (not by time) so tests see the same sequence on every run.
    - ``service_time_s``: minimum wall time a job stays IN_PROGRESS.
    - ``workers``: jobs processed at once; further released jobs wait IN_QUEUE.
    - ``score``: the confidence every emitted object gets (text detections below
      ``detection_threshold`` are dropped).
    - ``token_ttl_s``: lifetime of CDN upload tokens.
    - ``result_ttl_s``: after this long past completion a request is forgotten (status
      and result answer 404, like an expired fal result); None keeps results forever.
    - ``validate_on_submit``: True answers input validation errors (422) on submit;
      False accepts any JSON object and fails the job instead (422 on the result route),
      for clients that must cope with fal validating on the runner.
    - ``faults``: optional hook consulted on every HTTP call (see :mod:`.faults`).
    - ``log_window``: how many recent log lines a status call with ``logs=true`` returns.
    - ``max_body_bytes``: request bodies above this are refused with 413.
    - ``rle_shape``: how RLE apps lay out their masks (see :data:`RleShape`).
    - ``webhook_copies``: how many times each webhook is delivered (fal retries
      deliveries, so receivers must deduplicate; >1 tests that they do).
    - ``unavailable_apps``: app ids answered 404 "not found" although known (e.g. to
      test a client's fallback when an RLE variant is not deployed).
    - ``memoize``: compute the output of identical requests (same app, input and video
      bytes) once. For benchmarks of the client: the emulated model time is then
      ``service_time_s``, as on fal's GPUs, not the toy model's CPU time on this machine.
    """

    key: str = DEFAULT_KEY
    queue_steps: int = 1
    service_time_s: float = 0.0
    workers: int = 4
    score: float = 0.95
    token_ttl_s: float = 3600.0
    result_ttl_s: float | None = None
    validate_on_submit: bool = True
    faults: FaultHook | None = None
    log_window: int = 20
    max_body_bytes: int = 512 * 1024 * 1024
    rle_shape: RleShape = "per_frame"
    webhook_copies: int = 1
    unavailable_apps: frozenset[str] = frozenset()
    memoize: bool = False

    def __post_init__(self) -> None:
        if self.queue_steps < 0:
            raise ValueError(f"queue_steps must be >= 0, got {self.queue_steps}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.service_time_s < 0:
            raise ValueError(f"service_time_s must be >= 0, got {self.service_time_s}")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score must be in [0, 1], got {self.score}")
        if self.rle_shape not in ("per_frame", "per_object", "mask_file"):
            raise ValueError(f"rle_shape must be per_frame, per_object or mask_file, got {self.rle_shape!r}")
        if ":" not in self.key:
            raise ValueError("key must look like '<key_id>:<key_secret>'")
