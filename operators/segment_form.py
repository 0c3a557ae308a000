"""The segment_video form, and the one mapping from its params to SegmentOptions.

Defaults come from :class:`SegmentOptions` (never repeated here); the same mapping serves
the App form, ``execute`` and the SDK ``__call__``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import fiftyone.operators.types as types

from sam_backend.cost import dollars, fal_estimate
from sam_backend.errors import InvalidRequest
from sam_backend.fiftyone_io import SegmentOptions
from sam_backend.fiftyone_io.writer import check_label_field, labels_not_ours
from sam_backend.types import FrameRange, SegmentRequest, split_concepts

DEFAULTS = SegmentOptions()
BACKENDS = {
    "fal": "fal: hosted SAM 3.1, billed per frame (needs FAL_KEY)",
    "local": "local: SAM 3.1 / SAM 3 on this machine's GPU, or SAM 3 on CPU (transformers)",
    "emulator": "emulator: offline stand-in for fal (synthetic test videos only)",
}
PROMPT_LABEL_TYPES = ("Detections", "Detection", "Keypoints", "Keypoint", "Polylines", "Polyline")
LOCAL_OPTIONS = ("engine", "checkpoint", "model", "device", "chunk_size", "overlap", "offload")
FAL_OPTIONS = ("endpoint", "text_mode")
DEFAULT_FAL_ENDPOINT = "fal-ai/sam-3-1/video-rle"


_RUN_KEYS = ("label_field", "backend", "prompt", "detection_threshold", "max_num_objects", "min_mask_area",
             "min_track_frames", "concurrency", "point_prompts", "box_prompts", "prompt_fields", "run_key",
             "render_video", "overwrite", "max_usd")
# Every param the form and execute read: what an SDK call (``__call__``) may pass.
KNOWN_PARAMS = frozenset((*_RUN_KEYS, *LOCAL_OPTIONS, *FAL_OPTIONS, "emulator_service_s", "frame_start", "frame_stop",
                          "frame_step", "mask_storage", "mask_dir", "refine", "refine_direction", "use_selection",
                          "delegate", "shards", "preview_frames", "view_target"))


def options_from_params(params: dict[str, Any], *, selected_labels: list[dict[str, Any]] | None = None) -> SegmentOptions:
    """Form/SDK params -> options; params not given take SegmentOptions' defaults."""
    fields: dict[str, Any] = {}
    for key in _RUN_KEYS:
        if params.get(key) not in (None, ""):
            fields[key] = params[key]
    backend = params.get("backend") or DEFAULTS.backend
    allowed = LOCAL_OPTIONS if backend == "local" else FAL_OPTIONS  # the emulator is the fal backend on loopback
    backend_options = {k: params[k] for k in allowed if params.get(k) not in (None, "", "auto")}
    if backend == "emulator" and params.get("emulator_service_s"):
        backend_options["emulator"] = {"service_time_s": float(params["emulator_service_s"])}
    if backend_options:
        fields["backend_options"] = backend_options
    if any(params.get(k) not in (None, "") for k in ("frame_start", "frame_stop", "frame_step")):
        fields["frames"] = FrameRange(start=params.get("frame_start") or 0, stop=params.get("frame_stop") or None,
                                      step=params.get("frame_step") or 1)
    if params.get("mask_storage") == "disk":
        if not params.get("mask_dir"):
            raise InvalidRequest("mask_dir: give a folder for the mask PNGs (masks stored on disk)")
        if not Path(params["mask_dir"]).expanduser().is_absolute():  # the App server would read it from its own cwd
            raise InvalidRequest(f"mask_dir {params['mask_dir']!r}: give an absolute folder on the server's disk")
        fields["mask_dir"] = params["mask_dir"]
    chosen = selected_labels or []
    refine_from = [s for s in chosen if str(s.get("field", "")).removeprefix("frames.") == (params.get("label_field") or DEFAULTS.label_field)]
    if params.get("refine"):
        if len(refine_from) != 1:
            raise InvalidRequest("refine: select exactly one label of the track to fix, in the output field, on the fixed frame")
        if refine_from[0].get("_index") is None:
            raise InvalidRequest("refine: the selected label has no track index")
        fields.update(refine_track=refine_from[0]["_index"], refine_frame=refine_from[0]["frame_number"],
                      refine_direction=params.get("refine_direction") or "forward")
    elif params.get("use_selection") and chosen:
        fields["selected_labels"] = chosen
    return SegmentOptions.build(**fields)


def new_run_key() -> str:
    return uuid.uuid4().hex


def build_inputs(ctx: Any, inputs: types.Object) -> None:
    inputs.view_target(ctx)
    view = ctx.target_view()
    params = ctx.params
    _prompt_inputs(ctx, inputs)
    _backend_inputs(ctx, inputs)
    _output_inputs(ctx, inputs)
    _run_inputs(ctx, inputs, view)
    try:
        options_from_params(params, selected_labels=selection(ctx))
    except InvalidRequest as exc:
        inputs.view("options_error", types.Error(label="Check these settings", description="; ".join(exc.problems)))


def selection(ctx: Any) -> list[dict[str, Any]]:
    """ctx.selected_labels, each with ``_index``: the track id of the label (for refine)."""
    out = []
    for item in ctx.selected_labels or []:
        item = dict(item)
        field, number = str(item.get("field", "")).removeprefix("frames."), item.get("frame_number")
        if ctx.dataset is not None and number is not None and ctx.dataset.has_frame_field(field):
            frame = ctx.dataset[item["sample_id"]].frames[number]
            value = frame[field] if frame.has_field(field) else None
            for label in getattr(value, "detections", None) or []:
                if label.id == item.get("label_id"):
                    item["_index"] = label.index
        out.append(item)
    return out


def _prompt_inputs(ctx: Any, inputs: types.Object) -> None:
    params = ctx.params
    inputs.view("prompts_header", types.Header(label="What to track"))
    prompt = inputs.str("prompt", label="Text prompt", description="Comma-separated concepts, e.g. 'player, ball'")
    if params.get("prompt"):
        try:
            SegmentOptions.build(prompt=params["prompt"]).request()
        except InvalidRequest as exc:
            prompt.invalid = True
            prompt.error_message = "; ".join(exc.problems)
    fields = _prompt_field_choices(ctx)
    if fields:
        choices = types.AutocompleteView()
        for name, count in fields.items():
            choices.add_choice(name, label=f"{name} ({count} labels)")
        default = [f for f in ("sam_boxes", "sam_clicks", "sam_points") if fields.get(f)]
        inputs.list("prompt_fields", types.String(), default=default, label="Prompts from label fields",
                    description="Boxes (Detections) and clicks (Keypoints, Polylines) on their frames; one object per index or class",
                    view=choices)
    selected = ctx.selected_labels or []
    if selected:
        inputs.bool("use_selection", default=True, label=f"Use the {len(selected)} selected label(s) as prompts")
        inputs.bool("refine", default=False, label="Refine: re-run only the selected track from its frame",
                    description="Select the (corrected) label of one track in the output field on the frame to fix from")
        if params.get("refine"):
            direction = types.RadioGroup()
            for value in ("forward", "backward", "both"):
                direction.add_choice(value, label=value)
            inputs.enum("refine_direction", direction.values(), default="forward", view=direction, label="Direction")
    point = types.Object()
    point.int("x", required=True, label="x (px)")
    point.int("y", required=True, label="y (px)")
    point.enum("label", [1, 0], default=1, label="1 = on the object, 0 = not")
    point.int("object_id", label="object id")
    point.int("frame_index", default=0, label="frame index (0-based: the SAM prompts panel's frame n is n - 1)")
    inputs.list("point_prompts", point, label="Clicks", description="Optional point prompts in pixels")
    box = types.Object()
    for key in ("x_min", "y_min", "x_max", "y_max"):
        box.int(key, required=True, label=f"{key} (px)")
    box.int("object_id", label="object id")
    box.int("frame_index", default=0, label="frame index (0-based: the SAM prompts panel's frame n is n - 1)")
    inputs.list("box_prompts", box, label="Boxes", description="Optional box prompts in pixels")
    inputs.view("prompt_counts", types.Notice(label=_prompt_counts(ctx, fields)))


def _prompt_field_choices(ctx: Any) -> dict[str, int]:
    if ctx.dataset is None or ctx.dataset.media_type != "video":
        return {}
    out = {}
    view = ctx.target_view()
    for name, field in (view.get_frame_field_schema() or {}).items():  # the view's: it may exclude fields
        doc_type = getattr(getattr(field, "document_type", None), "__name__", "")
        if doc_type in PROMPT_LABEL_TYPES:
            path = {"Detections": "detections", "Keypoints": "keypoints", "Polylines": "polylines"}.get(doc_type)
            out[name] = view.count(f"frames.{name}.{path}" if path else f"frames.{name}")
    return out


def _prompt_counts(ctx: Any, fields: dict[str, int]) -> str:
    """The form's summary line; ``fields`` = label counts per prompt field (counted once per form render)."""
    params = ctx.params
    parts = []
    if (params.get("prompt") or "").strip():
        parts.append(f"{len([c for c in split_concepts(params['prompt']) if c])} concept(s)")
    if params.get("point_prompts"):
        parts.append(f"{len(params['point_prompts'])} typed click(s)")
    if params.get("box_prompts"):
        parts.append(f"{len(params['box_prompts'])} typed box(es)")
    for name in params.get("prompt_fields") or []:
        parts.append(f"{fields.get(name, 0)} label(s) in frames.{name}")
    if params.get("use_selection") and ctx.selected_labels:
        parts.append(f"{len(ctx.selected_labels)} selected label(s)")
    return "Prompts: " + (", ".join(parts) if parts else "none yet")


def _backend_inputs(ctx: Any, inputs: types.Object) -> None:
    params = ctx.params
    inputs.view("backend_header", types.Header(label="Where SAM runs"))
    choices = types.RadioGroup()
    for value, label in BACKENDS.items():
        choices.add_choice(value, label=label)
    inputs.enum("backend", choices.values(), default=DEFAULTS.backend, label="Backend", view=choices)
    backend = params.get("backend") or DEFAULTS.backend
    if backend == "fal":
        if not ctx.secret("FAL_KEY"):
            inputs.view("no_key", types.Warning(label="FAL_KEY is not set",
                                                description="Set the FAL_KEY secret (environment variable) or pick the emulator."))
        inputs.str("endpoint", default=DEFAULT_FAL_ENDPOINT, label="fal endpoint (clicks and boxes)",
                   description="An RLE endpoint returns masks; fal-ai/sam-3-1/video returns only a rendered video")
        modes = types.RadioGroup()
        modes.add_choice("instances", label="instances: a track per person/dog/... (SAM 3, one request per concept)")
        modes.add_choice("union", label="union: one track per concept, all its instances together (SAM 3.1)")
        inputs.enum("text_mode", modes.values(), default="instances", view=modes, label="Text concepts",
                    description="fal's SAM 3.1 endpoint returns one mask per frame for everything it finds, so "
                                "separate instances come from SAM 3's per-object endpoint")
    if backend in ("fal", "emulator"):
        inputs.int("concurrency", default=DEFAULTS.concurrency, min=1, max=64, label="Videos at once")
    if backend == "emulator":
        inputs.float("emulator_service_s", default=0.0, min=0.0, label="Emulated model time per video (s)",
                     description="Slow the stand-in model down to watch progress and try cancel")
    if backend == "local":
        engines = types.Dropdown()
        for value in ("sam3.1", "sam3", "transformers"):
            engines.add_choice(value, label=value)
        inputs.enum("engine", engines.values(), default="sam3.1", view=engines, label="Engine",
                    description="sam3.1 / sam3: Meta's predictor on CUDA; transformers: SAM 3 on CPU or GPU")
        if (params.get("engine") or "sam3.1") == "transformers":  # each engine reads only its own
            inputs.str("model", label="Model id or folder (transformers)", description="Defaults to $SAM31_LOCAL_MODEL")
        else:
            inputs.str("checkpoint", label="Checkpoint folder or file (Meta engines)",
                       description="Defaults to $SAM31_LOCAL_CHECKPOINT")
        devices = types.Dropdown()
        for value in ("auto", "cuda", "cpu"):
            devices.add_choice(value, label=value)
        inputs.enum("device", devices.values(), default="auto", view=devices, label="Device")
        inputs.int("chunk_size", default=200, min=16, label="Chunk size (frames)")
        inputs.int("overlap", default=24, min=16, label="Chunk overlap (frames)")
        inputs.bool("offload", default=False, label="Offload video and state to CPU memory")


# What the detection threshold does, per backend / local engine (it is not the same knob).
_THRESHOLD_HELP = {
    "sam3.1": "SAM 3.1: objects whose detection score is below it are not output (the predictor's output "
              "threshold); clicked and boxed objects are always kept.",
    "sam3": "SAM 3: its predictor ignores the threshold, so this plugin drops text-prompt objects scoring below "
            "it; clicked and boxed objects are always kept.",
    "transformers": "SAM 3 (transformers): the detector's score threshold for new objects (the threshold for "
                    "starting a track keeps the model's margin above it); clicked and boxed objects are always kept.",
}


def _threshold_help(params: dict[str, Any]) -> str:
    backend = params.get("backend") or DEFAULTS.backend
    if backend == "local":
        return _THRESHOLD_HELP[params.get("engine") or "sam3.1"]
    return ("fal: sent as the endpoint's detection threshold (0.01 to 1); text-prompt objects scoring below it are "
            "not found.")


def _output_inputs(ctx: Any, inputs: types.Object) -> None:
    params = ctx.params
    inputs.view("output_header", types.Header(label="Output"))
    field = inputs.str("label_field", label="Output frame field", default=DEFAULTS.label_field, required=True)
    name = params.get("label_field") or DEFAULTS.label_field
    valid = True
    if ctx.dataset is not None and ctx.dataset.media_type == "video":
        try:  # flagged here, not only at Execute (e.g. 'frames.sam2', 'x$', a field of another type)
            check_label_field(ctx.dataset, name)
        except ValueError as exc:
            field.invalid, field.error_message, valid = True, str(exc), False
    if valid and ctx.dataset is not None and ctx.dataset.has_frame_field(name) and not params.get("refine"):
        held = labels_not_ours(ctx.dataset, name)
        if held:
            inputs.view("replace_note", types.Warning(
                label=f"frames.{name} holds labels on {held:,} frame{'s' if held != 1 else ''} that sam31-video did not write",
                description="A run replaces them on the target videos only if you tick the box below; "
                            "otherwise it is refused. Pick another field to keep them."))
            inputs.bool("overwrite", default=False, label=f"Replace the labels in frames.{name}")
        else:
            inputs.view("replace_note", types.Warning(label=f"frames.{name} exists and will be replaced on the target videos"))
    remote = (params.get("backend") or DEFAULTS.backend) != "local"  # fal's endpoints take 0.01..1
    inputs.float("detection_threshold", label="Detection threshold", default=DEFAULTS.detection_threshold,
                 min=0.01 if remote else 0.0, max=1.0, description=_threshold_help(params))
    inputs.int("max_num_objects", label="Max objects", default=DEFAULTS.max_num_objects, min=1, max=128,
               description="per text concept (each is capped on its own), and for the objects named by clicks and boxes")
    inputs.int("min_mask_area", label="Drop masks smaller than (pixels)", default=DEFAULTS.min_mask_area, min=0)
    inputs.int("min_track_frames", label="Drop tracks shorter than (frames)", default=DEFAULTS.min_track_frames, min=1)
    inputs.int("frame_start", label="First frame (0-based)", min=0)
    inputs.int("frame_stop", label="Stop before frame (0-based, empty = end)", min=1)
    inputs.int("frame_step", label="Every Nth frame", min=1)
    storage = types.RadioGroup()
    storage.add_choice("database", label="in the database")
    storage.add_choice("disk", label="PNG files on disk (big videos)")
    inputs.enum("mask_storage", storage.values(), default="database", view=storage, label="Masks")
    if params.get("mask_storage") == "disk":
        inputs.str("mask_dir", required=True, label="Mask folder")
    inputs.bool("render_video", default=False, label="Keep the rendered overlay video (URL stored on each sample)")


def _run_inputs(ctx: Any, inputs: types.Object, view: Any) -> None:
    params = ctx.params
    inputs.view("run_header", types.Header(label="Run"))
    inputs.int("preview_frames", default=0, min=0, label="Preview: first N frames of the first video only (0 = off)",
               description="Writes to <field>_preview and opens that video")
    inputs.int("shards", default=1, min=1, max=64, label="Split into N delegated operations",
               description="For many videos: each shard can run on its own `fiftyone delegated launch` worker")
    inputs.bool("delegate", default=False, label="Run in the background (delegated)")
    if (params.get("backend") or DEFAULTS.backend) in ("fal", "emulator"):
        inputs.float("max_usd", min=0.0, label="Refuse the run if its estimate is above (USD, empty = no cap)",
                     description="Checked against the full estimate before anything is sent, prompts from labels "
                                 "included")
    inputs.view("cost", types.Notice(label=cost_line(view, params)))


def cost_line(view: Any, params: dict[str, Any]) -> str:
    """What the run will cost, from FiftyOne's metadata (exact once metadata exists)."""
    backend = params.get("backend") or DEFAULTS.backend
    per_video = _frames_per_video(view, params)
    if params.get("preview_frames") and per_video:
        first = per_video[0]
        per_video = [params["preview_frames"] if first is None else min(first, params["preview_frames"])]
    unknown = sum(1 for n in per_video if n is None)
    known = [n for n in per_video if n is not None]
    scope = f"{len(per_video)} video(s), {sum(known)} frames" + (f" (+{unknown} without metadata yet)" if unknown else "")
    if backend == "emulator":
        return f"Cost: {scope}, no charge (emulator)"
    if backend == "local":
        return f"Cost: {scope} on this machine: no fee, time depends on the GPU"
    endpoint = params.get("endpoint") or DEFAULT_FAL_ENDPOINT
    try:  # every fal request a video takes: one per clicked/boxed object, one per concept
        request = SegmentRequest.build(prompt=params.get("prompt") or "", point_prompts=params.get("point_prompts") or [],
                                       box_prompts=params.get("box_prompts") or [])
    except InvalidRequest:
        request = SegmentRequest.build(prompt="object")  # prompts still being typed: price one request
    estimates = [fal_estimate(request, n, endpoint=endpoint, text_mode=params.get("text_mode") or "instances")
                 for n in known]
    if any(usd is None for usd, _ in estimates):
        return f"Cost: {scope} on fal; {estimates[0][1]}"
    detail = estimates[0][1] if estimates else ""
    line = (f"Cost: {scope} on fal: about {dollars(sum(usd or 0 for usd, _ in estimates))}"
            + (" so far" if unknown else "") + (f" ({detail} per video)" if detail else ""))
    if params.get("prompt_fields") or params.get("use_selection") or params.get("refine"):
        # Read per video from its labels at run time; the run prints its own estimate before sending.
        line += ("; not counted: prompts read from labels (one request per object they name) and a refine's "
                 "shorter range. The run logs its full estimate before anything is sent")
    return line


def _frames_per_video(view: Any, params: dict[str, Any]) -> list[int | None]:
    start, stop, step = params.get("frame_start") or 0, params.get("frame_stop"), params.get("frame_step") or 1
    return [None if c is None else len(range(start, min(stop, c) if stop else c, step))
            for c in view.values("metadata.total_frame_count")]
