"""The emulator's own copy of fal's input schema, and fal-shaped error bodies.

Deliberately separate from :mod:`sam_backend.types`: the emulator must judge what the
client sends by fal's rules, not by the client's own models, or a client bug that both
sides share would pass unnoticed. Like fal (pydantic/FastAPI behind the scenes), unknown
keys are ignored and errors come back as ``{"detail": [{"loc", "msg", "type"}]}``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ERRORS_DOC_URL = "https://docs.fal.ai/errors"


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class PointPromptIn(_In):
    x: int
    y: int
    label: Literal[0, 1]
    object_id: int | None = None
    frame_index: int = 0


class BoxPromptIn(_In):
    x_min: int
    y_min: int
    x_max: int
    y_max: int
    object_id: int | None = None
    frame_index: int = 0


class SamVideoInput(_In):
    """Input of ``fal-ai/sam-3-1/video`` and its RLE variants."""

    video_url: str
    prompt: str = ""
    point_prompts: list[PointPromptIn] = Field(default_factory=list)
    box_prompts: list[BoxPromptIn] = Field(default_factory=list)
    apply_mask: bool = True
    video_output_type: Literal["X264 (.mp4)", "VP9 (.webm)"] = "X264 (.mp4)"
    detection_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    max_num_objects: int = Field(default=16, ge=1, le=128)

    @model_validator(mode="after")
    def _has_a_prompt(self) -> SamVideoInput:
        if not self.prompt.strip() and not self.point_prompts and not self.box_prompts:
            raise ValueError("provide a text prompt, point_prompts or box_prompts")
        return self

    @property
    def concepts(self) -> list[str]:
        return [p.strip() for p in self.prompt.split(",") if p.strip()]


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


def parse_input(payload: Any) -> SamVideoInput | list[dict[str, Any]]:
    """The validated input, or the 422 ``detail`` list describing why it is not valid."""
    if not isinstance(payload, dict):
        return [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
    try:
        return SamVideoInput.model_validate(payload)
    except ValidationError as exc:
        return validation_detail(exc)
