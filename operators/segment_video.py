"""``segment_video``: segment and track objects in the target videos with SAM 3.1.

Thin by design: the form (segment_form.py) collects :class:`SegmentOptions`, ``execute``
runs :func:`segment_videos` and turns its progress into App progress. No HTTP, no torch.
Three ways to run: a preview on the first frames of one video, a normal run (immediate or
delegated), or a sharded run that queues one delegated operation per slice of the videos.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from sam_backend.backends.base import CancelToken
from sam_backend.errors import SamError
from sam_backend.fiftyone_io import SampleProgress, SegmentOptions, SegmentReport, segment_videos
from sam_backend.types import FrameRange

from .segment_form import DEFAULTS, build_inputs, new_run_key, options_from_params, selection

# How often a delegated run checks whether its operation was marked failed/cancelled.
WATCH_INTERVAL_S = 2.0


class SegmentVideo(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="segment_video",
            label="Segment with SAM 3.1",
            description="Segment and track objects in videos from text, clicks, boxes or existing labels",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        build_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Segment with SAM 3.1"))

    def resolve_delegation(self, ctx: Any) -> bool | None:
        return ctx.params.get("delegate", None)

    def execute(self, ctx: Any) -> Iterator[Any]:
        try:
            options = options_from_params(ctx.params, selected_labels=selection(ctx))
        except SamError as exc:
            yield from _failed(ctx, exc)
        view = ctx.target_view()
        if (ctx.params.get("shards") or 1) > 1 and not options.run_key:
            yield from self._queue_shards(ctx, view, options)
            return
        preview = ctx.params.get("preview_frames") or 0
        if preview:
            view = view.limit(1)
            options = options.model_copy(update={"frames": FrameRange(stop=preview),
                                                 "label_field": f"{options.label_field}_preview"})
        report = yield from _run(ctx, view, options)
        yield ctx.trigger("reload_dataset")
        yield ctx.trigger("notify", {"message": summary(report), "variant": "warning" if report.failed else "success"})
        if preview and report.done:
            yield ctx.trigger("open_sample", {"id": report.done[0]})

    def _queue_shards(self, ctx: Any, view: Any, options: SegmentOptions) -> Iterator[Any]:
        """One delegated operation per slice of the videos, sharing a run key, so any number
        of `fiftyone delegated launch` workers share the work and a re-queued shard skips
        what it already wrote."""
        ids = view.values("id")
        shards = min(ctx.params["shards"], len(ids))
        run_key = new_run_key()
        params = {k: v for k, v in ctx.params.items() if k not in ("shards", "view_target", "delegate")}
        queued = []
        for i in range(shards):
            part = ids[i::shards]
            result = foo.execute_operator(
                self.uri, {"view": view.select(part), "params": {**params, "run_key": run_key, "shards": 1}},
                request_delegation=True,
            )
            queued.append(str(result.result.get("id")) if isinstance(result.result, dict) else str(result.result))
        yield ctx.trigger("notify", {
            "message": f"Queued {shards} delegated operations over {len(ids)} videos (run key {run_key}); "
                       "start workers with `fiftyone delegated launch`",
            "variant": "info",
        })

    def __call__(self, sample_collection: Any, prompt: str = "", *, delegate: bool = False, **params: Any) -> Any:
        """SDK use: ``foo.get_operator("@sam31/video/segment_video")(view, "person, dog",
        backend="fal", label_field="sam", delegate=True)``; any form param is a keyword."""
        params = {"prompt": prompt, "delegate": delegate, **params}
        return foo.execute_operator(self.uri, {"view": sample_collection.view(), "params": params},
                                    request_delegation=delegate)


def _failed(ctx: Any, exc: BaseException) -> Iterator[Any]:
    if not ctx.delegated:  # show it in the App before the stream ends with the error
        yield ctx.trigger("notify", {"message": f"SAM 3.1: {exc}", "variant": "error"})
    raise RuntimeError(str(exc)) from exc


def _run(ctx: Any, view: Any, options: SegmentOptions) -> Iterator[Any]:
    """Run segment_videos on a worker thread; turn its progress into App progress here."""
    events: queue.Queue[SampleProgress | None] = queue.Queue()
    cancel = CancelToken()
    outcome: dict[str, Any] = {}
    secrets = {"FAL_KEY": ctx.secret("FAL_KEY")} if options.backend == "fal" and ctx.secret("FAL_KEY") else None

    def work() -> None:
        try:
            outcome["report"] = segment_videos(view, options, secrets=secrets, progress=events.put, cancel=cancel)
        except BaseException as exc:  # handed to the operator thread, re-raised there
            outcome["error"] = exc
        finally:
            events.put(None)

    worker = threading.Thread(target=work, name="sam31-segment", daemon=True)
    worker.start()
    watcher = _watch_delegated(ctx, cancel) if ctx.delegated else None
    try:
        while (event := events.get()) is not None:
            update = _progress_update(event)
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
        yield from _failed(ctx, exc)
    return outcome["report"]


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


def _progress_update(event: SampleProgress) -> dict[str, Any]:
    p = event.backend
    finished = event.done + event.failed
    label = f"{finished}/{event.sample_count} videos done"
    if event.failed:
        label += f" ({event.failed} failed)"
    label += f"; video {event.sample_index + 1}: {p.stage}"
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


__all__ = ["DEFAULTS", "SegmentVideo", "summary"]
