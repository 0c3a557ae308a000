"""The fal SAM endpoints this client knows: the single source of what each takes and returns.

Every fact here comes from ``../shared/reference/fal-sam3-endpoints.md`` (sources S1-S7
there); what nothing public settles is marked ``unconfirmed``. Request bodies are built
from this table only (:func:`build_body`): a field an endpoint does not take is never
sent, and a prompt it cannot take is refused before submit (:func:`problems`).

Output shapes:
- ``union_rle``: top-level ``rle`` (one string per frame, or one string; empty/None =
  nothing on that frame), ``metadata``/``boxes``/``scores``; the mask of a frame is the
  union of every tracked object (no track ids) [S5, S6, S7].
- ``objects_rle``: ``frames: [{frame_index, objects: [{track_id, rle}]}]``, ``width``,
  ``height``, ``num_frames``: one mask per tracked object with a stable id [S6].
- ``video``: a rendered overlay video (+ optional box-overlay zip), no labels [S1].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from ...errors import InvalidRequest

FRAMES_PER_UNIT = 16  # fal bills these endpoints per block of 16 input frames [S2, S3]

Output = Literal["union_rle", "objects_rle", "video"]

SAM31_VIDEO = "fal-ai/sam-3-1/video"
SAM31_VIDEO_RLE = "fal-ai/sam-3-1/video-rle"
SAM3_VIDEO_RLE = "fal-ai/sam-3/video-rle"
SAM3_VIDEO_RLE_OBJECTS = "fal-ai/sam-3/video-rle-objects"
# Unconfirmed: nothing public says this exists. Configure it as the preferred objects
# endpoint to try it first; fal's "not found" falls back to SAM 3's, visibly.
SAM31_VIDEO_RLE_OBJECTS = "fal-ai/sam-3-1/video-rle-objects"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """What one fal endpoint takes and returns."""

    id: str
    model: str  # "sam3.1" | "sam3": recorded with the labels
    output: Output
    # Input fields it takes beyond video_url (a field not listed is never sent).
    fields: frozenset[str]
    threshold_min: float  # detection_threshold range is [threshold_min, 1]
    points_boxes: bool  # takes point_prompts / box_prompts
    frame_index: bool  # ... with a frame_index each (False: prompts apply to frame 0)
    one_concept: bool  # the prompt must be a single concept (no commas)
    # Fields sent with a fixed value: e.g. sam-3/video-rle answers RLE only when asked, and
    # the seed endpoint's only output is the overlay, so it always draws the masks.
    fixed: tuple[tuple[str, Any], ...] = ()
    usd_per_unit: float | None = None  # None: not published
    assumed_usd_per_unit: float | None = None  # used in estimates when the price is not published
    confirmed: bool = True  # False: nothing public shows the endpoint exists

    @property
    def objects_apart(self) -> bool:
        """Whether one request returns each tracked object separately, with an id."""
        return self.output == "objects_rle"

    def price(self) -> tuple[float | None, bool]:
        """(USD per 16 frames, whether that price is published)."""
        if self.usd_per_unit is not None:
            return self.usd_per_unit, True
        return self.assumed_usd_per_unit, False

    def cost_usd(self, frames: int) -> float | None:
        usd, _ = self.price()
        # Whether fal rounds a partial block up is unconfirmed: assume it does (never under-estimate).
        return None if usd is None else math.ceil(frames / FRAMES_PER_UNIT) * usd


_RLE_FIELDS = frozenset({"prompt", "point_prompts", "box_prompts", "apply_mask", "boundingbox_zip",
                         "detection_threshold", "max_num_objects"})

ENDPOINTS: dict[str, Endpoint] = {e.id: e for e in (
    # S1: the seed. Points/boxes are PointPromptBase/BoxPromptBase: no frame_index.
    Endpoint(SAM31_VIDEO, "sam3.1", "video",
             frozenset({"prompt", "point_prompts", "box_prompts", "apply_mask", "video_output_type",
                        "detection_threshold", "max_num_objects"}),
             threshold_min=0.0, points_boxes=True, frame_index=False, one_concept=False,
             fixed=(("apply_mask", True),), usd_per_unit=0.01),
    # S2, S5, S7: union RLE per frame, $0.01 per 16 frames.
    Endpoint(SAM31_VIDEO_RLE, "sam3.1", "union_rle", _RLE_FIELDS,
             threshold_min=0.01, points_boxes=True, frame_index=True, one_concept=False,
             usd_per_unit=0.01),
    # S3, S4: as above plus return_rle (default false: without it, only a video comes back).
    Endpoint(SAM3_VIDEO_RLE, "sam3", "union_rle", _RLE_FIELDS | {"return_rle", "rle_return_mode"},
             threshold_min=0.01, points_boxes=True, frame_index=True, one_concept=False,
             fixed=(("return_rle", True),), usd_per_unit=0.005),
    # S6: one text concept, per-object tracks. Price not listed: assumed SAM 3's RLE price.
    Endpoint(SAM3_VIDEO_RLE_OBJECTS, "sam3", "objects_rle", frozenset({"prompt", "detection_threshold"}),
             threshold_min=0.01, points_boxes=False, frame_index=False, one_concept=True,
             assumed_usd_per_unit=0.005),
    Endpoint(SAM31_VIDEO_RLE_OBJECTS, "sam3.1", "objects_rle", frozenset({"prompt", "detection_threshold"}),
             threshold_min=0.01, points_boxes=False, frame_index=False, one_concept=True,
             assumed_usd_per_unit=0.01, confirmed=False),
)}


def endpoint(endpoint_id: str) -> Endpoint:
    try:
        return ENDPOINTS[endpoint_id]
    except KeyError:
        raise InvalidRequest(
            f"unknown fal endpoint {endpoint_id!r}: this client can read {', '.join(sorted(ENDPOINTS))}"
        ) from None


def problems(spec: Endpoint, *, prompt: str, point_prompts: list[dict[str, Any]], box_prompts: list[dict[str, Any]],
             detection_threshold: float, frame_indices: bool = True) -> list[str]:
    """Why this endpoint cannot take these prompts (empty: it can). ``frame_indices=False``
    leaves out the prompts' frames (a frame range renumbers them before sending)."""
    out = []
    if (point_prompts or box_prompts) and not spec.points_boxes:
        out.append(f"{spec.id} takes no point or box prompts")
    if frame_indices and spec.points_boxes and not spec.frame_index:
        for kind, items in (("point_prompts", point_prompts), ("box_prompts", box_prompts)):
            for i, p in enumerate(items):
                if p.get("frame_index", 0) != 0:
                    out.append(f"{kind}[{i}].frame_index={p['frame_index']}: {spec.id} takes prompts on frame 0 only "
                               f"(no frame_index); use {SAM31_VIDEO_RLE}")
    if spec.one_concept and "," in prompt:
        out.append(f"{spec.id} takes one concept per request, got {prompt!r}")
    if detection_threshold < spec.threshold_min:
        out.append(f"detection_threshold={detection_threshold} is below {spec.id}'s minimum {spec.threshold_min}")
    return out


def build_body(spec: Endpoint, video_url: str, **fields: Any) -> dict[str, Any]:
    """The JSON body for ``spec``: only the fields it takes, its fixed values, prompts
    without ``frame_index`` where it takes none. Refuses what it cannot take."""
    points = [dict(p) for p in fields.get("point_prompts") or []]
    boxes = [dict(b) for b in fields.get("box_prompts") or []]
    found = problems(spec, prompt=fields.get("prompt", ""), point_prompts=points, box_prompts=boxes,
                     detection_threshold=fields.get("detection_threshold", 0.5))
    if found:
        raise InvalidRequest(found)
    if not spec.frame_index:
        for p in points + boxes:
            p.pop("frame_index", None)
    body: dict[str, Any] = {"video_url": video_url}
    for name, value in {**fields, "point_prompts": points, "box_prompts": boxes}.items():
        if name in spec.fields and value not in (None, [], ""):
            body[name] = value
    body.update(dict(spec.fixed))
    return body


def plan_cost(planned: Sequence[Any], frames: int,
              endpoint_of: Callable[[Any], str] = lambda p: p.endpoints[0]) -> tuple[float | None, str]:
    """(USD, a one-line breakdown) for ``planned`` requests over ``frames`` frames each;
    USD is None when an endpoint has no price at all."""
    total, used, assumed = 0.0, [], set()
    for p in planned:
        spec = endpoint(endpoint_of(p))
        usd = spec.cost_usd(frames)
        if usd is None:
            return None, f"no price known for {spec.id}"
        total += usd
        used.append(spec.id)
        if not spec.price()[1]:
            assumed.add(spec.id)
    counts = {e: used.count(e) for e in dict.fromkeys(used)}
    detail = f"{len(used)} request(s) x {frames} frames: " + ", ".join(f"{n} on {e}" for e, n in counts.items())
    if assumed:
        detail += f" (no published price for {', '.join(sorted(assumed))}: assumed)"
    return total, detail
