"""``export_tracks``: export tracked masks of the target videos to COCO, YOLO, MOT/MOTS or
YouTube-VIS files.

Thin by design: the form collects :class:`ExportOptions` fields, ``execute`` iterates an
:class:`ExportRun` (a generator of progress events, so no thread is needed) and turns its
events into App progress. Closing the generator (the App went away) stops the export and
removes its half-written files.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from sam_backend.errors import InvalidRequest, SamError
from sam_backend.fiftyone_io.export import FORMATS, ExportOptions, ExportProgress, ExportReport, ExportRun, check_output_dir

DEFAULTS = ExportOptions()
_FORM_FIELDS = ("format", "label_field", "output_dir", "frames", "frame_stride", "coco_masks", "overwrite")
# The App gets at most this many progress updates per second (one per frame floods it).
_PROGRESS_INTERVAL_S = 0.25


def options_from_params(params: dict[str, Any]) -> ExportOptions:
    """Form/SDK params -> options; missing params take ExportOptions' defaults."""
    fields = {k: params[k] for k in _FORM_FIELDS if params.get(k) not in (None, "")}
    if fields.get("frames") == "default":
        fields.pop("frames")
    return ExportOptions.build(**fields)


class ExportTracks(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="export_tracks",
            label="Export tracks (COCO, YOLO, MOT/MOTS, YouTube-VIS)",
            description="Export tracked masks and boxes to the formats training and evaluation tools read",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        _export_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Export tracks"))

    def resolve_delegation(self, ctx: Any) -> bool | None:
        return ctx.params.get("delegate", None)

    def execute(self, ctx: Any) -> Iterator[Any]:
        report: ExportReport | None = None
        try:
            run = ExportRun(ctx.target_view(), options_from_params(ctx.params))
            last = 0.0
            for event in run:
                now = time.monotonic()
                if now - last < _PROGRESS_INTERVAL_S and event.frames_done < event.frames_total:
                    continue
                last = now
                update = _progress_update(event)
                if ctx.delegated:
                    ctx.set_progress(**update)
                else:
                    yield ctx.trigger("set_progress", update)
            report = run.report
        except SamError as exc:
            error = exc
        else:
            error = None
        if error is not None:
            if not ctx.delegated:  # show it in the App before the stream ends with the error
                yield ctx.trigger("notify", {"message": f"Export: {error}", "variant": "error"})
            raise RuntimeError(str(error)) from error
        assert report is not None
        yield ctx.trigger("notify", {"message": summary(report), "variant": "warning" if report.warnings else "success"})

    def __call__(self, sample_collection: Any, output_dir: str, fmt: str = DEFAULTS.format, *,
                 label_field: str = DEFAULTS.label_field, frame_stride: int = DEFAULTS.frame_stride,
                 frames: str | None = None, coco_masks: str = DEFAULTS.coco_masks, overwrite: bool = False,
                 delegate: bool = False) -> Any:
        """SDK use: ``foo.get_operator("@sam31/video/export_tracks")(view, "/tmp/out", "coco")``."""
        params = dict(format=fmt, label_field=label_field, output_dir=str(Path(output_dir).expanduser().resolve()),
                      frame_stride=frame_stride,
                      frames=frames, coco_masks=coco_masks, overwrite=overwrite, delegate=delegate)
        return foo.execute_operator(self.uri, {"view": sample_collection.view(), "params": params},
                                    request_delegation=delegate)


def _export_inputs(ctx: Any, inputs: types.Object) -> None:
    inputs.view_target(ctx)
    formats = types.Dropdown(label="Format")
    for value, label in FORMATS.items():
        formats.add_choice(value, label=label)
    inputs.enum("format", formats.values(), default=DEFAULTS.format, required=True, label="Format", view=formats)
    fmt = ctx.params.get("format") or DEFAULTS.format

    fields = _detections_fields(ctx.dataset)
    if fields:
        choices = types.Dropdown(label="Tracks field")
        for name in fields:
            choices.add_choice(name, label=f"frames.{name}")
        default = DEFAULTS.label_field if DEFAULTS.label_field in fields else fields[0]
        inputs.enum("label_field", choices.values(), default=default, required=True, label="Tracks field", view=choices)
    else:
        inputs.view("no_field", types.Warning(label="No frame field holds Detections",
                                              description="Segment the videos first (Segment with SAM 3.1)."))

    out = inputs.str("output_dir", label="Output folder", required=True,
                     description="A new or empty folder on the server's disk")
    if ctx.params.get("output_dir"):
        problems = check_output_dir(ctx.params["output_dir"], bool(ctx.params.get("overwrite")))
        if not Path(ctx.params["output_dir"]).expanduser().is_absolute():  # else: the App server's own cwd
            problems.insert(0, "give an absolute folder on the server's disk")
        if problems:
            out.invalid = True
            out.error_message = "; ".join(problems)
    inputs.bool("overwrite", default=False, label="Replace an earlier export in this folder")
    inputs.int("frame_stride", default=DEFAULTS.frame_stride, min=1, label="Frame stride",
               description="Export every n-th frame (1 = all)")

    if not fmt.startswith("yolo"):
        frames = types.RadioGroup()
        frames.add_choice("default", label="Format default")
        frames.add_choice("images", label="Frame images next to the labels")
        frames.add_choice("video", label="No images: refer to frames by video + frame index")
        inputs.enum("frames", frames.values(), default="default", label="Frames", view=frames)
    if fmt == "coco":
        masks = types.RadioGroup()
        masks.add_choice("rle", label="RLE (lossless)")
        masks.add_choice("polygons", label="Polygons (holes kept through keyhole cuts)")
        inputs.enum("coco_masks", masks.values(), default=DEFAULTS.coco_masks, label="COCO masks", view=masks)
    if ctx.params.get("output_dir") and fields:
        try:
            options_from_params(ctx.params)
        except InvalidRequest as exc:
            inputs.view("bad_options", types.Error(label="Cannot export with these settings",
                                                   description="; ".join(exc.problems)))


def _detections_fields(dataset: fo.Dataset | None) -> list[str]:
    if dataset is None or dataset.media_type != "video":
        return []
    schema = dataset.get_frame_field_schema() or {}
    return sorted(k for k, v in schema.items() if getattr(v, "document_type", None) is fo.Detections)


def _progress_update(event: ExportProgress) -> dict[str, Any]:
    label = (f"video {event.video_index + 1}/{event.video_count} ({event.video_name}): "
             f"{event.frames_done}/{event.frames_total} frames")
    return {"progress": event.fraction, "label": label}


def summary(report: ExportReport) -> str:
    text = f"Export {report.summary()} ({report.seconds:.1f} s)"
    if report.warnings:
        text += "; " + "; ".join(report.warnings)
    return text
