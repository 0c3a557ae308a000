"""``segment_video``: segment and track objects in the target videos with SAM 3.1.

Thin by design: the form collects :class:`SegmentOptions` fields, ``execute`` runs
:func:`segment_videos` and turns its progress into App progress. No HTTP, no torch here.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from sam_backend.backends.base import CancelToken
from sam_backend.errors import InvalidRequest, SamError
from sam_backend.fiftyone_io import SampleProgress, SegmentOptions, SegmentReport, segment_videos

DEFAULTS = SegmentOptions()
BACKENDS = {"fal": "fal (hosted SAM 3.1, needs FAL_KEY)", "emulator": "emulator (offline, synthetic videos only)"}
_FORM_FIELDS = ("label_field", "backend", "prompt", "detection_threshold", "max_num_objects")


def options_from_params(params: dict[str, Any]) -> SegmentOptions:
    """Form/SDK params -> options; missing params take SegmentOptions' defaults."""
    return SegmentOptions(**{k: params[k] for k in _FORM_FIELDS if params.get(k) is not None})


class SegmentVideo(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="segment_video",
            label="Segment with SAM 3.1",
            description="Segment and track objects in videos from a text prompt",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        _segment_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Segment with SAM 3.1"))

    def resolve_delegation(self, ctx: Any) -> bool | None:
        return ctx.params.get("delegate", None)

    def execute(self, ctx: Any) -> Iterator[Any]:
        options = options_from_params(ctx.params)
        view = ctx.target_view()
        events: queue.Queue[SampleProgress | None] = queue.Queue()
        cancel = CancelToken()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["report"] = segment_videos(
                    view, options, secrets=_secrets(ctx, options), progress=events.put, cancel=cancel
                )
            except BaseException as exc:  # handed to the operator thread, re-raised there
                outcome["error"] = exc
            finally:
                events.put(None)

        worker = threading.Thread(target=work, name="sam31-segment", daemon=True)
        worker.start()
        try:
            while (event := events.get()) is not None:
                update = _progress_update(event)
                if ctx.delegated:
                    ctx.set_progress(**update)
                else:
                    yield ctx.trigger("set_progress", update)
        finally:
            # Reached early only if the App went away mid-run (generator closed): stop the
            # run; the writer then discards the unfinished sample.
            if worker.is_alive():
                cancel.cancel()
            worker.join()
        if "error" in outcome:
            exc = outcome["error"]
            if not isinstance(exc, SamError):
                raise exc
            if not ctx.delegated:  # show it in the App before the stream ends with the error
                yield ctx.trigger("notify", {"message": f"SAM 3.1: {exc}", "variant": "error"})
            raise RuntimeError(str(exc)) from exc
        report: SegmentReport = outcome["report"]
        yield ctx.trigger("reload_dataset")
        yield ctx.trigger("notify", {"message": summary(report), "variant": "warning" if report.failed else "success"})

    def __call__(self, sample_collection: Any, prompt: str, *, label_field: str = DEFAULTS.label_field,
                 backend: str = DEFAULTS.backend, detection_threshold: float = DEFAULTS.detection_threshold,
                 max_num_objects: int = DEFAULTS.max_num_objects, delegate: bool = False) -> Any:
        """SDK use: ``foo.get_operator("@sam31/video/segment_video")(view, "person, dog")``."""
        params = dict(prompt=prompt, label_field=label_field, backend=backend,
                      detection_threshold=detection_threshold, max_num_objects=max_num_objects, delegate=delegate)
        return foo.execute_operator(self.uri, {"view": sample_collection.view(), "params": params},
                                    request_delegation=delegate)


def _segment_inputs(ctx: Any, inputs: types.Object) -> None:
    inputs.view_target(ctx)
    prompt = inputs.str("prompt", label="Prompt", required=True,
                        description="Comma-separated concepts to track, e.g. 'person, dog'")
    if ctx.params.get("prompt"):
        try:
            options_from_params(ctx.params).request()
        except InvalidRequest as exc:
            prompt.invalid = True
            prompt.error_message = "; ".join(exc.problems)
    backend_choices = types.RadioGroup()
    for value, label in BACKENDS.items():
        backend_choices.add_choice(value, label=label)
    inputs.enum("backend", backend_choices.values(), default=DEFAULTS.backend, label="Backend", view=backend_choices)
    if ctx.params.get("backend", DEFAULTS.backend) == "fal" and not ctx.secret("FAL_KEY"):
        inputs.view("no_key", types.Warning(label="FAL_KEY is not set",
                                            description="Set the FAL_KEY secret (environment variable) or pick the emulator."))
    field = inputs.str("label_field", label="Output frame field", default=DEFAULTS.label_field, required=True)
    name = ctx.params.get("label_field") or DEFAULTS.label_field
    if ctx.dataset is not None and ctx.dataset.has_frame_field(name):
        field.view = types.View()  # keep the field editable
        inputs.view("overwrite", types.Warning(label=f"frames.{name} exists and will be replaced on the target samples"))
    inputs.float("detection_threshold", label="Detection threshold", default=DEFAULTS.detection_threshold, min=0.0, max=1.0)
    inputs.int("max_num_objects", label="Max objects", default=DEFAULTS.max_num_objects, min=1, max=128)


def _secrets(ctx: Any, options: SegmentOptions) -> dict[str, str]:
    if options.backend != "fal":
        return {}
    key = ctx.secret("FAL_KEY")
    return {"FAL_KEY": key} if key else {}


def _progress_update(event: SampleProgress) -> dict[str, Any]:
    p = event.backend
    done = event.sample_index / max(1, event.sample_count)
    label = f"video {event.sample_index + 1}/{event.sample_count}: {p.stage}"
    if p.queue_position is not None:
        label += f" (queue position {p.queue_position})"
    elif p.message:
        label += f": {p.message}"
    return {"progress": done, "label": label}


def summary(report: SegmentReport) -> str:
    text = (f"SAM 3.1: {len(report.done)}/{report.samples} videos, {report.frames} frames, "
            f"{sum(report.tracks.values())} tracks in frames.{report.label_field} ({report.seconds:.1f} s)")
    if report.failed:
        text += "; failed: " + "; ".join(report.failed.values())
    return text
