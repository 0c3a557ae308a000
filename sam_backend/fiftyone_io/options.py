"""One run's settings and what it reports: the single source of defaults for the SDK, the
operator form, its ``execute`` and ``__call__``."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..backends.base import RunRecord
from ..errors import InvalidRequest
from ..types import (
    DEFAULT_DETECTION_THRESHOLD,
    DEFAULT_MAX_NUM_OBJECTS,
    BoxPrompt,
    DetectionThreshold,
    FrameRange,
    MaxNumObjects,
    PointPrompt,
    Progress,
    SegmentRequest,
    describe_validation_error,
)
from .plan import Refine

# Samples in flight at once. Remote backends spend most of a sample waiting on the model
# (fal runs requests in parallel), so 8 overlaps the waits; it also bounds memory (one
# sample's result each), open requests, and how many a cancel has to stop.
DEFAULT_CONCURRENCY = 8


class SegmentOptions(BaseModel):
    """One run's settings: the single source of defaults for the SDK, the operator form,
    its ``execute`` and ``__call__``."""

    model_config = ConfigDict(extra="forbid")

    label_field: str = "sam"
    # Replace labels in label_field that this plugin did not write (e.g. ground truth).
    overwrite: bool = False
    backend: str = "fal"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    prompt: str = ""
    point_prompts: list[PointPrompt] = Field(default_factory=list)
    box_prompts: list[BoxPrompt] = Field(default_factory=list)
    detection_threshold: DetectionThreshold = DEFAULT_DETECTION_THRESHOLD
    max_num_objects: MaxNumObjects = DEFAULT_MAX_NUM_OBJECTS
    skip_failures: bool = True
    # Only these frames (0-based, the video's own indices) are sent and labelled; remote
    # backends cut the video locally first, so only these frames are billed.
    frames: FrameRange | None = None
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=64)
    # A sample field holding a public URL of the video: used instead of uploading the file.
    url_field: str | None = None
    # Visual prompts from labels, per video: frame fields (Detections -> boxes, Keypoints
    # and Polylines -> clicks) and labels selected in the App (ctx.selected_labels).
    prompt_fields: list[str] = Field(default_factory=list)
    selected_labels: list[dict[str, Any]] = Field(default_factory=list)
    # Refine: re-run track `refine_track` from FiftyOne frame number `refine_frame` on
    # (or back to the start, or both ways), replacing only that track's detections.
    refine_track: int | None = Field(default=None, ge=0)
    refine_frame: int | None = Field(default=None, ge=1)
    refine_direction: Literal["forward", "backward", "both"] = "forward"
    # Clean-ups: drop masks smaller than this many pixels, and tracks seen on fewer frames.
    min_mask_area: int = Field(default=0, ge=0)
    min_track_frames: int = Field(default=1, ge=1)
    # Store masks as PNG files under this folder (mask_path) instead of in the database.
    mask_dir: str | None = None
    # Names one run across processes (sharded delegated runs): samples this key already
    # wrote are skipped, so a re-queued shard resumes instead of starting over.
    run_key: str | None = None
    # Keep the rendered overlay video / box-overlay zip URLs on each sample (<field>_outputs).
    render_video: bool = False
    # Refuse the run, before anything is sent, when its fal estimate is above this (USD).
    max_usd: float | None = Field(default=None, ge=0)
    # Check everything and estimate the cost, then stop: nothing is sent or written.
    dry_run: bool = False

    @property
    def per_sample_prompts(self) -> bool:
        return bool(self.prompt_fields or self.selected_labels or self.refine_track is not None)

    def refine(self) -> Refine | None:
        if self.refine_track is None:
            return None
        if self.refine_frame is None:
            raise InvalidRequest("refine_track needs refine_frame (the frame number where the track was fixed)")
        if self.min_track_frames > 1:  # it would count only the re-run frames and could drop the whole track
            raise InvalidRequest("min_track_frames applies to whole runs, not to a refine, which replaces part of one "
                                 "track: leave it at 1")
        return Refine(self.refine_track, self.refine_frame, self.refine_direction)

    def request_fields(self) -> dict[str, Any]:
        """The run's own prompts and settings, as SegmentRequest fields."""
        return {
            "prompt": self.prompt,
            "point_prompts": list(self.point_prompts),
            "box_prompts": list(self.box_prompts),
            "detection_threshold": self.detection_threshold,
            "max_num_objects": self.max_num_objects,
        }

    @classmethod
    def build(cls, options: SegmentOptions | None = None, **fields: Any) -> SegmentOptions:
        """Options from defaults, an existing object and keyword overrides, all validated;
        problems raise one :class:`InvalidRequest` naming each field and bad value."""
        data = {**(options.model_dump() if options else {}), **fields}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidRequest(describe_validation_error(exc)) from None

    def request(self) -> SegmentRequest:
        return SegmentRequest.build(**self.request_fields())


@dataclasses.dataclass(frozen=True)
class SampleProgress:
    """Progress of a run: which sample, what its backend last said, and how many samples
    are finished so far (``done`` + ``failed`` of ``sample_count``). Called from worker
    threads, one call at a time."""

    sample_index: int
    sample_count: int
    sample_id: str
    backend: Progress
    done: int = 0
    failed: int = 0


@dataclasses.dataclass
class SegmentReport:
    """What a run did. ``failed`` maps sample id -> the error a user can act on."""

    label_field: str
    samples: int = 0
    done: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    frames: int = 0
    detections: int = 0
    tracks: dict[str, int] = dataclasses.field(default_factory=dict)  # sample id -> tracks
    estimated_usd: float | None = None
    planned_frames: int = 0  # frames the backend is sent (or, in a dry run, would be)
    stored_usd: float = 0.0  # of estimated_usd: results the journal holds, taken with no new charge
    dry_run: bool = False  # nothing was sent or written: see estimated_usd and planned_frames
    records: dict[str, RunRecord] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    run_id: str | None = None  # the run's id in the backend's journal (for resume/status)
    outputs: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # rendered media URLs
    skipped: list[str] = dataclasses.field(default_factory=list)  # already written under run_key

    @property
    def billed_units(self) -> float | None:
        """Units fal billed for requests this run sent (failed videos' included); results
        taken from the journal, paid for by an earlier run, are in :attr:`reused_units`."""
        units = [r.billable_units - (r.reused_units or 0.0) for r in self.records.values() if r.billable_units is not None]
        return sum(units) if units else None

    @property
    def sent_request_ids(self) -> list[str]:
        """Remote requests this run submitted (failed videos' included), not those taken
        from the journal: what it may have been billed for."""
        return [q["request_id"] for r in self.records.values() for q in r.requests
                if q.get("request_id") and not q.get("reused")]

    @property
    def reused_units(self) -> float | None:
        """Units of the results this run took from the journal (no new charge)."""
        units = [r.reused_units for r in self.records.values() if r.reused_units is not None]
        return sum(units) if units else None
