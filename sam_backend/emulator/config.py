"""Emulator settings and the table of apps it serves.

Kept apart from the server so tests (and later fault-injection scenarios) can build a
config without importing any HTTP machinery, and so adding an app is one table row.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import BaseModel

from .faults import FaultHook
from .schema import Sam3VideoRleInput, Sam3VideoRleObjectsInput, Sam31VideoInput, Sam31VideoRleInput

# How fal's RLE strings lay out a mask ("start length" pairs over the flattened frame):
# row- or column-major, 1- or 0-based starts. Row-major is what a real payload showed; the
# start base is unconfirmed (../shared/reference/fal-sam3-endpoints.md), so the
# emulator can serve each and the client's fal-check must find which one it was.
RleLayout = Literal["row1", "row0", "column1", "column0"]

DEFAULT_KEY = "emu-key-id:emu-key-secret"


@dataclasses.dataclass(frozen=True)
class AppSpec:
    """One fal endpoint the emulator answers, as ../shared/reference/fal-sam3-endpoints.md
    describes it: its input schema and its output shape.

    - ``video``: ``{video, boundingbox_frames_zip}`` only (S1).
    - ``union_rle``: top-level ``rle`` (one string per frame; None where nothing was
      found) with the union of every tracked object per frame, plus per-frame
      ``metadata``/``boxes`` and ``scores: None`` (S5, S6, S7); ``video`` only when
      ``apply_mask`` asks for the overlay (unconfirmed), the box zip only with ``boundingbox_zip``.
      ``return_rle_flag``: RLE only when the request sets ``return_rle`` (S3), else the
      video output; ``rle_return_mode="url"`` puts the RLE list in a JSON file on the CDN
      and its File object in ``rle`` (which field fal uses for it is unconfirmed).
    - ``objects_rle``: ``frames[{frame_index, objects[{track_id, rle}]}]``, ``width``,
      ``height``, ``num_frames`` (S6).
    """

    app_id: str
    output: Literal["video", "union_rle", "objects_rle"]
    input_model: type[BaseModel]
    return_rle_flag: bool = False


KNOWN_APPS: dict[str, AppSpec] = {
    spec.app_id: spec
    for spec in (
        AppSpec("fal-ai/sam-3-1/video", "video", Sam31VideoInput),
        AppSpec("fal-ai/sam-3-1/video-rle", "union_rle", Sam31VideoRleInput),
        AppSpec("fal-ai/sam-3/video-rle", "union_rle", Sam3VideoRleInput, return_rle_flag=True),
        AppSpec("fal-ai/sam-3/video-rle-objects", "objects_rle", Sam3VideoRleObjectsInput),
    )
}
# Results this large are kept by fal only ~6 minutes, smaller ones ~1 hour (protocol note).
LARGE_RESULT_BYTES = 10 * 1024


@dataclasses.dataclass(frozen=True)
class EmulatorConfig:
    """Knobs of one emulator instance. Defaults give a fast, well-behaved fal.

    - ``key``: the only FAL key accepted (``Authorization: Key <key>``).
    - ``queue_time_s``: how long a job waits IN_QUEUE after its submit before a worker
      may take it, polled or not (fal's queue moves on with time).
    - ``queue_steps``: a test knob, not fal's behaviour: > 0 holds a job instead for that
      many status polls (positions ``queue_steps-1`` down to 0), so a test sees the same
      status sequence on every run; 0 (default) uses ``queue_time_s``.
    - ``service_time_s``: minimum wall time a job stays IN_PROGRESS.
    - ``workers``: jobs processed at once; further released jobs wait IN_QUEUE.
    - ``score``: the confidence every emitted object gets (text detections below
      ``detection_threshold`` are dropped).
    - ``token_ttl_s``: lifetime of CDN upload tokens.
    - ``result_ttl_s`` / ``large_result_ttl_s``: after this long past completion a
      request is forgotten (status and result answer 404, like an expired fal result):
      about an hour, and 6 minutes for results of 10 KB or more, as fal keeps them.
      None keeps results forever.
    - ``validate_on_submit``: False (default, as a queue delivers them) accepts any JSON
      object and fails the job with the 422 on the result route; True answers input
      validation errors (422) on submit.
    - ``faults``: optional hook consulted on every HTTP call (see :mod:`.faults`).
    - ``log_window``: how many recent log lines a status call with ``logs=true`` returns.
    - ``max_body_bytes``: request bodies above this are refused with 413.
    - ``rle_layout``: how RLE strings lay out masks (see :data:`RleLayout`).
    - ``webhook_copies``: how many times each webhook is delivered (fal retries
      deliveries, so receivers must deduplicate; >1 tests that they do).
    - ``unavailable_apps``: app ids answered 404 "Application ... not found" although
      known (e.g. to test a client's fallback when an RLE variant is not deployed). Ids
      not in the table (e.g. a SAM 3.1 objects endpoint) are always answered so.
    - ``missing_app_at``: where a missing app says so: ``"submit"`` (404 at once) or
      ``"result"`` (accepted, then COMPLETED with the 404 on the result route): fal's
      choice is unconfirmed, clients must cope with both.
    - ``cancel_ok_status``: 202 (CANCELLATION_REQUESTED) or 200 (``{"status": "OK"}``):
      fal documents both.
    - ``memoize``: compute the output of identical requests (same app, input and video
      bytes) once. For benchmarks of the client: the emulated model time is then
      ``service_time_s``, as on fal's GPUs, not the toy model's CPU time on this machine.
    """

    key: str = DEFAULT_KEY
    queue_steps: int = 0
    queue_time_s: float = 0.05
    service_time_s: float = 0.0
    workers: int = 4
    score: float = 0.95
    token_ttl_s: float = 3600.0
    result_ttl_s: float | None = 3600.0
    large_result_ttl_s: float | None = 360.0
    validate_on_submit: bool = False
    faults: FaultHook | None = None
    log_window: int = 20
    max_body_bytes: int = 512 * 1024 * 1024
    rle_layout: RleLayout = "row1"
    webhook_copies: int = 1
    unavailable_apps: frozenset[str] = frozenset()
    missing_app_at: Literal["submit", "result"] = "submit"
    cancel_ok_status: Literal[200, 202] = 202
    memoize: bool = False

    def __post_init__(self) -> None:
        if self.queue_time_s < 0:
            raise ValueError(f"queue_time_s must be >= 0, got {self.queue_time_s}")
        if self.queue_steps < 0:
            raise ValueError(f"queue_steps must be >= 0, got {self.queue_steps}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.service_time_s < 0:
            raise ValueError(f"service_time_s must be >= 0, got {self.service_time_s}")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score must be in [0, 1], got {self.score}")
        if self.rle_layout not in ("row1", "row0", "column1", "column0"):
            raise ValueError(f"rle_layout must be row1, row0, column1 or column0, got {self.rle_layout!r}")
        if ":" not in self.key:
            raise ValueError("key must look like '<key_id>:<key_secret>'")
