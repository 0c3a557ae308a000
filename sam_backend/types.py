"""Request, prompt and result types.

:class:`SegmentRequest` is what the user asks of one video, whatever the backend: text
concepts, clicks and boxes with object ids, a threshold and a cap on objects. Field names
and coordinates are fal's (integer pixels, 0-based ``frame_index``); which fal requests a
request becomes, and their exact bodies, is the fal backend's business
(``backends/fal/planner.py`` and ``endpoints.py``). Conversion to FiftyOne's relative boxes
and 1-based frame numbers happens only in :mod:`sam_backend.coords`.

Results (:class:`TrackedObject`, :class:`FrameResult`) are plain dataclasses: they are
internal, created per object per frame, and carry numpy masks.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .errors import InvalidRequest, shorten


# Constrained scalars shared by the wire request and the options objects built on it.
DetectionThreshold = Annotated[float, Field(ge=0.0, le=1.0)]
MaxNumObjects = Annotated[int, Field(ge=1, le=128)]
DEFAULT_DETECTION_THRESHOLD = 0.5
DEFAULT_MAX_NUM_OBJECTS = 16
# SAM 3 reads each concept as a short noun phrase: its text encoder keeps 32 tokens
# (sam3 0.1.4, model/text_encoder_ve.py, VETextEncoder context_length=32), so longer text
# is cut off by the model anyway; and every concept is a paid request on fal.
MAX_CONCEPT_CHARS = 200
MAX_PROMPT_CHARS = 1000


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


def _a_number(value: Any) -> Any:
    """Pixels, frame indices and object ids are numbers: pydantic would read True as 1 and
    "12" as 12, which hides a prompt built from the wrong column (whole floats and numpy
    ints pass)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"must be a whole number, not {type(value).__name__} {value!r}")
    return value


WholeNumber = Annotated[int, BeforeValidator(_a_number), Field(ge=0)]


class PointPrompt(_Wire):
    """A click on frame ``frame_index``: label 1 = on the object, 0 = not on it."""

    x: WholeNumber = Field(description="pixel column")
    y: WholeNumber = Field(description="pixel row")
    label: Literal[0, 1] = 1
    object_id: WholeNumber | None = None
    frame_index: WholeNumber = 0


class BoxPrompt(_Wire):
    """A box around one object on frame ``frame_index``, integer pixels, max exclusive."""

    x_min: WholeNumber
    y_min: WholeNumber
    x_max: WholeNumber
    y_max: WholeNumber
    object_id: WholeNumber | None = None
    frame_index: WholeNumber = 0

    @model_validator(mode="after")
    def _positive_area(self) -> BoxPrompt:
        if self.x_max <= self.x_min or self.y_max <= self.y_min:
            raise ValueError(
                f"box has no area: x_min={self.x_min}, x_max={self.x_max}, "
                f"y_min={self.y_min}, y_max={self.y_max} (need x_max > x_min and y_max > y_min)"
            )
        return self


class VideoInfo(BaseModel):
    """What a real decoder says about a video. ``frame_count`` is the number of decoded
    frames, which is what fal's ``frame_index`` and FiftyOne's frame numbers count."""

    model_config = ConfigDict(frozen=True)

    width: int = Field(gt=0)
    height: int = Field(gt=0)
    frame_count: int = Field(ge=0)
    fps: float = Field(ge=0)
    duration: float = Field(ge=0)
    codec: str = ""
    variable_frame_rate: bool = False
    size_bytes: int = 0
    # What the container claims (packets), when it differs from decoding: edit lists,
    # truncated and corrupt files. None = not probed.
    container_frame_count: int | None = None
    # The frame count the stream's header declares (nb_frames; what FiftyOne's metadata
    # shows), when it declares one: a truncated file still claims all of its frames.
    header_frame_count: int | None = None
    # Display rotation in degrees; width/height above already have it applied, as the
    # decoder and the App's player both apply it.
    rotation: int = 0

    @property
    def container_disagrees(self) -> bool:
        return self.container_frame_count is not None and self.container_frame_count != self.frame_count

    @property
    def claimed_frame_count(self) -> int | None:
        """The count the file claims: its header's, else its packets'."""
        return self.header_frame_count or self.container_frame_count


class FrameRange(BaseModel):
    """Which frames of a video to process: 0-based indices ``start, start+step, ...`` below
    ``stop`` (exclusive; None = to the end). Results keep the video's own frame indices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: int = Field(default=0, ge=0)
    stop: int | None = Field(default=None, ge=1)
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> FrameRange:
        if self.stop is not None and self.stop <= self.start:
            raise ValueError(f"frame range is empty: start={self.start}, stop={self.stop}")
        return self

    def indices(self, frame_count: int) -> range:
        stop = frame_count if self.stop is None else min(self.stop, frame_count)
        return range(self.start, stop, self.step)

    def is_whole(self, frame_count: int) -> bool:
        return self.indices(frame_count) == range(frame_count)

    def problems(self, video: VideoInfo) -> list[str]:
        """A range that holds no frame of ``video``. A ``stop`` past the end is not one: like
        a Python slice, the range ends with the video (:meth:`runs_past_end` tells)."""
        if self.start >= video.frame_count:
            return [f"frames.start={self.start} is past the last frame (the video has {video.frame_count} frames)"]
        return []

    def runs_past_end(self, frame_count: int) -> bool:
        return self.stop is not None and self.stop > frame_count


def split_concepts(prompt: str) -> list[str]:
    """Concepts separated by commas or line breaks (a pasted list), stripped; blank lines
    are skipped, but an empty concept between two commas is kept (as "") to be refused."""
    out: list[str] = []
    for part in prompt.split(","):
        out.extend([line.strip() for line in part.splitlines() if line.strip()] or [""])
    return out


class SegmentRequest(_Wire):
    """The prompts for one video. Shape errors raise when the model is built;
    video-dependent errors (frame size, frame count) raise in :meth:`check_against`."""

    prompt: str = ""
    point_prompts: list[PointPrompt] = Field(default_factory=list)
    box_prompts: list[BoxPrompt] = Field(default_factory=list)
    detection_threshold: DetectionThreshold = DEFAULT_DETECTION_THRESHOLD
    max_num_objects: MaxNumObjects = DEFAULT_MAX_NUM_OBJECTS

    @classmethod
    def build(cls, **fields: Any) -> SegmentRequest:
        """Like the constructor, but every problem becomes one :class:`InvalidRequest`
        whose message names the field and the bad value."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise InvalidRequest(describe_validation_error(exc)) from None

    @model_validator(mode="after")
    def _has_a_prompt(self) -> SegmentRequest:
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt {shorten(self.prompt)} is too long: at most {MAX_PROMPT_CHARS} characters, "
                             "comma-separated short noun phrases like 'person, dog'")
        parts = split_concepts(self.prompt)
        long = [p for p in parts if len(p) > MAX_CONCEPT_CHARS]
        if long:
            raise ValueError(f"concept {shorten(long[0])} is too long: at most {MAX_CONCEPT_CHARS} characters "
                             "(SAM reads a short noun phrase such as 'red car')")
        if self.prompt.strip() and any(not p for p in parts):
            raise ValueError(
                f"prompt {shorten(self.prompt)} has an empty concept between commas; "
                "write concepts like 'red ball, blue box'"
            )
        seen: dict[str, str] = {}
        for p in parts:
            key = " ".join(p.casefold().split())
            if key in seen:
                raise ValueError(f"prompt {shorten(self.prompt)} names the same concept twice ({seen[key]!r} and "
                                 f"{p!r}): each concept is segmented, and on fal billed, on its own; name it once")
            seen[key] = p
        if not self.prompt.strip() and not self.point_prompts and not self.box_prompts:
            raise ValueError(
                "empty request: give a text prompt (e.g. 'person, dog'), point_prompts or box_prompts"
            )
        return self

    @property
    def concepts(self) -> list[str]:
        """The text concepts (separated by commas or line breaks), stripped, in order."""
        return [p for p in split_concepts(self.prompt) if p]

    def visual_object_ids(self) -> list[int]:
        """Object ids that point/box prompts define (a positive point or a box)."""
        ids = {b.object_id for b in self.box_prompts if b.object_id is not None}
        ids |= {p.object_id for p in self.point_prompts if p.label == 1 and p.object_id is not None}
        return sorted(ids)

    def check_against(self, video: VideoInfo, frames: FrameRange | None = None) -> None:
        """Raise :class:`InvalidRequest` listing every prompt that cannot work on ``video``
        (or on the processed ``frames`` of it)."""
        problems: list[str] = frames.problems(video) if frames is not None else []
        processed = set(frames.indices(video.frame_count)) if frames is not None and not problems else None
        last = video.frame_count - 1
        if video.frame_count == 0:
            problems.append("video has no decodable frames")
        for i, p in enumerate(self.point_prompts):
            where = f"point_prompts[{i}]"
            if p.x >= video.width:
                problems.append(f"{where}.x={p.x} is outside the frame (width {video.width}, x must be < {video.width})")
            if p.y >= video.height:
                problems.append(f"{where}.y={p.y} is outside the frame (height {video.height}, y must be < {video.height})")
            if p.frame_index > last:
                problems.append(_past_end(where, p.frame_index, video.frame_count))
            elif processed is not None and p.frame_index not in processed:
                problems.append(_not_processed(where, p.frame_index))
        for i, b in enumerate(self.box_prompts):
            where = f"box_prompts[{i}]"
            if b.x_max > video.width or b.y_max > video.height:
                problems.append(
                    f"{where}=({b.x_min},{b.y_min})-({b.x_max},{b.y_max}) is outside the frame "
                    f"({video.width}x{video.height})"
                )
            if b.frame_index > last:
                problems.append(_past_end(where, b.frame_index, video.frame_count))
            elif processed is not None and b.frame_index not in processed:
                problems.append(_not_processed(where, b.frame_index))
        problems += self._object_id_problems()
        if problems:
            raise InvalidRequest(problems)

    def _object_id_problems(self) -> list[str]:
        problems: list[str] = []
        known = set(self.visual_object_ids())
        for i, p in enumerate(self.point_prompts):
            if p.label == 0 and p.object_id is None:
                problems.append(f"point_prompts[{i}] is a negative point (label=0) without object_id: say which object it excludes")
            elif p.label == 0 and p.object_id not in known:
                problems.append(
                    f"point_prompts[{i}].object_id={p.object_id} is unknown: no positive point or box "
                    f"defines it (known ids: {sorted(known) or 'none'})"
                )
        n_visual = len(known) + sum(1 for b in self.box_prompts if b.object_id is None)
        n_visual += sum(1 for p in self.point_prompts if p.label == 1 and p.object_id is None)
        if n_visual > self.max_num_objects:
            problems.append(f"max_num_objects={self.max_num_objects} but the point/box prompts define {n_visual} objects")
        return problems


def _past_end(where: str, index: int, frame_count: int) -> str:
    return (
        f"{where}.frame_index={index} is past the last frame "
        f"(the video has {frame_count} frames, indices 0..{frame_count - 1})"
    )


def _not_processed(where: str, index: int) -> str:
    return f"{where}.frame_index={index} is not among the frames being processed (check the frame range and stride)"


def describe_validation_error(exc: ValidationError) -> list[str]:
    """Turn pydantic's errors into 'field.path: message (got value)' lines."""
    lines = []
    for err in exc.errors():
        loc = ""
        for part in err["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {shorten(err['input'])})" if err["type"] != "value_error" and "input" in err else ""
        lines.append(f"{loc}: {msg}{got}" if loc else f"{msg}{got}")
    return lines


# ---------------------------------------------------------------------------------------
# Results


class TrackedObject:
    """One object on one frame.

    ``box`` is the tight pixel box of the mask as (x_min, y_min, x_max, y_max) with max
    exclusive, so width = x_max - x_min. The mask is held either full-frame
    (``TrackedObject(id, label, score, mask, box)``) or, cheaper, only inside its box
    (:meth:`from_crop`: what decoders that know the box up front produce, so no
    full-frame array is made per object). ``mask`` is always the full-frame bool (H x W)
    array (built on first use from a crop), ``crop`` always the part inside ``box``.
    A :meth:`box_only` object (an imported annotation with a box and no mask) has
    ``has_mask`` False, reads as an empty mask, and is stored without one.
    """

    __slots__ = ("track_id", "label", "score", "box", "_mask", "_crop", "_frame_shape", "has_mask")

    def __init__(self, track_id: int, label: str, score: float | None, mask: np.ndarray | None,
                 box: tuple[int, int, int, int], *, crop: np.ndarray | None = None,
                 frame_shape: tuple[int, int] | None = None) -> None:
        if mask is None and (crop is None or frame_shape is None):
            raise ValueError("TrackedObject needs a full-frame mask, or a crop and the frame shape")
        self.track_id = track_id
        self.label = label
        self.score = score  # None: the backend reports no confidence (fal's union RLE may not)
        self.box = box
        self._mask = mask
        self._crop = crop
        self._frame_shape = frame_shape
        self.has_mask = True

    @classmethod
    def from_crop(cls, track_id: int, label: str, score: float | None, crop: np.ndarray,
                  box: tuple[int, int, int, int], frame_shape: tuple[int, int]) -> TrackedObject:
        return cls(track_id, label, score, None, box, crop=crop, frame_shape=frame_shape)

    @classmethod
    def box_only(cls, track_id: int, label: str, score: float | None, box: tuple[int, int, int, int],
                 frame_shape: tuple[int, int]) -> TrackedObject:
        x0, y0, x1, y1 = box
        obj = cls.from_crop(track_id, label, score, np.zeros((y1 - y0, x1 - x0), bool), box, frame_shape)
        obj.has_mask = False
        return obj

    @property
    def mask(self) -> np.ndarray:
        if self._mask is None:
            assert self._crop is not None and self._frame_shape is not None
            full = np.zeros(self._frame_shape, dtype=bool)
            x0, y0, x1, y1 = self.box
            full[y0:y1, x0:x1] = self._crop
            self._mask = full
        return self._mask

    @property
    def nbytes(self) -> int:
        """Bytes of mask this object holds (its full-frame mask, or only its crop)."""
        held = self._mask if self._mask is not None else self._crop
        return 0 if held is None else int(held.nbytes)

    @property
    def crop(self) -> np.ndarray:
        if self._crop is None:
            x0, y0, x1, y1 = self.box
            return self.mask[y0:y1, x0:x1]
        return self._crop

    @property
    def area(self) -> int:
        """Pixels in the mask (counted on the crop: cheaper than on the full frame)."""
        return int(np.count_nonzero(self.crop))

    def with_label(self, label: str) -> TrackedObject:
        obj = TrackedObject(self.track_id, label, self.score, self._mask, self.box, crop=self._crop,
                            frame_shape=self._frame_shape)
        obj.has_mask = self.has_mask
        return obj

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrackedObject):
            return NotImplemented
        return ((self.track_id, self.label, self.score, self.box, self.has_mask)
                == (other.track_id, other.label, other.score, other.box, other.has_mask)
                and np.array_equal(self.crop, other.crop))

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside, like the dataclass before

    def __repr__(self) -> str:
        return f"TrackedObject(track_id={self.track_id}, label={self.label!r}, score={self.score}, box={self.box})"


@dataclasses.dataclass(frozen=True, slots=True)
class FrameResult:
    """All objects seen on one frame. ``frame_index`` is 0-based, like fal's."""

    frame_index: int
    objects: list[TrackedObject]


Stage = Literal["probe", "upload", "submit", "queued", "running", "fetch", "decode", "done"]


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    """A progress report from a backend; fields that do not apply stay None."""

    stage: Stage
    message: str = ""
    queue_position: int | None = None
    logs: tuple[str, ...] = ()
    frames_done: int | None = None
    frames_total: int | None = None
    request_id: str | None = None
