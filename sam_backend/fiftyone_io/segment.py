"""The SDK entry point: segment every video sample of a collection into a frame field.

Everything that can be checked is checked before the first byte is uploaded or the first
label written: the output field, the prompts (shape, and against every video's size,
frame count and frame range), that every video decodes, and the backend's credentials.

Samples run concurrently (``runner.py``), all sharing one backend and so one HTTP client.
A backend with a journal (fal) also gets the run recorded there (which samples, with
which options), so ``runs.resume`` can finish it after a crash or Ctrl-C without the
original arguments and without paying twice, and ``runs.status`` can show it. Settings
and reports are in ``options.py``.
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
from typing import Any

from bson import ObjectId

import fiftyone as fo
from fiftyone.core.frame import get_default_frame_fields

from .. import video as video_ops
from ..backends.base import Backend, CancelToken, CostEstimate, VideoSource, get_backend
from ..cost import check_budget, dollars, total_usd
from ..errors import InvalidRequest, SamError, VideoError, listed, shorten
from ..types import SegmentRequest, VideoInfo
from .options import DEFAULT_CONCURRENCY, SampleProgress, SegmentOptions, SegmentReport
from .plan import SamplePlan, plan_sample
from .runner import Job, Runner, already_written, work_key
from .video_info import check_whole_videos
from .writer import check_label_field, refuse_replacing_labels_not_ours

logger = logging.getLogger(__name__)

# ffprobe processes at once while checking videos: hundreds of videos are checked in
# seconds, not minutes, without flooding a small machine.
_PROBE_WORKERS = 8
# backend_options keys never stored with a run (credentials are read again on resume).
_SECRET_OPTIONS = ("key", "api_key", "secret", "token")


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
    if backend is not None and opts.backend_options:
        raise InvalidRequest("backend_options configure a backend built from its name; this backend object is used "
                             "as it is: set them when you build it, or pass backend='<name>'")
    return segment_collection(samples, opts, backend=backend, secrets=secrets, progress=progress, cancel=cancel)


def segment_collection(samples: fo.core.collections.SampleCollection, opts: SegmentOptions, *, backend: Backend | None,
             secrets: Mapping[str, str] | None, progress: Callable[[SampleProgress], None] | None,
             cancel: CancelToken | None, run_id: str | None = None) -> SegmentReport:
    start = time.monotonic()
    _check_collection(samples, opts)
    dataset = samples._dataset
    # Per-video prompts (from labels, or a refine) are checked per video in _prepare.
    request = None if opts.per_sample_prompts else opts.request()
    jobs, unreadable, unprompted, too_short = _prepare(samples, request, opts)
    skipped = already_written(opts.run_key, jobs)
    jobs = [dataclasses.replace(j, index=i) for i, j in enumerate(j for j in jobs if j.sample_id not in skipped)]
    report = SegmentReport(label_field=opts.label_field, samples=len(jobs) + len(unreadable), skipped=sorted(skipped),
                           failed=dict(unreadable))
    for sample_id, message in unreadable.items():
        logger.warning("skipping sample %s: %s", sample_id, message)
    mixed = _labels_outside_range(dataset, opts, jobs)  # said before anything is sent
    if unprompted:
        mixed.append(f"{len(unprompted)} video(s) have no prompts (no text prompt, none in their labels): left out")
    if too_short:
        mixed.append(f"{len(too_short)} video(s) end before the frame range starts, left out: "
                     + listed(too_short, "; "))
    if opts.frames is not None:
        shorter = [j.path.name for j in jobs if opts.frames.runs_past_end(j.info.frame_count)]
        if shorter:
            mixed.append(f"frames.stop={opts.frames.stop} is past the end of {len(shorter)} video(s) "
                         f"({listed(shorter)}): each is processed to its "
                         "last frame")
    config = getattr(backend, "config", None)  # a fal backend object's (a local backend has no text_mode)
    on_fal = hasattr(config, "text_mode") if backend is not None else opts.backend in ("fal", "emulator")
    text_mode = getattr(config, "text_mode", None) or opts.backend_options.get("text_mode") or "instances"
    if opts.render_video and opts.prompt.strip() and on_fal and text_mode == "instances":
        mixed.append("render_video: text concepts run per instance on SAM 3's objects endpoint, which renders "
                     "nothing; only clicked or boxed objects (and text_mode='union') get an overlay video")
    endpoint_id = getattr(config, "endpoint", None) or opts.backend_options.get("endpoint")
    if on_fal and endpoint_id and _renders_only(endpoint_id):
        mixed.append(f"{endpoint_id} returns only a rendered video, no masks: each video is billed and gets no labels "
                     f"(the video's URL goes to {opts.label_field}_outputs); for labels use fal-ai/sam-3-1/video-rle")
    for warning in mixed:
        logger.warning(warning)
    backend_options = dict(opts.backend_options)
    if opts.render_video and opts.backend in ("fal", "emulator"):
        backend_options.setdefault("render_overlay", True)  # the RLE endpoints draw nothing unless asked
    owned = get_backend(opts.backend, environ=environ_with_secrets(secrets), **backend_options) if backend is None else None
    active = backend or owned
    assert active is not None
    earlier: dict[str, tuple[str | None, float | None]] = {}
    try:
        estimates = _estimates(active, jobs)
        report.estimated_usd, report.planned_frames = total_usd(estimates), sum(e.frames for e in estimates)
        if report.estimated_usd is not None:
            report.stored_usd = _stored_usd(active, jobs, dataset.name, opts.label_field)
        if report.estimated_usd is not None and not opts.dry_run:  # said before anything is sent (CLI, logs)
            free = " (fal's price; the emulator charges nothing)" if active.name == "emulator" else ""
            stored = (f"; {dollars(report.stored_usd)} of it is already paid (results in the journal, no new charge)"
                      if report.stored_usd else "")
            logger.info("estimated cost: %s for %d video(s), %d frames%s%s", dollars(report.estimated_usd), len(jobs),
                        report.planned_frames, stored, free)
        check_budget(estimates, opts.max_usd, stored_usd=report.stored_usd)
        if opts.dry_run:
            report.dry_run, report.warnings = True, mixed
            return report
        journal = getattr(active, "journal", None)
        if journal is not None and hasattr(journal, "begin_run"):
            report.run_id = _record_run(journal, dataset, opts, jobs, run_id)
        runner = Runner(dataset, opts, active, jobs, report, progress, cancel or CancelToken())
        # FiftyOne's own metadata (the App needs it) is computed while the videos are
        # being segmented rather than before the first submit.
        metadata = _Background(_fill_missing_metadata, samples)
        try:
            runner.run()
        except BaseException as exc:
            if isinstance(exc, SamError):
                exc.report = report  # what was written and sent before it stopped (the CLI says it)
            metadata.join(reraise=False)  # the run's own error is the one to show
            if report.done:  # videos finished before a cancel or a stop keep their labels: say what made them
                try:
                    _describe_field(dataset, opts, report, {})
                except Exception:  # noqa: BLE001 - the run's own error is the one to raise
                    logger.exception("could not record the run on frames.%s", opts.label_field)
            raise
        metadata.join()
        if run_id is not None and journal is not None:  # a resumed run: what its earlier part wrote
            earlier = _written_earlier(journal, run_id, dataset.name, opts.label_field, set(report.done))
        frame_counts = _frame_count_warnings(samples, jobs)
        for warning in frame_counts + _video_warnings(report):
            logger.warning(warning)
        report.warnings = mixed + frame_counts
    finally:
        if owned is not None:
            owned.close()
        report.seconds = time.monotonic() - start
    if report.done:
        _describe_field(dataset, opts, report, earlier)
    return report


def _renders_only(endpoint_id: str) -> bool:
    from ..backends.fal.endpoints import endpoint

    try:
        return endpoint(endpoint_id).output == "video"
    except InvalidRequest:  # an unknown endpoint: the backend refuses it with its own message
        return False


def _video_warnings(report: SegmentReport, limit: int = 10) -> list[str]:
    """Each distinct warning of the videos' runs (an object labelled from a later frame, an
    endpoint fallback...), at most ``limit``: they are in the field's info too, but a CLI or
    script user sees only what is logged. Reused stored results are in the billing figures."""
    seen = list(dict.fromkeys(w for r in report.records.values() for w in r.warnings if "no new charge" not in w))
    if len(seen) > limit:
        return [*seen[:limit], f"... and {len(seen) - limit} more in frames.{report.label_field}'s info (sam31_video.warnings)"]
    return seen


def _check_collection(samples: fo.core.collections.SampleCollection, opts: SegmentOptions) -> None:
    """What the run needs from the collection itself, checked before anything is probed."""
    dataset = samples._dataset
    if len(samples) == 0:
        raise InvalidRequest(f"nothing to segment: this view of {dataset.name!r} has no samples")
    check_whole_videos(samples, "segment")
    if opts.refine_track is not None and len(samples) > 1:
        raise InvalidRequest(f"refine corrects one track of one video, but this view has {len(samples)} videos: "
                             "select that video (in the App, open it)")
    try:
        check_label_field(dataset, opts.label_field)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if not opts.overwrite and opts.refine_track is None:  # a refine edits one track of the field in place
        refuse_replacing_labels_not_ours(samples, opts.label_field, "of these videos that sam31-video did not write; "
                                                                    "a run would replace them")
    if opts.url_field and opts.url_field not in dataset.get_field_schema():
        raise InvalidRequest(f"url_field {opts.url_field!r} is not a sample field of {dataset.name!r}")
    frame_fields = dataset.get_frame_field_schema() or {}
    missing = [f for f in opts.prompt_fields if f.removeprefix("frames.") not in frame_fields]
    if missing:
        known = sorted(n for n in frame_fields if n not in get_default_frame_fields(include_private=False))
        raise InvalidRequest(f"prompt field(s) {', '.join(shorten(f) for f in missing)} are not frame fields of "
                             f"{dataset.name!r} (its frame fields: {', '.join(known) or 'none'})")


def _record_run(journal: Any, dataset: fo.Dataset, opts: SegmentOptions, jobs: Sequence[Job], run_id: str | None) -> str:
    if run_id is not None:
        from ..backends.fal.journal import RunState

        journal.set_run_state(run_id, RunState.RUNNING)
        return run_id
    spec_opts = opts.model_dump(mode="json")
    spec_opts["backend_options"] = {k: v for k, v in spec_opts.get("backend_options", {}).items()
                                    if k.lower() not in _SECRET_OPTIONS}
    return journal.begin_run(dataset=dataset.name, label_field=opts.label_field,
                             sample_ids=[j.sample_id for j in jobs], spec={"options": spec_opts})


def environ_with_secrets(secrets: Mapping[str, str] | None) -> Mapping[str, str] | None:
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


def _prepare(samples: fo.core.collections.SampleCollection, request: SegmentRequest | None,
             opts: SegmentOptions) -> tuple[list[Job], dict[str, str], list[str], list[str]]:
    """Probe every video and check its request against it, before anything is spent.
    ``request`` is the run's request, or None when each video gets its own (see plan.py).

    Returns the jobs; with ``skip_failures``, the videos that cannot be read (sample id
    -> why): those fail alone, like any other per-video failure; the videos the run gives
    no prompt (prompts from labels that only some videos have) and those that end before
    ``frames.start`` (why, per video): left out, unless no video is left. Bad prompts, and
    unreadable videos without ``skip_failures``, refuse the whole run."""
    jobs, problems, unreadable, unprompted = [], [], {}, []
    too_short: list[str] = []  # frames.start past their end: left out, unless no video is left
    ids, paths = samples.values("id"), samples.values("filepath")
    urls = samples.values(opts.url_field) if opts.url_field else [None] * len(ids)
    refine = opts.refine()
    docs = {s.id: s for s in samples.select(ids)} if request is None else {}
    for sample_id, filepath, url, probed in zip(ids, paths, urls, _probe_all(paths)):
        try:
            if isinstance(probed, VideoError):
                raise probed
            info = probed
            empty = opts.frames.problems(info) if opts.frames is not None and opts.refine_track is None else []
            if empty:
                too_short.append(f"sample {sample_id} ({Path(filepath).name}): {empty[0]}")
                continue
            if request is None:
                plan = plan_sample(docs[sample_id], info, base=opts.request_fields(), frames=opts.frames,
                                   prompt_fields=opts.prompt_fields, selected_labels=opts.selected_labels,
                                   refine=refine, label_field=opts.label_field)
                if plan is None:  # e.g. clicks drawn on one video of many: the others have none
                    unprompted.append(sample_id)
                    continue
            else:
                request.check_against(info, opts.frames)
                plan = SamplePlan(request, opts.frames, {})
        except VideoError as exc:
            if opts.skip_failures:
                unreadable[sample_id] = str(exc)
            else:
                problems.append(f"sample {sample_id}: {exc}")
            continue
        except InvalidRequest as exc:
            problems.extend(f"sample {sample_id} ({Path(filepath).name}): {p}" for p in exc.problems)
            continue
        if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            problems.append(f"sample {sample_id}: {opts.url_field}={url!r} is not an http(s) URL")
            continue
        jobs.append(Job(len(jobs), sample_id, Path(filepath), info, url, plan))
    if too_short and not jobs and not unreadable:
        problems += too_short
    if problems:
        raise InvalidRequest(problems)
    if unprompted and not jobs and not unreadable:
        where = ", ".join(shorten(f) for f in opts.prompt_fields) or "the selected labels"
        raise InvalidRequest(f"no video of this view has prompts: no text prompt, and none in {where}")
    return jobs, unreadable, unprompted, too_short


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


def _labels_outside_range(dataset: fo.Dataset, opts: SegmentOptions, jobs: Sequence[Job]) -> list[str]:
    """A frame range replaces labels on its own frames only: where the field holds labels
    outside the range (an earlier run's), the user is told that they stay and whose ids they carry."""
    # (A refine edits one track in place, by design.)
    if opts.frames is None or opts.refine_track is not None or not dataset.has_frame_field(opts.label_field):
        return []
    f = opts.frames
    shown = f"{f.start}:{'' if f.stop is None else f.stop}" + (f":{f.step}" if f.step != 1 else "")
    # Straight from the frames collection, frame numbers only: through a view, each video's
    # frames (masks included) became one document, over MongoDB's 16 MB for big label fields.
    labelled: dict[str, set[int]] = {}
    for doc in dataset._frame_collection.find(
            {"_sample_id": {"$in": [ObjectId(j.sample_id) for j in jobs]}, opts.label_field: {"$ne": None}},
            {"_sample_id": 1, "frame_number": 1, "_id": 0}):
        labelled.setdefault(str(doc["_sample_id"]), set()).add(doc["frame_number"])
    warnings = []
    for job in jobs:
        processed = {i + 1 for i in opts.frames.indices(job.info.frame_count)}
        kept = len(labelled.get(job.sample_id, set()) - processed)
        if kept:
            warnings.append(f"{job.path.name}: frames.{opts.label_field} keeps the labels of an earlier run on {kept} "
                            f"frame{'s' if kept != 1 else ''} outside frames {shown}; their track "
                            "ids are that run's, not this one's (segment the whole video, or into a new field, to "
                            "keep one run per field)")
    return warnings


def _frame_count_warnings(samples: fo.core.collections.SampleCollection, jobs: Sequence[Job]) -> list[str]:
    """Labels land on decoded frame i + 1. The App plays frame n at (n - 1) / frame_rate,
    which is only right for constant-frame-rate videos whose metadata counts frames right."""
    counts = dict(zip(samples.values("id"), samples.values("metadata.total_frame_count")))
    warnings = []
    for job in jobs:
        if job.info.container_disagrees:
            warnings.append(f"{job.path.name}: the file says {job.info.claimed_frame_count} frames but "
                            f"{job.info.frame_count} decode (an edit list, or a damaged or truncated file); labels "
                            f"are on the {job.info.frame_count} decoded frames, as FiftyOne's reader numbers them")
            continue
        fiftyone_count = counts.get(job.sample_id)
        reasons = ["has a variable frame rate"] if job.info.variable_frame_rate else []
        if fiftyone_count is not None and fiftyone_count != job.info.frame_count:
            reasons.append(f"decodes to {job.info.frame_count} frames where FiftyOne's metadata counts "
                           f"{fiftyone_count} (its estimate from duration x frame rate, off for variable frame "
                           "rates and for damaged or truncated files)")
        if reasons:
            warnings.append(
                f"{job.path.name} {' and '.join(reasons)}: labels are stored per decoded frame, but the App may "
                "show them on neighbouring frames. Re-encode it (fiftyone.utils.video.reencode_videos: constant "
                "frame rate, every frame readable) for exact playback."
            )
    return warnings


def _estimates(backend: Backend, jobs: Sequence[Job]) -> list[CostEstimate]:
    """Each video's estimate, counting only the frames that will be sent."""
    out = []
    for job in jobs:
        assert job.plan is not None
        info = job.info
        if job.plan.frames is not None:
            info = info.model_copy(update={"frame_count": len(job.plan.frames.indices(info.frame_count))})
        out.append(backend.estimate_cost(info, job.plan.request))
    return out


def _stored_usd(backend: Backend, jobs: Sequence[Job], dataset: str, field: str) -> float:
    """Of the estimate, what the backend's journal already holds (a run takes it again
    with no new charge): 0 for backends that keep none."""
    stored = getattr(backend, "stored_usd", None)
    if not callable(stored):
        return 0.0
    total = 0.0
    for job in jobs:
        assert job.plan is not None
        total += stored(VideoSource(info=job.info, path=job.path, url=job.url), job.plan.request,
                        frames=job.plan.frames, work_key=work_key(dataset, job.sample_id, field))
    return total


def _written_earlier(journal: Any, run_id: str, dataset: str, field: str,
                     skip: set[str]) -> dict[str, tuple[str | None, float | None]]:
    """sample id -> (request ids, billed units) of the samples an earlier part of run
    ``run_id`` wrote (e.g. a process killed before it could describe the field)."""
    from ..backends.fal.journal import RequestState, SampleState

    run = journal.run(run_id)
    keys = {work_key(dataset, sid, field): sid for sid, st in run.samples.items() if st is SampleState.DONE and sid not in skip}
    out: dict[str, tuple[str | None, float | None]] = {}
    for entry in journal.entries(states=[RequestState.WRITTEN], work_keys=list(keys)) if keys else []:
        if entry.created_at < run.created_at:
            continue  # an older run of the same field
        ids, units = out.get(keys[entry.work_key], (None, None))
        ids = ",".join(i for i in (ids, entry.request_id) if i) or None
        if entry.billable_units is not None:
            units = (units or 0.0) + entry.billable_units
        out[keys[entry.work_key]] = (ids, units)
    return out


def _describe_field(dataset: fo.Dataset, opts: SegmentOptions, report: SegmentReport,
                    earlier_samples: dict[str, tuple[str | None, float | None]] | None = None) -> None:
    """Record on the output field where its labels came from (backend, model, endpoint,
    billed units) and how to find the run again. A resumed run keeps what its earlier part
    recorded (``earlier_samples`` from the journal, and the field's info of the same run)."""
    field = dataset.get_field(f"frames.{opts.label_field}")
    records = [report.records[s] for s in report.done if s in report.records]
    last = records[-1]
    if opts.refine_track is None:  # a refine edits tracks of the run the description names
        field.description = f"SAM tracks ({last.model or last.backend}) for prompt {opts.prompt!r}"
    previous = (field.info or {}).get("sam31_video") or {}
    # A resumed run (same run id) adds its samples to what the earlier part recorded.
    earlier = previous if report.run_id is not None and previous.get("run_id") == report.run_id else {}
    request = SegmentRequest.model_construct(**opts.request_fields()).model_dump(mode="json")
    made_by = {"request": request, "prompt_fields": opts.prompt_fields,
               "frames": opts.frames.model_dump() if opts.frames is not None else None}
    if opts.refine_track is not None and "request" in previous:
        # A refine edits the labels of the run these name (as the description does); the
        # refine itself is under "refine" and in each video's "refines".
        made_by = {key: previous.get(key) for key in made_by}
    field.info = {
        "sam31_video": {
            "backend": last.backend,
            "model": last.model,
            "endpoint": last.endpoint,
            "endpoints": sorted({r.endpoint for r in records if r.endpoint} | set(earlier.get("endpoints", []))),
            "models": sorted({r.model for r in records if r.model} | set(earlier.get("models", []))),
            **made_by,
            "refine": {"track": opts.refine_track, "frame": opts.refine_frame, "direction": opts.refine_direction}
            if opts.refine_track is not None else None,
            "request_ids": {**earlier.get("request_ids", {}),
                            **{sid: ids for sid, (ids, _) in (earlier_samples or {}).items()},
                            **{sid: r.request_id for sid, r in report.records.items() if sid in report.done}},
            "billable_units": {**earlier.get("billable_units", {}),
                               **{sid: units for sid, (_, units) in (earlier_samples or {}).items()},
                               **{sid: r.billable_units for sid, r in report.records.items() if sid in report.done}},
            "run_id": report.run_id,
            "warnings": sorted({w for r in records for w in r.warnings} | set(earlier.get("warnings", []))),
            "samples": _sample_provenance(previous.get("samples") or {}, opts, report, earlier_samples or {}),
        }
    }
    field.save()


def _sample_provenance(previous: dict[str, Any], opts: SegmentOptions, report: SegmentReport,
                       earlier_samples: dict[str, tuple[str | None, float | None]]) -> dict[str, Any]:
    """Per video, what its labels in the field came from, kept across runs: a run over some
    videos, or a refine of one track, leaves the others' (and the refined video's own
    prompt) as they were; a refine is added to the video's list of refines."""
    out = dict(previous)
    now = time.time()  # epoch seconds: resume compares it with journal runs' start times
    written = {sid: (r.request_id, r.endpoint, r.model) for sid, r in report.records.items() if sid in report.done}
    written.update({sid: (ids, None, None) for sid, (ids, _) in earlier_samples.items() if sid not in written})
    for sid, (request_id, endpoint, model) in written.items():
        if opts.refine_track is not None:
            base = out.get(sid, {})
            refine = {"track": opts.refine_track, "frame": opts.refine_frame, "direction": opts.refine_direction,
                      "endpoint": endpoint, "model": model, "request_id": request_id, "run_id": report.run_id,
                      "written_at": now}
            out[sid] = {**base, "refines": [*base.get("refines", []), refine]}
        else:  # only what is set: one entry per video, so big datasets keep a small field document
            entry = {"prompt": opts.prompt, "prompt_fields": opts.prompt_fields,
                     "point_prompts": [p.model_dump(mode="json") for p in opts.point_prompts],
                     "box_prompts": [b.model_dump(mode="json") for b in opts.box_prompts],
                     "detection_threshold": opts.detection_threshold,
                     "frames": opts.frames.model_dump() if opts.frames is not None else None,
                     "endpoint": endpoint, "model": model, "request_id": request_id, "run_id": report.run_id,
                     "written_at": now}
            out[sid] = {k: v for k, v in entry.items() if v not in (None, [], "")}
    return out


__all__ = ["DEFAULT_CONCURRENCY", "SampleProgress", "SegmentOptions", "SegmentReport", "segment_videos"]
