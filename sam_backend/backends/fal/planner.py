"""Which fal requests one video's prompts become, so labels come out object-exact.

fal's RLE endpoints answer one union mask per frame, with no track ids
(``endpoints.py``), so a request can only ever label one thing. The planner therefore
splits a :class:`~sam_backend.types.SegmentRequest` into requests that each yield one
known track, or a set of tracks with ids:

- points and boxes: one request per object id (its positive and negative clicks and its
  boxes together) to the visual endpoint (``fal-ai/sam-3-1/video-rle``); the answer is
  that object's mask, track id = object id. Prompts without an object id are objects of
  their own, numbered like fal numbers them: the smallest free id >= 1, positive points
  first, then boxes, in list order.
- text, ``text_mode="instances"`` (default): one request per concept to an objects
  endpoint (``fal-ai/sam-3/video-rle-objects``, SAM 3), which tracks each instance with
  its own id; ids are renumbered at merge time to be unique across concepts and apart
  from the visual ids (:func:`instance_ids`).
- text, ``text_mode="union"``: one request per concept to the visual endpoint (SAM 3.1):
  one track per concept holding all its instances together.
- an endpoint that returns only a rendered video gets one request with everything (its
  output has no labels to keep apart).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from ...types import SegmentRequest
from .endpoints import Endpoint, endpoint

TextMode = Literal["instances", "union"]
Kind = Literal["object", "concept_union", "concept_instances", "everything"]


@dataclasses.dataclass(frozen=True)
class PlannedRequest:
    """One fal request of a video. ``endpoints`` are tried in order: the first that fal
    has is used (a later one only after fal said the earlier does not exist)."""

    key: str  # stable name within the video, e.g. "object:3" or "concept:0"
    kind: Kind
    endpoints: tuple[str, ...]
    fields: dict[str, Any]  # endpoint-independent input fields (build_body picks what each takes)
    label: str
    track_id: int | None = None  # the one track this request yields (object / concept_union)
    max_tracks: int | None = None  # cap on instance tracks (the objects endpoint takes no max_num_objects)


def _chain(first: str, fallbacks: dict[str, str]) -> tuple[str, ...]:
    chain = [first]
    while chain[-1] in fallbacks and fallbacks[chain[-1]] not in chain:
        chain.append(fallbacks[chain[-1]])
    return tuple(chain)


def visual_objects(request: SegmentRequest) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """object id -> its points and boxes (wire dicts with ``object_id`` set), in id order."""
    explicit = set(request.visual_object_ids())
    taken = set(explicit)

    def auto_id() -> int:
        oid = 1
        while oid in taken:
            oid += 1
        taken.add(oid)
        return oid

    objects: dict[int, dict[str, list[dict[str, Any]]]] = {}

    def add(kind: str, prompt: Any, oid: int) -> None:
        wire = prompt.model_dump(mode="json")
        wire["object_id"] = oid
        objects.setdefault(oid, {"point_prompts": [], "box_prompts": []})[kind].append(wire)

    for p in request.point_prompts:
        if p.label == 1:
            add("point_prompts", p, p.object_id if p.object_id is not None else auto_id())
    for b in request.box_prompts:
        add("box_prompts", b, b.object_id if b.object_id is not None else auto_id())
    for p in request.point_prompts:  # negative clicks join the object they exclude from
        if p.label == 0 and p.object_id in objects:
            add("point_prompts", p, p.object_id)
    return dict(sorted(objects.items()))


def plan(request: SegmentRequest, *, visual_endpoint: str, objects_endpoints: Sequence[str], text_mode: TextMode,
         fallbacks: dict[str, str], render: bool = False) -> list[PlannedRequest]:
    """The requests for one video (see the module doc)."""
    common: dict[str, Any] = {"detection_threshold": request.detection_threshold}
    visual_chain = _chain(visual_endpoint, fallbacks)
    visual_spec: Endpoint = endpoint(visual_endpoint)
    union_fields = {**common, "max_num_objects": request.max_num_objects, "apply_mask": render}
    if visual_spec.output == "video":
        fields = {**union_fields, "prompt": ", ".join(request.concepts),
                  "point_prompts": [p.model_dump(mode="json", exclude_none=True) for p in request.point_prompts],
                  "box_prompts": [b.model_dump(mode="json", exclude_none=True) for b in request.box_prompts]}
        return [PlannedRequest("everything", "everything", visual_chain, fields, label="object")]

    planned: list[PlannedRequest] = []
    objects = visual_objects(request)
    for oid, prompts in objects.items():
        planned.append(PlannedRequest(f"object:{oid}", "object", visual_chain, {**union_fields, **prompts},
                                      label=f"object_{oid}", track_id=oid))
    used = set(objects)
    for ci, concept in enumerate(request.concepts):
        if text_mode == "union":
            tid = next(i for i in range(1, len(used) + 2) if i not in used)
            used.add(tid)
            planned.append(PlannedRequest(f"concept:{ci}", "concept_union", visual_chain,
                                          {**union_fields, "prompt": concept}, label=concept, track_id=tid))
        else:
            chain: list[str] = []
            for first in objects_endpoints:
                chain += [e for e in _chain(first, fallbacks) if e not in chain]
            planned.append(PlannedRequest(f"concept:{ci}", "concept_instances", tuple(chain),
                                          {**common, "prompt": concept}, label=concept,
                                          max_tracks=request.max_num_objects))
    return planned


def instance_ids(taken: Iterable[int], per_request: Sequence[Sequence[int]]) -> list[dict[int, int]]:
    """Renumber instance tracks: for each concept request in order, its fal track ids in
    ascending order get the smallest ids >= 1 not yet used (by visual objects, union
    concepts or earlier concepts). Returns one {fal id: our id} map per request."""
    used = set(taken)
    maps: list[dict[int, int]] = []
    next_id = 1
    for fal_ids in per_request:
        mapping = {}
        for fal_id in sorted(set(fal_ids)):
            while next_id in used:
                next_id += 1
            mapping[fal_id] = next_id
            used.add(next_id)
        maps.append(mapping)
    return maps
