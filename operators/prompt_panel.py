"""``sam_prompts``: a sample-modal panel to click SAM prompts on a video frame.

The Annotate tab has no point tool on video; here the user picks a frame, then clicks on
it: a click on the object (or not on it), or two clicks for a box, for the object id they
choose. Each click is stored at once as a label (``click_prompts``: Keypoints in
``frames.sam_points``, Detections in ``frames.sam_boxes``), so it shows in the modal and a
"Segment" run reads it like any drawn prompt. Thin: no decoding or label logic here.
"""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from sam_backend.errors import SamError
from sam_backend.fiftyone_io.annotate import DEFAULT_BOXES_FIELD
from sam_backend.fiftyone_io.click_prompts import (
    DEFAULT_POINTS_FIELD,
    FrameImage,
    FramePrompts,
    add_box,
    add_click,
    frame_image,
    prompts_on_frame,
    remove_label,
)
from sam_backend.fiftyone_io.video_info import sample_video

MODES = {"pos": "click on the object", "neg": "click NOT on the object", "box": "box: two corners"}
# One colour per object id (cycled), so clicks and boxes of one object match.
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
HELP = ("Pick a frame, an object id and a mode, then click on the frame. Each click is saved "
        f"at once (clicks in frames.{DEFAULT_POINTS_FIELD}, boxes in frames.{DEFAULT_BOXES_FIELD}); "
        "then press Segment.")


class PromptPanel(foo.Panel):
    @property
    def config(self) -> foo.PanelConfig:
        return foo.PanelConfig(name="sam_prompts", label="SAM prompts", surfaces="modal", icon="ads_click",
                               help_markdown=HELP)

    # -- events -------------------------------------------------------------------------

    def on_load(self, ctx: Any) -> None:
        state = ctx.panel.state
        state.frame = state.frame or 1
        if not state.options:  # the mode / object id / name row (its inputs live under "options.")
            state.options = {"mode": "pos", "object_id": 1, "name": ""}
        state.corner = None
        state.history = []
        self._draw(ctx)

    def on_change_current_sample(self, ctx: Any) -> None:
        ctx.panel.state.frame = 1
        self.on_load(ctx)

    def on_frame(self, ctx: Any) -> None:
        ctx.panel.state.frame = int(ctx.params.get("value") or 1)
        ctx.panel.state.corner = None
        self._draw(ctx)

    def on_option(self, ctx: Any) -> None:
        # A new mode or object starts a new box. An event that changes neither (a name typed,
        # or the App's late echo of an edit made before the first corner) keeps the corner.
        state = ctx.panel.state
        mode, object_id, _ = _choices(state)
        if state.corner and (mode != "box" or state.corner_for != object_id):
            state.corner = None
        self._draw(ctx)

    def on_click(self, ctx: Any) -> None:
        state = ctx.panel.state
        sample = self._sample(ctx)
        point = _clicked_pixel(ctx.params, state.get("scale") or 1.0)
        if sample is None or point is None:
            return
        x, y = point
        mode, object_id, name = _choices(state)
        try:
            if mode == "box":
                if not state.corner or state.corner_for != object_id:
                    state.corner, state.corner_for = [x, y], object_id
                else:
                    label_id = add_box(sample, state.frame, (*state.corner, x, y), object_id=object_id, name=name)
                    state.corner = None
                    state.history = [*(state.history or []), [DEFAULT_BOXES_FIELD, state.frame, label_id]]
            else:
                label_id = add_click(sample, state.frame, x, y, positive=mode != "neg", object_id=object_id, name=name)
                state.history = [*(state.history or []), [DEFAULT_POINTS_FIELD, state.frame, label_id]]
        except SamError as exc:
            state.corner = None
            ctx.ops.notify(str(exc), variant="error")
        self._draw(ctx)

    def undo(self, ctx: Any) -> None:
        history = list(ctx.panel.state.history or [])
        sample = self._sample(ctx)
        if history and sample is not None:
            field, frame, label_id = history.pop()
            remove_label(sample, frame, field, label_id)
            ctx.panel.state.frame = frame
        ctx.panel.state.history = history
        ctx.panel.state.corner = None
        self._draw(ctx)

    def clear_frame(self, ctx: Any) -> None:
        sample = self._sample(ctx)
        if sample is not None:
            found = prompts_on_frame(sample, ctx.panel.state.frame)
            for *_, label_id in found.points:
                remove_label(sample, ctx.panel.state.frame, DEFAULT_POINTS_FIELD, label_id)
            for *_, label_id in found.boxes:
                remove_label(sample, ctx.panel.state.frame, DEFAULT_BOXES_FIELD, label_id)
        ctx.panel.state.corner = None
        self._draw(ctx)

    def segment(self, ctx: Any) -> None:
        """Open the Segment form with the clicked prompt fields chosen."""
        ctx.prompt("@sam31/video/segment_video", params={"prompt_fields": [DEFAULT_POINTS_FIELD, DEFAULT_BOXES_FIELD]})

    # -- rendering ----------------------------------------------------------------------

    def _sample(self, ctx: Any) -> Any:
        if ctx.dataset is None or ctx.dataset.media_type != "video" or not ctx.current_sample:
            return None
        return ctx.dataset[ctx.current_sample]

    def _draw(self, ctx: Any) -> None:
        """Decode the chosen frame and overlay its prompts (kept in panel data, not state:
        the image is the panel's biggest payload)."""
        state = ctx.panel.state
        sample = self._sample(ctx)
        state.error = None
        if sample is None:
            state.error = "Open a video sample: this panel works on the video shown in the modal."
            return
        try:
            image = frame_image(sample, state.frame)
        except SamError as exc:
            state.error = str(exc)
            return
        state.scale, state.width, state.height = image.scale, image.width, image.height
        state.frame_count = sample_video(sample).frame_count  # decoded frames, not the container's count
        prompts = prompts_on_frame(sample, state.frame)
        ctx.panel.data.frame_plot = _traces(image, prompts, state.corner)
        state.summary = _summary(prompts, state)

    def render(self, ctx: Any) -> types.Property:
        panel = types.Object()
        state = ctx.panel.state
        if state.error:
            panel.md(state.error, name="error")
            return types.Property(panel, view=types.GridView(orientation="vertical"))
        panel.int("frame", label=f"Frame (1-{state.frame_count})", min=1, max=state.frame_count, default=1,
                  view=types.SliderView(componentsProps={"slider": {"step": 1}}), on_change=self.on_frame)
        row = panel.h_stack("options", gap=2)
        modes = types.RadioGroup(orientation="horizontal")
        for value, label in MODES.items():
            modes.add_choice(value, label=label)
        row.enum("mode", modes.values(), default="pos", view=modes, on_change=self.on_option)
        row.int("object_id", label="Object id", default=1, min=0, on_change=self.on_option)
        row.str("name", label="Object name (optional)", on_change=self.on_option)
        panel.plot("frame_plot", layout=_layout(state), config={"displayModeBar": False, "scrollZoom": False},
                   on_click=self.on_click)
        panel.md(state.summary or "", name="summary")
        buttons = panel.h_stack("buttons", gap=1)
        buttons.btn("undo", label="Undo last click", on_click=self.undo)
        buttons.btn("clear_frame", label="Clear this frame", on_click=self.clear_frame)
        buttons.btn("segment", label="Segment with these prompts", variant="contained", on_click=self.segment)
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=1))


def _choices(state: Any) -> tuple[str, int, str | None]:
    """Mode, object id and optional object name from the options row."""
    object_id = state.get("options.object_id")
    name = (state.get("options.name") or "").strip() or None
    return state.get("options.mode") or "pos", int(object_id if object_id is not None else 1), name


def _clicked_pixel(params: dict[str, Any], scale: float) -> tuple[int, int] | None:
    """Video pixel of a click on the image trace: the App sends the image pixel as
    ``idx`` = [row, col] (image traces have no x/y in the App's click payload)."""
    idx = params.get("idx")
    if not (isinstance(idx, list) and len(idx) == 2):
        return None
    row, col = idx
    return int(col * scale + (scale - 1) / 2), int(row * scale + (scale - 1) / 2)


def _traces(image: FrameImage, prompts: FramePrompts, corner: list[int] | None) -> list[dict[str, Any]]:
    s = image.scale
    traces: list[dict[str, Any]] = [{
        "type": "image", "source": image.data_uri, "x0": (s - 1) / 2, "y0": (s - 1) / 2, "dx": s, "dy": s,
        "hovertemplate": "x=%{x:.0f} y=%{y:.0f}<extra></extra>", "name": "frame",
    }]
    for x0, y0, x1, y1, oid, _ in prompts.boxes:  # pixel edges, in pixel-centre coordinates
        xs, ys = [x0 - .5, x1 - .5, x1 - .5, x0 - .5, x0 - .5], [y0 - .5, y0 - .5, y1 - .5, y1 - .5, y0 - .5]
        traces.append({"type": "scatter", "mode": "lines", "x": xs, "y": ys, "hoverinfo": "skip", "showlegend": False,
                       "line": {"color": _colour(oid), "width": 2}, "name": f"box {oid}"})
    for positive in (True, False):
        pts = [p for p in prompts.points if p[2] is positive]
        if pts:
            traces.append({"type": "scatter", "mode": "markers", "x": [p[0] for p in pts], "y": [p[1] for p in pts],
                           "hoverinfo": "skip", "showlegend": False, "name": "on" if positive else "not on",
                           "marker": {"size": 11, "symbol": "circle" if positive else "x",
                                      "color": [_colour(p[3]) for p in pts], "line": {"color": "white", "width": 1.5}}})
    if corner:
        traces.append({"type": "scatter", "mode": "markers", "x": [corner[0]], "y": [corner[1]], "hoverinfo": "skip",
                       "showlegend": False, "name": "corner", "marker": {"size": 14, "symbol": "cross-thin-open",
                                                                          "line": {"color": "orange", "width": 2}}})
    return traces


def _layout(state: Any) -> dict[str, Any]:
    width, height = state.width or 1, state.height or 1
    return {
        "xaxis": {"range": [-0.5, width - 0.5], "visible": False, "fixedrange": True},
        "yaxis": {"range": [height - 0.5, -0.5], "visible": False, "fixedrange": True, "scaleanchor": "x"},
        "margin": {"l": 0, "r": 0, "t": 0, "b": 0}, "dragmode": False, "hovermode": "closest",
    }


def _summary(prompts: FramePrompts, state: Any) -> str:
    pos = sum(1 for p in prompts.points if p[2])
    text = (f"Frame {state.frame}: {pos} click(s) on, {len(prompts.points) - pos} not on, "
            f"{len(prompts.boxes)} box(es).")
    if state.corner:
        text += f" First corner at ({state.corner[0]}, {state.corner[1]}): click the opposite corner."
    return text


def _colour(object_id: int | None) -> str:
    return COLOURS[(object_id or 0) % len(COLOURS)]
