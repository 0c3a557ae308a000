"""``prepare_prompts``: one click to get frame fields ready for drawing SAM prompts in the App.

Thin by design: the form names the two fields and the optional object names,
``execute`` calls :func:`prepare_prompt_fields`, then (run from the App) reloads the dataset
and opens the current (or first) video in the modal's Annotate tab with FiftyOne's built-in
``annotate`` operator. No HTTP, no torch here.
"""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from sam_backend.errors import InvalidRequest
from sam_backend.fiftyone_io.annotate import (
    DEFAULT_BOXES_FIELD,
    DEFAULT_CLICKS_FIELD,
    PreparedPromptFields,
    check_prompt_fields,
    prepare_prompt_fields,
)

HOW_TO = (
    "In the sample modal's Annotate tab: draw a box around an object (class = its name) on any "
    "frame; draw a polyline whose vertices are clicks (class 'pos' on the object, 'neg' off it). "
    "Only the frames you draw on count (the App's 30-frame track copies are ignored). Set 'index' "
    "to give several labels the same object id. Then run 'Segment with SAM 3.1' with these fields."
)


def _fields(params: dict[str, Any]) -> dict[str, Any]:
    """Form/SDK params -> prepare_prompt_fields keywords; blanks take its defaults."""
    classes = params.get("classes") or None
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()] or None
    return {
        "boxes_field": params.get("boxes_field") or DEFAULT_BOXES_FIELD,
        "clicks_field": params.get("clicks_field") or DEFAULT_CLICKS_FIELD,
        "classes": classes,
    }


class PreparePrompts(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="prepare_prompts",
            label="Prepare SAM prompt fields for drawing",
            description="Create frame fields for boxes and clicks and open the Annotate tab to draw SAM 3.1 prompts",
            dynamic=True,
            # Seconds of work (metadata of missing samples at most), and opening the modal
            # only makes sense in the App session that asked: no delegation.
            allow_immediate_execution=True,
            allow_delegated_execution=False,
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        _prepare_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Prepare SAM prompt fields for drawing"))

    def execute(self, ctx: Any) -> dict[str, Any]:
        kwargs = _fields(ctx.params)
        try:
            done = prepare_prompt_fields(ctx.view, **kwargs)
        except InvalidRequest as exc:
            raise ValueError("; ".join(exc.problems)) from exc  # the App shows the message as is
        if getattr(ctx, "executor", None) is not None and not ctx.delegated:
            _open_for_drawing(ctx, done, open_annotate=ctx.params.get("open_annotate", True))
        return done.to_dict()

    def __call__(self, sample_collection: Any, *, boxes_field: str = DEFAULT_BOXES_FIELD,
                 clicks_field: str = DEFAULT_CLICKS_FIELD, classes: list[str] | None = None) -> Any:
        """SDK use: ``foo.get_operator("@sam31/video/prepare_prompts")(dataset, classes=["player"])``."""
        params = dict(boxes_field=boxes_field, clicks_field=clicks_field, classes=", ".join(classes or []),
                      open_annotate=False)  # classes as the form's comma-separated text
        return foo.execute_operator(self.uri, {"view": sample_collection.view(), "params": params})


def _prepare_inputs(ctx: Any, inputs: types.Object) -> None:
    inputs.view("how_to", types.Notice(label=HOW_TO))
    boxes = inputs.str("boxes_field", label="Boxes field (frames.<name>, Detections)", default=DEFAULT_BOXES_FIELD)
    clicks = inputs.str("clicks_field", label="Clicks field (frames.<name>, Polylines)", default=DEFAULT_CLICKS_FIELD)
    inputs.str("classes", label="Object names (optional)",
               description="Comma-separated, e.g. 'player, ball': the choices for a box's class (and extra choices "
                           "for clicks). Empty: type any class.")
    inputs.bool("open_annotate", label="Open a video in the Annotate tab", default=True)
    if ctx.dataset is None:
        return
    kwargs = _fields(ctx.params)
    problems = check_prompt_fields(ctx.dataset, boxes_field=kwargs["boxes_field"], clicks_field=kwargs["clicks_field"])
    if "dataset" in problems:
        inputs.view("not_video", types.Error(label=problems["dataset"]))
    for prop, key in ((boxes, "boxes_field"), (clicks, "clicks_field")):
        if key in problems:
            prop.invalid = True
            prop.error_message = problems[key]


def _open_for_drawing(ctx: Any, done: PreparedPromptFields, *, open_annotate: bool) -> None:
    """Reload the App's dataset, say what was done, open a video in the Annotate tab.

    FiftyOne's built-in ``annotate`` operator opens the modal and enters annotation mode for
    one field (the boxes). The App reads label schemas when the page loads: for fields this
    run created, the clicks (polyline) tool stays greyed out until the page is reloaded.
    """
    ctx.trigger("reload_dataset")
    message = f"SAM prompts: {done.summary()}"
    if done.created or done.schemas_written:
        message += ". If the polyline (clicks) tool is greyed out, reload the page."
    ctx.trigger("notify", {"message": message, "variant": "success"})
    sample_id = (ctx.current_sample or _first_video_id(ctx)) if open_annotate else None
    if sample_id:
        ctx.trigger("annotate", {"id": sample_id, "field_path": done.boxes_field})


def _first_video_id(ctx: Any) -> str | None:
    view = ctx.view
    return view.first().id if len(view) else None
