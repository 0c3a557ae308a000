"""The SDK entry points: segment every video sample of a collection into a frame field,
resume a run that stopped, and show what is pending.

Everything that can be checked is checked before the first byte is uploaded or the first
label written: the output field, the prompts (shape, and against every video's size,
frame count and frame range), that every video decodes, and the backend's credentials.

Samples run concurrently (``concurrency`` at once, one thread each: a backend call that
mostly waits on the remote model, then the all-or-nothing write of that sample), all
sharing one backend and so one HTTP client. A backend with a journal (fal) also gets the
run recorded there (which samples, with which options), so :func:`resume` can finish it
after a crash or Ctrl-C without the original arguments and without paying twice, and
:func:`status` can show it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

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
    FrameRange,
    MaxNumObjects,
    PointPrompt,
    Progress,
    SegmentRequest,
    VideoInfo,
    describe_validation_error,
)
from ..postprocess import clean_frames
from .plan import Refine, SamplePlan, plan_sample
from .writer import FrameLabelWriter, WritePolicy, check_label_field

logger = logging.getLogger(__name__)

# Errors that will fail every remaining sample the same way: stop starting new samples
# (the ones in flight are already paid for and finish) instead of skipping.
_FATAL = (AuthError, QuotaError)
# Samples in flight at once. Remote backends spend most of a sample waiting on the model
# (fal runs requests in parallel), so 8 overlaps the waits; it also bounds memory (one
# sample's result each), open requests, and how many a cancel has to stop.
DEFAULT_CONCURRENCY = 8
# ffprobe processes at once while checking videos: hundreds of videos are checked in
# seconds, not minutes, without flooding a small machine.
_PROBE_WORKERS = 8
# backend_options keys never stored with a run (credentials are read again on resume).
_SECRET_OPTIONS = ("key", "api_key", "secret", "token")


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

    @property
    def per_sample_prompts(self) -> bool:
        return bool(self.prompt_fields or self.selected_labels or self.refine_track is not None)

    def refine(self) -> Refine | None:
        if self.refine_track is None:
            return None
        if self.refine_frame is None:
            raise InvalidRequest("refine_track needs refine_frame (the frame number where the track was fixed)")
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
    records: dict[str, RunRecord] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    run_id: str | None = None  # the run's id in the backend's journal (for resume/status)
    outputs: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # rendered media URLs
    skipped: list[str] = dataclasses.field(default_factory=list)  # already written under run_key

    @property
    def billed_units(self) -> float | None:
        units = [r.billable_units for r in self.records.values() if r.billable_units is not None]
        return sum(units) if units else None


@dataclasses.dataclass(frozen=True)
class _Job:
    index: int
    sample_id: str
    path: Path
    info: VideoInfo
    url: str | None = None
    plan: SamplePlan | None = None


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
    ``backend="fal"``, ``concurrency=8``, ``frames=FrameRange(start=0, stop=100)``, ...) or
    as a :class:`SegmentOptions`. ``backend`` is a backend name (``"fal"``, ``"emulator"``,
    ``"local"``) or a ready :class:`Backend` instance, which is used as is and not closed
    here. ``secrets`` (e.g. an operator's ``ctx.secrets``) is where credentials such as
    FAL_KEY are read from instead of the process environment. Each sample is written all
    or nothing; with ``skip_failures`` a failed sample is reported and the run goes on.
    Setting ``cancel`` stops every sample in flight (remote requests are cancelled) and
    raises :class:`Cancelled`; nothing partial is written.
    """
    if isinstance(backend, str):
        option_fields["backend"], backend = backend, None
    opts = SegmentOptions.build(options, **option_fields)
    return _segment(samples, opts, backend=backend, secrets=secrets, progress=progress, cancel=cancel)


def _segment(samples: fo.core.collections.SampleCollection, opts: SegmentOptions, *, backend: Backend | None,
             secrets: Mapping[str, str] | None, progress: Callable[[SampleProgress], None] | None,
             cancel: CancelToken | None, run_id: str | None = None) -> SegmentReport:
    start = time.monotonic()
    if samples.media_type != "video":
        raise ValueError(f"segment_videos needs video samples; this collection has media_type={samples.media_type!r}")
    dataset = samples._dataset
    check_label_field(dataset, opts.label_field)
    # Per-video prompts (from labels, or a refine) are checked per video in _prepare.
    request = None if opts.per_sample_prompts else opts.request()
    jobs = _prepare(samples, request, opts)
    skipped = _already_written(opts.run_key, jobs)
    jobs = [dataclasses.replace(j, index=i) for i, j in enumerate(j for j in jobs if j.sample_id not in skipped)]
    report = SegmentReport(label_field=opts.label_field, samples=len(jobs), skipped=sorted(skipped))
    backend_options = dict(opts.backend_options)
    if opts.render_video and opts.backend in ("fal", "emulator"):
        backend_options.setdefault("render_overlay", True)  # the RLE endpoints draw nothing unless asked
    owned = get_backend(opts.backend, environ=_environ(secrets), **backend_options) if backend is None else None
    active = backend or owned
    assert active is not None
    try:
        report.estimated_usd = _total_cost(active, jobs)
        journal = getattr(active, "journal", None)
        if journal is not None and hasattr(journal, "begin_run"):
            report.run_id = _record_run(journal, dataset, opts, jobs, run_id)
        runner = _Runner(dataset, opts, active, jobs, report, progress, cancel or CancelToken())
        # FiftyOne's own metadata (the App needs it) is computed while the videos are
        # being segmented rather than before the first submit.
        metadata = _Background(_fill_missing_metadata, samples)
        try:
            runner.run()
        except BaseException:
            metadata.join(reraise=False)  # the run's own error is the one to show
            raise
        metadata.join()
        report.warnings = _frame_count_warnings(samples, jobs)
        for warning in report.warnings:
            logger.warning(warning)
    finally:
        if owned is not None:
            owned.close()
        report.seconds = time.monotonic() - start
    if report.done:
        _describe_field(dataset, opts, report)
    return report


class _Runner:
    """Runs the jobs on a bounded thread pool and fills the report."""

    def __init__(self, dataset: fo.Dataset, opts: SegmentOptions, backend: Backend,
                 jobs: Sequence[_Job], report: SegmentReport, progress: Callable[[SampleProgress], None] | None,
                 cancel: CancelToken) -> None:
        self.dataset, self.opts, self.backend = dataset, opts, backend
        self.jobs, self.report, self.progress, self.cancel = jobs, report, progress, cancel
        self.writer = FrameLabelWriter(dataset, opts.label_field)
        self.journal = getattr(backend, "journal", None) if report.run_id else None
        self._lock = threading.Lock()  # report, counters, progress calls
        self._stop = threading.Event()  # a fatal error or bug: start no new sample
        self._results: dict[int, tuple[str, Any]] = {}

    def work_key(self, job: _Job) -> str:
        return f"{self.dataset.name}/{job.sample_id}/{self.opts.label_field}"

    def run(self) -> None:
        work_keys = [self.work_key(j) for j in self.jobs]
        if self.journal is not None and callable(harvest := getattr(self.backend, "harvest", None)):
            harvest(work_keys)  # results finished while nobody watched expire within minutes
        errors: list[BaseException] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.opts.concurrency, max(1, len(self.jobs))),
                                                   thread_name_prefix="sam31-sample") as pool:
            for future in [pool.submit(self._one, job) for job in self.jobs]:
                try:
                    future.result()
                except BaseException as exc:  # noqa: BLE001 - re-raised below, once every worker stopped
                    errors.append(exc)
        for job in self.jobs:  # report in sample order, whatever order they finished in
            outcome = self._results.get(job.index)
            if outcome is not None and outcome[0] == "done":
                self.report.done.append(job.sample_id)
        if self.cancel.cancelled:
            if callable(cancel_inflight := getattr(self.backend, "cancel_inflight", None)):
                cancel_inflight(work_keys)  # requests journaled by an earlier run no worker reached
            self._set_run_state("cancelled")
            raise next((e for e in errors if isinstance(e, Cancelled)), None) or Cancelled("run cancelled")
        fatal = next((e for e in errors if not isinstance(e, Cancelled)), None)
        if fatal is not None:
            self._set_run_state("failed")
            raise fatal
        self._set_run_state("failed" if self.report.failed else "done")

    def _one(self, job: _Job) -> None:
        if self._stop.is_set():
            return
        self.cancel.raise_if_cancelled()

        def on_progress(p: Progress) -> None:
            self._progress(job, p)

        record: RunRecord | None = None
        plan = job.plan
        assert plan is not None
        try:
            run = self.backend.segment(
                VideoSource(info=job.info, path=job.path, url=job.url), plan.request, frames=plan.frames,
                work_key=self.work_key(job), on_progress=on_progress, cancel=self.cancel,
            )
            record = run.record
            frames = clean_frames(run, names=plan.names, min_mask_area=self.opts.min_mask_area)
            policy = WritePolicy(min_track_frames=self.opts.min_track_frames, replace_tracks=plan.replace_tracks,
                                 mask_dir=Path(self.opts.mask_dir) if self.opts.mask_dir else None)
            stats = self.writer.write_sample(job.sample_id, frames, job.info, policy)
            if callable(commit := getattr(run, "commit", None)):
                commit()
            _mark_written(self.opts.run_key, job.sample_id)
            if self.opts.render_video and run.record.outputs:
                _store_outputs(self.dataset, job.sample_id, f"{self.opts.label_field}_outputs", run.record.outputs)
        except Cancelled:
            raise
        except _FATAL as exc:
            self._stop.set()
            self._fail(job, exc, record)
            raise
        except SamError as exc:
            self._fail(job, exc, record)
            if not self.opts.skip_failures:
                self._stop.set()
                raise
            return
        except BaseException:
            self._stop.set()
            raise
        with self._lock:
            self._results[job.index] = ("done", None)
            self.report.records[job.sample_id] = run.record
            self.report.frames += stats.frames
            self.report.detections += stats.detections
            self.report.tracks[job.sample_id] = len(stats.tracks)
        self._sample_state(job, "done")

    def _fail(self, job: _Job, exc: SamError, record: RunRecord | None) -> None:
        message = f"{job.path.name}: {exc}"
        files = dict(getattr(exc, "files", None) or {})
        if files:  # rendered media only (no labels): keep it on the sample, say why
            _store_outputs(self.dataset, job.sample_id, f"{self.opts.label_field}_outputs", files)
        with self._lock:
            self._results[job.index] = ("failed", exc)
            self.report.failed[job.sample_id] = message
            if files:
                self.report.outputs[job.sample_id] = files
            if record is not None and record.request_id:
                self.report.records.setdefault(job.sample_id, record)
        self._sample_state(job, "failed", message)

    def _progress(self, job: _Job, p: Progress) -> None:
        if self.progress is None:
            return
        with self._lock:
            done = sum(1 for s, _ in self._results.values() if s == "done")
            failed = len(self._results) - done
            self.progress(SampleProgress(job.index, len(self.jobs), job.sample_id, p, done, failed))

    def _sample_state(self, job: _Job, state: str, error: str | None = None) -> None:
        if self.journal is not None and self.report.run_id:
            from ..backends.fal.journal import SampleState

            self.journal.set_sample_state(self.report.run_id, job.sample_id, SampleState(state), error)

    def _set_run_state(self, state: str) -> None:
        if self.journal is not None and self.report.run_id:
            from ..backends.fal.journal import RunState

            self.journal.set_run_state(self.report.run_id, RunState(state))


_OUTPUTS_LOCK = threading.Lock()


def _store_outputs(dataset: fo.Dataset, sample_id: str, field: str, files: Mapping[str, str]) -> None:
    """Rendered media URLs of a labels-less answer, as a dict on the sample."""
    with _OUTPUTS_LOCK:
        sample = dataset[sample_id]
        sample[field] = dict(files)
        sample.save()


def _record_run(journal: Any, dataset: fo.Dataset, opts: SegmentOptions, jobs: Sequence[_Job], run_id: str | None) -> str:
    if run_id is not None:
        from ..backends.fal.journal import RunState

        journal.set_run_state(run_id, RunState.RUNNING)
        return run_id
    spec_opts = opts.model_dump(mode="json")
    spec_opts["backend_options"] = {k: v for k, v in spec_opts.get("backend_options", {}).items()
                                    if k.lower() not in _SECRET_OPTIONS}
    return journal.begin_run(dataset=dataset.name, label_field=opts.label_field,
                             sample_ids=[j.sample_id for j in jobs], spec={"options": spec_opts})


def _environ(secrets: Mapping[str, str] | None) -> Mapping[str, str] | None:
    if not secrets:
        return None
    return {**os.environ, **{k: v for k, v in secrets.items() if v}}


def _probe_all(paths: Sequence[str]) -> list[VideoInfo | VideoError]:
    """ffprobe every video, several at once (each is a subprocess that mostly waits)."""

    def one(path: str) -> VideoInfo | VideoError:
        try:
            return video_ops.probe(path)
        except VideoError as exc:
            return exc

    if len(paths) <= 1:
        return [one(p) for p in paths]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(_PROBE_WORKERS, len(paths)), thread_name_prefix="sam31-probe") as pool:
        return list(pool.map(one, paths))


def _prepare(samples: fo.core.collections.SampleCollection, request: SegmentRequest | None, opts: SegmentOptions) -> list[_Job]:
    """Probe every video and check its request against it, before anything is spent.
    ``request`` is the run's request, or None when each video gets its own (see plan.py)."""
    jobs, problems = [], []
    ids, paths = samples.values("id"), samples.values("filepath")
    urls = samples.values(opts.url_field) if opts.url_field else [None] * len(ids)
    refine = opts.refine()
    docs = {s.id: s for s in samples.select(ids)} if request is None else {}
    for sample_id, filepath, url, probed in zip(ids, paths, urls, _probe_all(paths)):
        try:
            if isinstance(probed, VideoError):
                raise probed
            info = probed
            if request is None:
                plan = plan_sample(docs[sample_id], info, base=opts.request_fields(), frames=opts.frames,
                                   prompt_fields=opts.prompt_fields, selected_labels=opts.selected_labels,
                                   refine=refine, label_field=opts.label_field)
            else:
                request.check_against(info, opts.frames)
                plan = SamplePlan(request, opts.frames, {})
        except VideoError as exc:
            problems.append(f"sample {sample_id}: {exc}")
            continue
        except InvalidRequest as exc:
            problems.extend(f"sample {sample_id} ({Path(filepath).name}): {p}" for p in exc.problems)
            continue
        if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            problems.append(f"sample {sample_id}: {opts.url_field}={url!r} is not an http(s) URL")
            continue
        jobs.append(_Job(len(jobs), sample_id, Path(filepath), info, url, plan))
    if problems:
        raise InvalidRequest(problems)
    return jobs


# Samples written under a run key (sharded runs): a tiny collection next to FiftyOne's own.
RUN_MARKS_COLLECTION = "sam31_run_marks"


def _marks():  # -> pymongo Collection
    import fiftyone.core.odm as foo

    coll = foo.get_db_conn()[RUN_MARKS_COLLECTION]
    coll.create_index([("run_key", 1), ("sample_id", 1)], unique=True)
    return coll


def _already_written(run_key: str | None, jobs: Sequence[_Job]) -> set[str]:
    if not run_key:
        return set()
    ids = [j.sample_id for j in jobs]
    return {d["sample_id"] for d in _marks().find({"run_key": run_key, "sample_id": {"$in": ids}}, {"sample_id": 1})}


def _mark_written(run_key: str | None, sample_id: str) -> None:
    if run_key:
        # `writes` counts publishes: 1 per sample when shards never overlap (tests check it).
        _marks().update_one({"run_key": run_key, "sample_id": sample_id},
                            {"$setOnInsert": {"written_at": time.time()}, "$inc": {"writes": 1}}, upsert=True)


class _Background:
    """Run ``fn(*args)`` on a thread; ``join()`` waits and re-raises what it raised."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._error: BaseException | None = None

        def target() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to join()
                self._error = exc

        self._thread = threading.Thread(target=target, name="sam31-metadata", daemon=True)
        self._thread.start()

    def join(self, *, reraise: bool = True) -> None:
        self._thread.join()
        if self._error is not None and reraise:
            raise self._error


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


def _total_cost(backend: Backend, jobs: Sequence[_Job]) -> float | None:
    """Sum of the per-video estimates, counting only the frames that will be sent."""
    total = 0.0
    for job in jobs:
        assert job.plan is not None
        info = job.info
        if job.plan.frames is not None:
            info = info.model_copy(update={"frame_count": len(job.plan.frames.indices(info.frame_count))})
        usd = backend.estimate_cost(info, job.plan.request).usd
        if usd is None:
            return None
        total += usd
    return total


def _describe_field(dataset: fo.Dataset, opts: SegmentOptions, report: SegmentReport) -> None:
    """Record on the output field where its labels came from (backend, model, endpoint,
    billed units) and how to find the run again."""
    field = dataset.get_field(f"frames.{opts.label_field}")
    records = [report.records[s] for s in report.done if s in report.records]
    last = records[-1]
    field.description = f"SAM tracks ({last.model or last.backend}) for prompt {opts.prompt!r}"
    field.info = {
        "sam31_video": {
            "backend": last.backend,
            "model": last.model,
            "endpoint": last.endpoint,
            "endpoints": sorted({r.endpoint for r in records if r.endpoint}),
            "models": sorted({r.model for r in records if r.model}),
            "request": SegmentRequest.model_construct(**opts.request_fields()).model_dump(mode="json"),
            "prompt_fields": opts.prompt_fields,
            "refine": {"track": opts.refine_track, "frame": opts.refine_frame, "direction": opts.refine_direction}
            if opts.refine_track is not None else None,
            "frames": opts.frames.model_dump() if opts.frames is not None else None,
            "request_ids": {sid: r.request_id for sid, r in report.records.items() if sid in report.done},
            "billable_units": {sid: r.billable_units for sid, r in report.records.items() if sid in report.done},
            "run_id": report.run_id,
            "warnings": sorted({w for r in records for w in r.warnings}),
        }
    }
    field.save()


# ---------------------------------------------------------------------------------------
# resume and status


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """What the journal knows: runs (newest first) and requests still open at fal."""

    journal: str
    runs: list[Any]  # journal.RunInfo
    open_requests: list[Any]  # journal.Entry in submitting / uncertain / submitted states

    def __str__(self) -> str:
        lines = [f"journal: {self.journal}"]
        if not self.runs:
            lines.append("no runs recorded")
        for run in self.runs:
            counts = run.counts()
            lines.append(
                f"run {run.run_id}  {run.state.value:<9} dataset={run.dataset} field={run.label_field} "
                f"done={counts['done']} failed={counts['failed']} pending={counts['pending']} "
                f"started {time.strftime('%Y-%m-%d %H:%M', time.localtime(run.created_at))}"
            )
        if self.open_requests:
            lines.append("requests still open at fal:")
            for entry in self.open_requests:
                age = time.time() - entry.updated_at
                lines.append(f"  #{entry.id} {entry.state.value:<10} {entry.work_key} {entry.endpoint} "
                             f"request {entry.request_id or '-'} ({age:.0f} s ago){': ' + entry.error if entry.error else ''}")
        return "\n".join(lines)


def _open_journal(journal_path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None):  # -> Journal
    from ..backends.fal.config import default_journal_path
    from ..backends.fal.journal import Journal

    path = Path(journal_path) if journal_path is not None else default_journal_path(environ or os.environ)
    if not path.exists():
        raise InvalidRequest(f"no journal at {path}: nothing was ever submitted with it (pass journal_path=...)")
    return Journal(path)


def status(dataset: str | fo.Dataset | None = None, *, journal_path: str | os.PathLike[str] | None = None,
           backend: Backend | None = None) -> RunStatus:
    """Runs recorded in the fal journal (all, or ``dataset``'s) and the requests still open
    at fal. ``backend`` (a fal backend instance) reads its own journal; otherwise the
    journal at ``journal_path`` (default: the user's state directory)."""
    name = dataset.name if isinstance(dataset, fo.Dataset) else dataset
    journal = getattr(backend, "journal", None) if backend is not None else _open_journal(journal_path, None)
    if journal is None:
        raise InvalidRequest(f"backend {getattr(backend, 'name', backend)!r} keeps no journal")
    from ..backends.fal.journal import OPEN_STATES

    try:
        runs = journal.runs(dataset=name)
        prefix = f"{name}/" if name else None
        entries = journal.entries(states=OPEN_STATES, work_key_prefix=prefix)
        return RunStatus(journal.location, runs, entries)
    finally:
        if backend is None:
            journal.close()


def resume(
    dataset: str | fo.Dataset | None = None,
    *,
    run_id: str | None = None,
    label_field: str | None = None,
    backend: Backend | None = None,
    secrets: Mapping[str, str] | None = None,
    journal_path: str | os.PathLike[str] | None = None,
    resubmit_uncertain: bool = False,
    progress: Callable[[SampleProgress], None] | None = None,
    cancel: CancelToken | None = None,
) -> SegmentReport:
    """Finish a run that stopped (crash, kill, Ctrl-C, failures): the newest unfinished run
    of ``dataset`` (and ``label_field``), or ``run_id``. Requests fal already has are polled
    (never submitted again), results already fetched are written, and only samples never
    submitted are submitted. Samples already written are left alone.

    The run's options come from the journal; ``backend`` (an instance with that journal)
    or ``journal_path`` say which journal. ``resubmit_uncertain`` also resubmits samples
    whose earlier submit may or may not have reached fal (possibly paying twice).
    """
    name = dataset.name if isinstance(dataset, fo.Dataset) else dataset
    journal = getattr(backend, "journal", None) if backend is not None else _open_journal(journal_path, _environ(secrets))
    if journal is None:
        raise InvalidRequest(f"backend {getattr(backend, 'name', backend)!r} keeps no journal: nothing to resume")
    from ..backends.fal.journal import RunState

    try:
        if run_id is not None:
            run = journal.run(run_id)
        else:
            runs = [r for r in journal.runs(dataset=name, states=[RunState.RUNNING, RunState.FAILED, RunState.CANCELLED])
                    if label_field is None or r.label_field == label_field]
            if not runs:
                raise InvalidRequest(f"no unfinished run{' of ' + name if name else ''} in {journal.location}")
            run = runs[0]
        location = str(journal.path) if journal.path is not None else None
    finally:
        if backend is None:
            journal.close()
    opts = SegmentOptions.build(**run.spec["options"])
    if backend is None:
        backend_options = dict(opts.backend_options)
        if location is not None:
            backend_options["journal_path"] = location
        if resubmit_uncertain:
            backend_options["resubmit_uncertain"] = True
        opts = opts.model_copy(update={"backend_options": backend_options})
    pending = run.pending()
    if not pending:
        return SegmentReport(label_field=run.label_field, run_id=run.run_id)
    samples = fo.load_dataset(run.dataset).select(pending, ordered=True)
    config = getattr(backend, "config", None)
    if backend is None or not resubmit_uncertain:
        return _segment(samples, opts, backend=backend, secrets=secrets, progress=progress, cancel=cancel, run_id=run.run_id)
    if config is None or not hasattr(config, "resubmit_uncertain"):
        raise InvalidRequest("resubmit_uncertain needs a fal backend")
    backend.config = config.model_copy(update={"resubmit_uncertain": True})  # type: ignore[attr-defined]
    try:
        return _segment(samples, opts, backend=backend, secrets=secrets, progress=progress, cancel=cancel, run_id=run.run_id)
    finally:
        backend.config = config  # type: ignore[attr-defined]


def redecode(
    *,
    run_id: str,
    backend: Backend | None = None,
    journal_path: str | os.PathLike[str] | None = None,
    progress: Callable[[SampleProgress], None] | None = None,
) -> SegmentReport:
    """Decode the fal results journaled for run ``run_id`` into its field again, every
    sample of it, with no upload and no submit: the repair after a decoding failure (e.g.
    once ``fal-check`` stored the RLE layout fal really uses). A sample without stored
    results fails with a message; nothing is ever sent to fal."""
    journal = getattr(backend, "journal", None) if backend is not None else _open_journal(journal_path, None)
    if journal is None:
        raise InvalidRequest(f"backend {getattr(backend, 'name', backend)!r} keeps no journal: nothing to redecode")
    try:
        run = journal.run(run_id)
        location = str(journal.path) if journal.path is not None else None
    finally:
        if backend is None:
            journal.close()
    opts = SegmentOptions.build(**run.spec["options"])
    samples = fo.load_dataset(run.dataset).select(list(run.samples), ordered=True)
    if backend is None:
        from ..backends.fal import FalBackend, FalConfig

        # No key is needed: a stored-only backend sends nothing. A placeholder satisfies FalConfig.
        environ = {**os.environ}
        environ.setdefault("FAL_KEY", "redecode:offline")
        options = {k: v for k, v in opts.backend_options.items() if k in FalConfig.model_fields}
        if location is not None:
            options["journal_path"] = location
        owned = FalBackend.from_env(environ, **options)
        owned.stored_only = True
        try:
            return _segment(samples, opts, backend=owned, secrets=None, progress=progress, cancel=None, run_id=run.run_id)
        finally:
            owned.close()
    previous = getattr(backend, "stored_only", None)
    if previous is None:
        raise InvalidRequest(f"backend {backend.name!r} has no stored results to redecode")
    backend.stored_only = True  # type: ignore[attr-defined]
    try:
        return _segment(samples, opts, backend=backend, secrets=None, progress=progress, cancel=None, run_id=run.run_id)
    finally:
        backend.stored_only = previous  # type: ignore[attr-defined]


__all__ = ["RunStatus", "SegmentOptions", "SegmentReport", "SampleProgress", "redecode", "resume", "segment_videos",
           "status"]
