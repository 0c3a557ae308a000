"""Running the samples of one run: a bounded thread pool, each sample segmented by the
backend and written all or nothing, failures reported per sample, cancel and fatal errors
stopping new samples; plus the marks that let a re-queued shard skip written samples."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import fiftyone as fo

from ..backends.base import Backend, CancelToken, RunRecord, VideoSource, wait_all
from ..errors import AuthError, Cancelled, QuotaError, SamError
from ..postprocess import clean_frames
from ..types import Progress, VideoInfo
from .options import SampleProgress, SegmentOptions, SegmentReport
from .plan import SamplePlan
from .writer import FrameLabelWriter, WritePolicy

logger = logging.getLogger(__name__)

# Errors that will fail every remaining sample the same way: stop starting new samples
# (the ones in flight are already paid for and finish) instead of skipping.
_FATAL = (AuthError, QuotaError)


@dataclasses.dataclass(frozen=True)
class Job:
    index: int
    sample_id: str
    path: Path
    info: VideoInfo
    url: str | None = None
    plan: SamplePlan | None = None


def work_key(dataset: str, sample_id: str, field: str) -> str:
    """Names one video's work in a field across runs and processes (the fal journal's key)."""
    return f"{dataset}/{sample_id}/{field}"


class Runner:
    """Runs the jobs on a bounded thread pool and fills the report."""

    def __init__(self, dataset: fo.Dataset, opts: SegmentOptions, backend: Backend,
                 jobs: Sequence[Job], report: SegmentReport, progress: Callable[[SampleProgress], None] | None,
                 cancel: CancelToken) -> None:
        self.dataset, self.opts, self.backend = dataset, opts, backend
        self.jobs, self.report, self.progress, self.cancel = jobs, report, progress, cancel
        self.writer = FrameLabelWriter(dataset, opts.label_field)
        self.journal = getattr(backend, "journal", None) if report.run_id else None
        self._lock = threading.Lock()  # report, counters, progress calls
        self._stop = threading.Event()  # a fatal error or bug: start no new sample
        self._results: dict[int, tuple[str, Any]] = {}

    def work_key(self, job: Job) -> str:
        return work_key(self.dataset.name, job.sample_id, self.opts.label_field)

    def run(self) -> None:
        work_keys = [self.work_key(j) for j in self.jobs]
        if self.journal is not None and callable(harvest := getattr(self.backend, "harvest", None)):
            harvest(work_keys)  # results finished while nobody watched expire within minutes
        # A backend that computes one video at a time on this machine says how many may be in
        # flight (each holds its decoded frames): more only add memory.
        workers = min(self.opts.concurrency, getattr(self.backend, "max_concurrency", self.opts.concurrency))
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, len(self.jobs))),
                                                   thread_name_prefix="sam31-sample") as pool:
            # Ctrl-C in a script or notebook cancels like the CLI's: requests in flight are
            # cancelled at fal, nothing partial is written; it is raised below.
            errors, interrupted = wait_all([pool.submit(self._one, job) for job in self.jobs], self.cancel)
        for job in self.jobs:  # report in sample order, whatever order they finished in
            outcome = self._results.get(job.index)
            if outcome is not None and outcome[0] == "done":
                self.report.done.append(job.sample_id)
        if self.cancel.cancelled:
            if callable(cancel_inflight := getattr(self.backend, "cancel_inflight", None)):
                cancel_inflight(work_keys)  # requests journaled by an earlier run no worker reached
            self._set_run_state("cancelled")
            if interrupted is not None:
                raise interrupted
            raise next((e for e in errors if isinstance(e, Cancelled)), None) or Cancelled("run cancelled")
        fatal = next((e for e in errors if not isinstance(e, Cancelled)), None)
        if fatal is not None:
            self._set_run_state("failed")
            raise fatal
        self._set_run_state("failed" if self.report.failed else "done")

    def _one(self, job: Job) -> None:
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
        except Exception as exc:  # noqa: BLE001 - not one of ours (e.g. a library error on one odd video)
            logger.exception("sample %s failed with an unexpected error", job.sample_id)
            self._fail(job, SamError(f"unexpected error ({type(exc).__name__}): {exc}"), record)
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

    def _fail(self, job: Job, exc: SamError, record: RunRecord | None) -> None:
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

    def _progress(self, job: Job, p: Progress) -> None:
        if self.progress is None:
            return
        with self._lock:
            done = sum(1 for s, _ in self._results.values() if s == "done")
            failed = len(self._results) - done
            self.progress(SampleProgress(job.index, len(self.jobs), job.sample_id, p, done, failed))

    def _sample_state(self, job: Job, state: str, error: str | None = None) -> None:
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


# Samples written under a run key (sharded runs): a tiny collection next to FiftyOne's own.
RUN_MARKS_COLLECTION = "sam31_run_marks"


def _marks():  # -> pymongo Collection
    import fiftyone.core.odm as foo

    coll = foo.get_db_conn()[RUN_MARKS_COLLECTION]
    coll.create_index([("run_key", 1), ("sample_id", 1)], unique=True)
    return coll


def already_written(run_key: str | None, jobs: Sequence[Job]) -> set[str]:
    if not run_key:
        return set()
    ids = [j.sample_id for j in jobs]
    return {d["sample_id"] for d in _marks().find({"run_key": run_key, "sample_id": {"$in": ids}}, {"sample_id": 1})}


def _mark_written(run_key: str | None, sample_id: str) -> None:
    if run_key:
        # `writes` counts publishes: 1 per sample when shards never overlap (tests check it).
        _marks().update_one({"run_key": run_key, "sample_id": sample_id},
                            {"$setOnInsert": {"written_at": time.time()}, "$inc": {"writes": 1}}, upsert=True)
