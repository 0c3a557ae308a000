"""Settings of the local backend: one immutable object, built from keyword options and an
environment mapping read when the backend is built (never at import)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ...errors import InvalidRequest
from ...types import describe_validation_error

Engine = Literal["sam3.1", "sam3", "transformers"]

# Environment variables a user can set instead of passing options.
ENV_CHECKPOINT = "SAM31_LOCAL_CHECKPOINT"  # Meta checkpoint file, or a folder holding them
ENV_MODEL = "SAM31_LOCAL_MODEL"  # transformers model id or local folder
ENV_DEVICE = "SAM31_LOCAL_DEVICE"

# File names of the gated checkpoints (facebook/sam3.1 and facebook/sam3 on the Hugging Face
# hub); when the checkpoint option names a folder, the engine's file is looked up in it.
CHECKPOINT_FILES: dict[str, str] = {"sam3.1": "sam3.1_multiplex.pt", "sam3": "sam3.pt"}
DEFAULT_TRANSFORMERS_MODEL = "facebook/sam3"

# 200 frames at 1008x1008 fp16 is ~1.2 GB of frames on the GPU plus tracking state: fits a
# 24 GB card with room for 16 objects. Lower it (or offload) on smaller cards.
DEFAULT_CHUNK_SIZE = 200
# New detections are confirmed only after the predictor's hot-start delay (15 frames);
# the overlap must be longer so a track is established in both chunks when ids are
# stitched. 24 leaves 9 frames of IoU evidence after the delay.
DEFAULT_OVERLAP = 24
# Two tracks are the same object when their masks over the overlap frames have at least this
# IoU (summed intersection / summed union): well above what neighbouring objects reach, well
# below what one object reaches when two runs of the same tracker segment it.
DEFAULT_STITCH_IOU = 0.5


class LocalConfig(BaseModel):
    """How the local backend runs. ``checkpoint`` is for the Meta engines (``sam3.1``,
    ``sam3``), ``model`` for ``transformers``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Engine = "sam3.1"
    checkpoint: Path | None = None
    model: str = DEFAULT_TRANSFORMERS_MODEL
    device: str = "auto"  # "auto" | "cuda" | "cuda:N" | "cpu"
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=2)
    overlap: int = Field(default=DEFAULT_OVERLAP, ge=1)
    offload: bool = False
    stitch_iou: float = Field(default=DEFAULT_STITCH_IOU, gt=0.0, le=1.0)
    compile: bool = False  # torch.compile is fragile in the Meta predictor: off unless asked

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"device={value!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value

    @model_validator(mode="after")
    def _overlap_fits(self) -> LocalConfig:
        if self.overlap >= self.chunk_size:
            raise ValueError(f"overlap={self.overlap} must be smaller than chunk_size={self.chunk_size}")
        return self

    @classmethod
    def build(cls, environ: Mapping[str, str] | None = None, **options: Any) -> LocalConfig:
        """Options win over the environment (``os.environ`` when ``environ`` is None);
        problems raise one :class:`InvalidRequest` naming each option."""
        env = os.environ if environ is None else environ
        data = dict(options)
        _refuse_the_other_engines_option(data)
        if data.get("checkpoint") in (None, "") and env.get(ENV_CHECKPOINT):
            data["checkpoint"] = env[ENV_CHECKPOINT]
        if data.get("model") in (None, "") and env.get(ENV_MODEL):
            data["model"] = env[ENV_MODEL]
        if data.get("device") in (None, "") and env.get(ENV_DEVICE):
            data["device"] = env[ENV_DEVICE]
        data = {k: v for k, v in data.items() if v is not None and v != ""}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidRequest([f"local backend option {line}" for line in describe_validation_error(exc)]) from None

    @property
    def model_name(self) -> str:
        """What the RunRecord says produced the labels."""
        return "sam3 (transformers)" if self.engine == "transformers" else self.engine


def _refuse_the_other_engines_option(options: Mapping[str, Any]) -> None:
    """``checkpoint`` is read only by the Meta engines and ``model`` only by transformers:
    given to the other engine it would be ignored, and the run would load something else
    (or fail naming a file the user never meant). The environment's are not checked: one
    shell may set both for different runs."""
    engine = options.get("engine") or "sam3.1"
    if engine == "transformers" and options.get("checkpoint") not in (None, ""):
        raise InvalidRequest(f"checkpoint={str(options['checkpoint'])!r} is a Meta checkpoint (engines 'sam3.1' and "
                             "'sam3'); engine='transformers' loads model=<hub id or folder saved by transformers>: "
                             "pass model=... instead, or engine='sam3.1' / 'sam3' for this checkpoint")
    if engine != "transformers" and options.get("model") not in (None, ""):
        raise InvalidRequest(f"model={str(options['model'])!r} is read by engine='transformers' only; engine="
                             f"{engine!r} loads checkpoint=<{CHECKPOINT_FILES[engine]} or its folder>: pass "
                             "engine='transformers' to run SAM 3 from this model, or checkpoint=... for "
                             f"{engine}")
