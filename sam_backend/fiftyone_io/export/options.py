"""Export settings: the single source of defaults for the SDK, the CLI and the operator."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ...errors import InvalidRequest
from ...types import describe_validation_error

Format = Literal["coco", "yolo-seg", "yolo-detect", "mot", "mots", "ytvis"]
FORMATS: dict[str, str] = {
    "coco": "COCO instance segmentation (JSON, per frame)",
    "yolo-seg": "YOLO segmentation (polygons) + data.yaml",
    "yolo-detect": "YOLO detection (boxes) + data.yaml",
    "mot": "MOT Challenge (boxes + track ids, text)",
    "mots": "MOTS (RLE masks + track ids, text)",
    "ytvis": "YouTube-VIS (JSON, one masklet per track)",
}
# Formats whose files hold a track id per object (the others need none).
TRACK_FORMATS = frozenset({"mot", "mots", "ytvis"})
# Formats that store masks (the others store boxes only).
MASK_FORMATS = frozenset({"coco", "yolo-seg", "mots", "ytvis"})
# Where frame images go when none is asked for: image datasets need them, MOT tools do not.
DEFAULT_FRAMES: dict[str, str] = {"coco": "images", "yolo-seg": "images", "yolo-detect": "images",
                                  "mot": "video", "mots": "video", "ytvis": "images"}


class ExportOptions(BaseModel):
    """One export's settings.

    - ``frames``: ``"images"`` writes the exported frames as image files next to the
      labels; ``"video"`` writes none and refers to frames by video + frame index. None =
      the format's default (images for COCO, YOLO, YouTube-VIS; video for MOT/MOTS).
      YOLO needs images.
    - ``frame_stride``: export frame indices 0, s, 2s, ... (FiftyOne frame numbers 1, 1+s, ...).
    - ``coco_masks``: ``"rle"`` (lossless) or ``"polygons"``.
    - ``polygon_tolerance``: Douglas-Peucker tolerance in pixels for polygons; 0 keeps
      every corner (exact for COCO's reader).
    - ``min_polygon_iou``: polygons reading back below this IoU against their mask are
      listed in the report's warnings (and fail the export with ``strict``).
    - ``mots_class_id``: write this MOTS class id for every object instead of one id per
      concept (TrackEval's MOTS Challenge evaluates class 2, "pedestrian", only).
    - ``overwrite``: replace ``output_dir`` if a previous export wrote it.
    """

    model_config = ConfigDict(extra="forbid")

    format: Format = "coco"
    label_field: str = "sam"
    output_dir: Path | None = None
    frames: Literal["images", "video"] | None = None
    frame_stride: int = Field(default=1, ge=1)
    coco_masks: Literal["rle", "polygons"] = "rle"
    polygon_tolerance: float = Field(default=0.0, ge=0.0)
    min_polygon_iou: float = Field(default=0.95, ge=0.0, le=1.0)
    strict: bool = False
    image_format: Literal["jpg", "png"] = "jpg"
    mots_class_id: int | None = Field(default=None, ge=1, le=9)
    overwrite: bool = False

    @model_validator(mode="after")
    def _frames_fit_format(self) -> ExportOptions:
        if self.format.startswith("yolo") and self.frames == "video":
            raise ValueError("YOLO datasets are folders of images: use frames='images' for YOLO formats")
        return self

    @property
    def frame_mode(self) -> str:
        return self.frames or DEFAULT_FRAMES[self.format]

    @classmethod
    def build(cls, options: ExportOptions | None = None, **fields: Any) -> ExportOptions:
        """Options from defaults, an existing object and keyword overrides; problems raise
        one :class:`InvalidRequest` naming each field and bad value."""
        data = {**(options.model_dump() if options else {}), **{k: v for k, v in fields.items() if v is not None}}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidRequest(describe_validation_error(exc)) from None
