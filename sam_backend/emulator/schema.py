"""The emulator's own copy of fal's input schemas, one per endpoint, and fal-shaped errors.

Deliberately separate from :mod:`sam_backend.types` and the client's endpoint table: the
emulator must judge what the client sends by fal's rules, not by the client's own models,
or a client bug both sides share would pass unnoticed. Each model cites its source in
``../shared/reference/fal-sam3-endpoints.md`` (S1-S6). Like fal (pydantic/FastAPI behind
the scenes), unknown keys are ignored (so a ``frame_index`` sent to the seed endpoint is
silently dropped, as fal would) and errors come back as ``{"detail": [{"loc", "msg",
"type"}]}``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ERRORS_DOC_URL = "https://docs.fal.ai/errors"


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class PointPromptBase(_In):
    """S1 (seed): a click with no frame_index."""

    x: int
    y: int
    label: Literal[0, 1]
    object_id: int | None = None


class BoxPromptBase(_In):
    x_min: int
    y_min: int
    x_max: int
    y_max: int
    object_id: int | None = None


class PointPromptIn(PointPromptBase):
    """S2, S4: a click on frame ``frame_index``."""

    frame_index: int = 0


class BoxPromptIn(BoxPromptBase):
    frame_index: int = 0


class _Prompted(_In):
    video_url: str
    prompt: str = ""

    @model_validator(mode="after")
    def _has_a_prompt(self) -> _Prompted:
        if not self.prompt.strip() and not getattr(self, "point_prompts", None) and not getattr(self, "box_prompts", None):
            raise ValueError("provide a text prompt, point_prompts or box_prompts")
        return self


class Sam31VideoInput(_Prompted):
    """S1: ``fal-ai/sam-3-1/video``."""

    point_prompts: list[PointPromptBase] = Field(default_factory=list)
    box_prompts: list[BoxPromptBase] = Field(default_factory=list)
    apply_mask: bool = True
    video_output_type: Literal["X264 (.mp4)", "VP9 (.webm)"] = "X264 (.mp4)"
    detection_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    max_num_objects: int = Field(default=16, ge=1, le=128)


class Sam31VideoRleInput(_Prompted):
    """S2, S4: ``fal-ai/sam-3-1/video-rle`` (no video_output_type; apply_mask off by default)."""

    point_prompts: list[PointPromptIn] = Field(default_factory=list)
    box_prompts: list[BoxPromptIn] = Field(default_factory=list)
    apply_mask: bool = False
    boundingbox_zip: bool = False
    detection_threshold: float = Field(default=0.5, ge=0.01, le=1.0)
    max_num_objects: int = Field(default=16, ge=1, le=128)


class Sam3VideoRleInput(Sam31VideoRleInput):
    """S3, S4: ``fal-ai/sam-3/video-rle``: RLE only with ``return_rle``."""

    return_rle: bool = False
    rle_return_mode: Literal["url", "list"] = "list"


class Sam3VideoRleObjectsInput(_In):
    """S6: ``fal-ai/sam-3/video-rle-objects``: one concept, a threshold, nothing else."""

    video_url: str
    prompt: str = Field(min_length=1)
    detection_threshold: float = Field(default=0.5, ge=0.01, le=1.0)


@dataclasses.dataclass(frozen=True)
class SegmenterInput:
    """What the toy segmenter needs, whatever endpoint the request came through."""

    video_url: str
    concepts: list[str]
    point_prompts: list[PointPromptIn]
    box_prompts: list[BoxPromptIn]
    detection_threshold: float
    max_num_objects: int


def segmenter_input(parsed: _Prompted | Sam3VideoRleObjectsInput) -> SegmenterInput:
    if isinstance(parsed, Sam3VideoRleObjectsInput):  # the whole prompt is one concept (S6)
        return SegmenterInput(parsed.video_url, [parsed.prompt.strip()], [], [], parsed.detection_threshold, 128)
    points = [p if isinstance(p, PointPromptIn) else PointPromptIn(**p.model_dump()) for p in parsed.point_prompts]  # type: ignore[attr-defined]
    boxes = [b if isinstance(b, BoxPromptIn) else BoxPromptIn(**b.model_dump()) for b in parsed.box_prompts]  # type: ignore[attr-defined]
    concepts = [c.strip() for c in parsed.prompt.split(",") if c.strip()]
    return SegmenterInput(parsed.video_url, concepts, points, boxes, parsed.detection_threshold,  # type: ignore[attr-defined]
                          parsed.max_num_objects)  # type: ignore[attr-defined]


def error_item(loc: list[str | int], msg: str, type_: str, **extra: Any) -> dict[str, Any]:
    """One entry of a fal model-error ``detail`` list (``url`` as fal's docs describe)."""
    return {"loc": loc, "msg": msg, "type": type_, "url": f"{ERRORS_DOC_URL}#{type_}", **extra}


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors -> fal/FastAPI 422 items, with ``loc`` prefixed by ``"body"``."""
    items = []
    # exc.json() turns ctx values (exceptions, Decimals) into JSON-safe text.
    for err in json.loads(exc.json(include_url=False)):
        item: dict[str, Any] = {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
        if "input" in err:
            item["input"] = err["input"]
        if err.get("ctx"):
            item["ctx"] = err["ctx"]
        items.append(item)
    return items


Parsed = _Prompted | Sam3VideoRleObjectsInput


def parse_input(model: type[BaseModel], payload: Any) -> Parsed | list[dict[str, Any]]:
    """The validated input, or the 422 ``detail`` list describing why it is not valid."""
    if not isinstance(payload, dict):
        return [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
    try:
        return model.model_validate(payload)  # type: ignore[return-value]
    except ValidationError as exc:
        return validation_detail(exc)
