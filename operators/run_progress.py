"""Running a segmentation from an operator: the work on a worker thread, its progress as
App progress (immediate) or delegated-operation progress, cancel when the App goes away or
the delegated operation is marked failed, and errors shown in the App. Shared by
``segment_video`` and ``segmentation_runs`` (resume)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from sam_backend.backends.base import CancelToken
from sam_backend.errors import SamError
from sam_backend.fiftyone_io import SampleProgress, SegmentReport

# How often a delegated run checks whether its operation was marked failed/cancelled.
WATCH_INTERVAL_S = 2.0

# The work: (progress callback, cancel token) -> report, e.g. segment_videos or resume.
Work = Callable[[Callable[[SampleProgress], None], CancelToken], SegmentReport]


def fail_in_app(ctx: Any, exc: BaseException) -> Iterator[Any]:
    if not ctx.delegated:  # show it in the App before the stream ends with the error
        yield ctx.trigger("notify", {"message": f"SAM 3.1: {exc}", "variant": "error"})
    raise RuntimeError(str(exc)) from exc


def run_with_progress(ctx: Any, work: Work) -> Iterator[Any]:
    """Run ``work`` on a worker thread; turn its progress into App progress here."""
    events: queue.Queue[SampleProgress | None] = queue.Queue()
    cancel = CancelToken()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["report"] = work(events.put, cancel)
        except BaseException as exc:  # handed to the operator thread, re-raised there
            outcome["error"] = exc
        finally:
            events.put(None)

    worker = threading.Thread(target=target, name="sam31-segment", daemon=True)
    worker.start()
    watcher = _watch_delegated(ctx, cancel) if ctx.delegated else None
    try:
        while (event := events.get()) is not None:
            update = progress_update(event)
            if ctx.delegated:
                ctx.set_progress(**update)
            else:
                yield ctx.trigger("set_progress", update)
    finally:
        # Reached early only if the App went away mid-run (generator closed): stop the run;
        # the writer then discards every unfinished video.
        if worker.is_alive():
            cancel.cancel()
        worker.join()
        if watcher is not None:
            watcher.set()
    if "error" in outcome:
        exc = outcome["error"]
        if not isinstance(exc, SamError):
            raise exc
        yield from fail_in_app(ctx, exc)
    report = outcome["report"]
    final = final_update(report)  # the last event is sent as the last video finishes, before it counts
    if ctx.delegated:
        ctx.set_progress(**final)
    else:
        yield ctx.trigger("set_progress", final)
    return report


def final_update(report: SegmentReport) -> dict[str, Any]:
    return {"progress": 1.0, "label": _videos_done(len(report.done), len(report.failed), report.samples)}


def _videos_done(done: int, failed: int, total: int) -> str:
    return f"{done + failed}/{total} videos done" + (f" ({failed} failed)" if failed else "")


def _watch_delegated(ctx: Any, cancel: CancelToken) -> threading.Event:
    """Cancel the run when its delegated operation stops being RUNNING (e.g. marked failed
    with `fiftyone delegated fail`): nothing partial is written, fal requests are cancelled."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    stop = threading.Event()
    op_id = getattr(ctx, "_delegated_operation_id", None)  # FiftyOne keeps it private
    if op_id is None:
        return stop

    def watch() -> None:
        service = DelegatedOperationService()
        while not stop.wait(WATCH_INTERVAL_S):
            doc = service.get(op_id)
            if doc is None or doc.run_state != ExecutionRunState.RUNNING:
                cancel.cancel()
                return

    threading.Thread(target=watch, name="sam31-watch", daemon=True).start()
    return stop


def progress_update(event: SampleProgress) -> dict[str, Any]:
    p = event.backend
    finished = event.done + event.failed
    label = _videos_done(event.done, event.failed, event.sample_count) + f"; video {event.sample_index + 1}: {p.stage}"
    if p.queue_position is not None:
        label += f" (queue position {p.queue_position})"
    elif p.frames_done is not None and p.frames_total:
        label += f" ({p.frames_done}/{p.frames_total} frames)"
    elif p.message:
        label += f": {p.message}"
    return {"progress": finished / max(1, event.sample_count), "label": label}


def summary(report: SegmentReport) -> str:
    text = (f"SAM 3.1: {len(report.done)}/{report.samples} videos, {report.frames} frames, "
            f"{sum(report.tracks.values())} tracks in frames.{report.label_field} ({report.seconds:.1f} s)")
    if report.skipped:
        text += f"; {len(report.skipped)} already done"
    if report.failed:
        text += "; failed: " + "; ".join(report.failed.values())
    return text
