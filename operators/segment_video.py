"""``segment_video``: segment and track objects in the target videos with SAM 3.1.

Thin by design: the form (segment_form.py) collects :class:`SegmentOptions`, ``execute``
runs :func:`segment_videos` and turns its progress into App progress. No HTTP, no torch.
Three ways to run: a preview on the first frames of one video, a normal run (immediate or
delegated), or a sharded run that queues one delegated operation per slice of the videos.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from sam_backend.errors import InvalidRequest, SamError
from sam_backend.fiftyone_io import SegmentOptions, segment_videos
from sam_backend.types import FrameRange

from .run_progress import fail_in_app, run_with_progress, summary
from .segment_form import DEFAULTS, KNOWN_PARAMS, build_inputs, new_run_key, options_from_params, selection

def _secrets(ctx: Any, options: SegmentOptions) -> dict[str, str] | None:
    return {"FAL_KEY": ctx.secret("FAL_KEY")} if options.backend == "fal" and ctx.secret("FAL_KEY") else None


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
            yield from fail_in_app(ctx, exc)
        view = ctx.target_view()
        if options.refine_track is not None:  # one video's track: the selected label's video, or the modal's
            chosen = {s["sample_id"] for s in ctx.selected_labels or [] if s.get("sample_id")} or (
                {ctx.current_sample} if ctx.current_sample else set())
            view = view.select(sorted(chosen)) if chosen else view
        if (ctx.params.get("shards") or 1) > 1 and not options.run_key:
            yield from self._queue_shards(ctx, view, options)
            return
        preview = ctx.params.get("preview_frames") or 0
        if preview:
            view = view.limit(1)
            chosen = options.frames or FrameRange()  # the first frames of the chosen range, not of the video
            stop = chosen.start + preview * chosen.step
            options = options.model_copy(update={
                "frames": FrameRange(start=chosen.start, stop=stop if chosen.stop is None else min(stop, chosen.stop),
                                     step=chosen.step),
                "label_field": f"{options.label_field}_preview"})
        secrets = _secrets(ctx, options)
        report = yield from run_with_progress(
            ctx, lambda progress, cancel: segment_videos(view, options, secrets=secrets, progress=progress, cancel=cancel))
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
        if options.max_usd is not None:  # each shard checks only its own slice: check the whole run first
            try:
                segment_videos(view, options.model_copy(update={"dry_run": True}), secrets=_secrets(ctx, options))
            except SamError as exc:
                yield from fail_in_app(ctx, exc)
        run_key = new_run_key()
        params = {k: v for k, v in ctx.params.items() if k not in ("shards", "view_target", "delegate")}
        for i in range(shards):
            foo.execute_operator(
                self.uri, {"view": view.select(ids[i::shards]), "params": {**params, "run_key": run_key, "shards": 1}},
                request_delegation=True,
            )
        yield ctx.trigger("notify", {
            "message": f"Queued {shards} delegated operations over {len(ids)} videos (run key {run_key}); "
                       "start workers with `fiftyone delegated launch`",
            "variant": "info",
        })

    def __call__(self, sample_collection: Any, prompt: str = "", *, delegate: bool = False, **params: Any) -> Any:
        """SDK use: ``foo.get_operator("@sam31/video/segment_video")(view, "person, dog",
        backend="fal", label_field="sam", delegate=True)``; any form param is a keyword."""
        unknown = sorted(set(params) - KNOWN_PARAMS)
        if unknown:  # a typo such as label_feild= would otherwise write into the default field
            raise InvalidRequest(f"segment_video has no parameter {', '.join(unknown)}; "
                                 f"it takes {', '.join(sorted(KNOWN_PARAMS))}")
        if params.get("mask_dir"):  # relative to this process, as SDK paths are
            params["mask_dir"] = str(Path(params["mask_dir"]).expanduser().resolve())
        params = {"prompt": prompt, "delegate": delegate, **params}
        return foo.execute_operator(self.uri, {"view": sample_collection.view(), "params": params},
                                    request_delegation=delegate)


__all__ = ["DEFAULTS", "SegmentVideo"]
