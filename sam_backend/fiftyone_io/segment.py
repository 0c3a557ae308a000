"""The SDK entry point: segment every video sample of a collection into a frame field.

Everything that can be checked is checked before the first byte is uploaded or the first
label written: the output field, the prompts (shape, and against every video's size and
frame count), that every video decodes, and the backend's credentials.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import fiftyone as fo
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import video as video_ops
from ..backends.base import Backend, CancelToken, RunRecord, VideoSource, get_backend
from ..errors import AuthError, Cancelled, InvalidRequest, QuotaError, SamError, VideoError
from ..types import (
    DEFAULT_DETECTION_THRESHOLD,
    DEFAULT_MAX_NUM_OBJECTS,
    BoxPrompt,
    DetectionThreshold,
    MaxNumObjects,
    PointPrompt,
    Progress,
    SegmentRequest,
    VideoInfo,
    describe_validation_error,
)
from .writer import FrameLabelWriter, check_label_field

logger = logging.getLogger(__name__)

# Errors that will fail every remaining sample the same way: stop instead of skipping.
_FATAL = (AuthError, QuotaError, Cancelled)


class SegmentOptions(BaseModel):
    """One run's settings: the single source of defaults for the SDK, the operator form,
    its ``execute`` and ``__call__``."""

    model_config = ConfigDict(extra="forbid")

    label_field: str = "sam"
    backend: str = "fal"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    prompt: str = ""
    point_prompts: list[PointPrompt] = Field(default_factory=list)
    box_prompts: list[BoxPrompt] = Field(default_factory=list)
    detection_threshold: DetectionThreshold = DEFAULT_DETECTION_THRESHOLD
    max_num_objects: MaxNumObjects = DEFAULT_MAX_NUM_OBJECTS
    skip_failures: bool = True

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
        return SegmentRequest.build(
            prompt=self.prompt,
            point_prompts=self.point_prompts,
            box_prompts=self.box_prompts,
            detection_threshold=self.detection_threshold,
            max_num_objects=self.max_num_objects,
        )


@dataclasses.dataclass(frozen=True)
class SampleProgress:
    """Progress of a run: which sample, and what its backend last said."""

    sample_index: int
    sample_count: int
    sample_id: str
    backend: Progress


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
    records: dict[str, RunRecord] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def billed_units(self) -> float | None:
        units = [r.billable_units for r in self.records.values() if r.billable_units is not None]
        return sum(units) if units else None


@dataclasses.dataclass(frozen=True)
class _Job:
    sample_id: str
    path: Path
    info: VideoInfo


def segment_videos(
    samples: fo.core.collections.SampleCollection,
    options: SegmentOptions | None = None,
    *,
    backend: str | Backend | None = None,
    secrets: Mapping[str, str] | None = None,
    progress: Callable[[SampleProgress], None] | None = None,
    cancel: CancelToken | None = None,
    **option_fields: Any,
) -> SegmentReport:
    """Segment and track objects in every video of ``samples`` into ``frames.<label_field>``.

    Pass settings as keyword arguments (``prompt="person, dog"``, ``label_field="sam"``,
    ``backend="fal"``, ...) or as a :class:`SegmentOptions`. ``backend`` is a backend name
    (``"fal"``, ``"emulator"``, ``"local"``) or a ready :class:`Backend` instance, which is
    used as is and not closed here. ``secrets`` (e.g. an
    operator's ``ctx.secrets``) is where credentials such as FAL_KEY are read from instead
    of the process environment. Each sample is written all or
    nothing; with ``skip_failures`` a failed sample is reported and the run goes on.
    """
    if isinstance(backend, str):
        option_fields["backend"], backend = backend, None
    opts = SegmentOptions.build(options, **option_fields)
    start = time.monotonic()
    if samples.media_type != "video":
        raise ValueError(f"segment_videos needs video samples; this collection has media_type={samples.media_type!r}")
    dataset = samples._dataset
    check_label_field(dataset, opts.label_field)
    request = opts.request()
    jobs = _prepare(samples, request)
    report = SegmentReport(label_field=opts.label_field, samples=len(jobs), warnings=_frame_count_warnings(samples, jobs))
    for warning in report.warnings:
        logger.warning(warning)
    if backend is None:
        owned = get_backend(opts.backend, environ=_environ(secrets), **opts.backend_options)
    else:
        owned = None
    active = backend or owned
    assert active is not None
    report.estimated_usd = _total_cost(active, jobs, request)
    cancel = cancel or CancelToken()
    writer = FrameLabelWriter(dataset, opts.label_field)
    try:
        for i, job in enumerate(jobs):
            cancel.raise_if_cancelled()

            def on_progress(p: Progress, i: int = i, job: _Job = job) -> None:
                if progress is not None:
                    progress(SampleProgress(i, len(jobs), job.sample_id, p))

            try:
                run = active.segment(VideoSource(info=job.info, path=job.path), request, on_progress=on_progress, cancel=cancel,
                                     work_key=f"{dataset.name}/{job.sample_id}/{opts.label_field}")
                stats = writer.write_sample(job.sample_id, run, job.info)
            except _FATAL:
                raise
            except SamError as exc:
                if not opts.skip_failures:
                    raise
                report.failed[job.sample_id] = f"{job.path.name}: {exc}"
                continue
            report.done.append(job.sample_id)
            report.records[job.sample_id] = run.record
            report.frames += stats.frames
            report.detections += stats.detections
            report.tracks[job.sample_id] = len(stats.tracks)
    finally:
        if owned is not None:
            owned.close()
        report.seconds = time.monotonic() - start
    if report.done:
        _describe_field(dataset, opts, request, report)
    return report


def _environ(secrets: Mapping[str, str] | None) -> Mapping[str, str] | None:
    if not secrets:
        return None
    return {**os.environ, **{k: v for k, v in secrets.items() if v}}


def _prepare(samples: fo.core.collections.SampleCollection, request: SegmentRequest) -> list[_Job]:
    """Probe every video and check the request against each, before anything is spent."""
    jobs, problems = [], []
    ids, paths = samples.values("id"), samples.values("filepath")
    for sample_id, filepath in zip(ids, paths):
        try:
            info = video_ops.probe(filepath)
            request.check_against(info)
        except VideoError as exc:
            problems.append(f"sample {sample_id}: {exc}")
            continue
        except InvalidRequest as exc:
            problems.extend(f"sample {sample_id} ({Path(filepath).name}): {p}" for p in exc.problems)
            continue
        jobs.append(_Job(sample_id, Path(filepath), info))
    if problems:
        raise InvalidRequest(problems)
    _fill_missing_metadata(samples)
    return jobs


def _fill_missing_metadata(samples: fo.core.collections.SampleCollection) -> None:
    # The App maps frame numbers to time with metadata.frame_rate; fill it where absent
    # (never overwriting metadata the user already has).
    missing = samples.exists("metadata", False)
    if len(missing):
        missing.compute_metadata()


def _frame_count_warnings(samples: fo.core.collections.SampleCollection, jobs: Sequence[_Job]) -> list[str]:
    """Labels land on decoded frame i + 1. The App plays frame n at (n - 1) / frame_rate,
    which is only right for constant-frame-rate videos whose metadata counts frames right."""
    counts = dict(zip(samples.values("id"), samples.values("metadata.total_frame_count")))
    warnings = []
    for job in jobs:
        fiftyone_count = counts.get(job.sample_id)
        if job.info.variable_frame_rate or (fiftyone_count is not None and fiftyone_count != job.info.frame_count):
            warnings.append(
                f"{job.path.name}: variable frame rate or a frame count FiftyOne estimates differently "
                f"(decoded {job.info.frame_count}, metadata says {fiftyone_count}); labels are stored per decoded "
                "frame, but the App may show them on neighbouring frames. Re-encode to constant frame rate "
                "(fiftyone.utils.video.reencode_videos) for exact playback."
            )
    return warnings


def _total_cost(backend: Backend, jobs: Sequence[_Job], request: SegmentRequest) -> float | None:
    total = 0.0
    for job in jobs:
        usd = backend.estimate_cost(job.info, request).usd
        if usd is None:
            return None
        total += usd
    return total


def _describe_field(dataset: fo.Dataset, opts: SegmentOptions, request: SegmentRequest, report: SegmentReport) -> None:
    """Record on the output field where its labels came from (backend, model, endpoint)."""
    field = dataset.get_field(f"frames.{opts.label_field}")
    records = list(report.records.values())
    field.description = f"SAM tracks ({records[-1].model or records[-1].backend}) for prompt {request.prompt!r}"
    field.info = {
        "sam31_video": {
            "backend": records[-1].backend,
            "model": records[-1].model,
            "endpoint": records[-1].endpoint,
            "request": request.model_dump(mode="json", exclude={"video_url"}),
            "request_ids": {sid: r.request_id for sid, r in report.records.items()},
            "warnings": sorted({w for r in records for w in r.warnings}),
        }
    }
    field.save()


__all__ = ["SegmentOptions", "SegmentReport", "SampleProgress", "segment_videos"]
