"""``sam31-video fal-check``: settle what nothing public settles, with the user's own key.

fal's RLE start base is unconfirmed and whether each endpoint keeps objects apart is only
reported (``../shared/reference/fal-sam3-endpoints.md``). This sends a short synthetic
clip with exact ground truth (:func:`sam_backend.synthetic.instances_scene`, at most 32
frames) to each configured endpoint: on the visual endpoint one text, one point, one box
request and one request clicking two objects at once (do their masks come back apart?); on
the objects endpoint one text request naming two instances. It keeps
every raw payload (journal and ``workdir``), decodes each under all four RLE layouts,
scores each against the ground truth (mean IoU over the frames where the target is
visible), picks the best layout per endpoint, and says whether the endpoint returned
objects apart. Costs a few cents; :func:`estimate` says how much before anything is sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from ... import synthetic
from ...errors import SamError
from ...video import probe
from ..base import CancelToken, RunRecord, VideoSource
from . import endpoints as endpoint_table
from .endpoints import plan_cost
from .backend import FalBackend, _Request, request_hash
from .decoders import decode_result
from .journal import StoredResult
from .planner import PlannedRequest
from .rle import ALL_LAYOUTS, RleLayout

CHECK_FRAMES = 24  # <= 32: two billing blocks per request
# Targets in instances_scene (one text, one point, one box; two instances for objects).
_TEXT, _POINT_TARGET, _BOX_TARGET = "red ball", "green ball", "blue box"
_INSTANCES = ("ball", ("red ball", "green ball"))
_PAIR = ("red ball", "cyan box")  # clicked together, with object ids 1 and 2


@dataclasses.dataclass
class CheckRow:
    endpoint: str
    kind: str  # "text" | "point" | "box" | "pair" | "instances"
    request_id: str | None
    iou: dict[str, float | None]  # layout key -> mean IoU (None: does not decode under that layout)
    tracks: int = 0  # most distinct tracks on one frame
    error: str | None = None


@dataclasses.dataclass
class CheckReport:
    backend: str
    rows: list[CheckRow]
    winners: dict[str, RleLayout]  # endpoint -> best layout
    apart: dict[str, bool]  # endpoint -> returned objects apart
    estimated_usd: float | None
    payload_dir: Path

    def __str__(self) -> str:
        keys = [layout.key for layout in ALL_LAYOUTS]
        lines = [f"fal-check on {self.backend}: raw payloads in {self.payload_dir}",
                 f"{'endpoint':<34} {'request':<9} " + " ".join(f"{k:>8}" for k in keys) + "  tracks"]
        for r in self.rows:
            cells = " ".join(f"{'-' if r.iou.get(k) is None else format(r.iou[k], '.3f'):>8}" for k in keys)
            lines.append(f"{r.endpoint:<34} {r.kind:<9} {cells}  {r.tracks}" + (f"  ERROR {r.error}" if r.error else ""))
        for endpoint, layout in self.winners.items():
            apart = {True: "yes", False: "no (one union mask per frame)"}.get(
                self.apart.get(endpoint), "not measured (its request failed)")
            lines.append(f"{endpoint}: RLE layout {layout.key} ({layout.name}); objects apart: {apart}")
        return "\n".join(lines)


def _requests(backend: FalBackend, scene: synthetic.Scene, gt: synthetic.GroundTruth) -> list[tuple[str, PlannedRequest, tuple[str, ...]]]:
    """(kind, planned request, target object names) for every check request."""
    c = backend.config
    visual = (c.endpoint,) + tuple(e for e in [c.fallback_endpoints.get(c.endpoint)] if e)
    if endpoint_table.endpoint(c.endpoint).output == "video":
        raise SamError(f"{c.endpoint} returns only a rendered video: fal-check needs an RLE endpoint")
    base = {"detection_threshold": 0.5, "max_num_objects": 16, "apply_mask": False}
    point_frame = gt.frames_visible(_POINT_TARGET)[len(gt.frames_visible(_POINT_TARGET)) // 2]
    px, py = _centre(gt.mask(_POINT_TARGET, point_frame))
    box_frame = gt.frames_visible(_BOX_TARGET)[0]
    pair_frame = min(set(gt.frames_visible(_PAIR[0])) & set(gt.frames_visible(_PAIR[1])))
    bx0, by0, bx1, by1 = _box(gt.mask(_BOX_TARGET, box_frame))
    out = [
        ("text", PlannedRequest("check:text", "concept_union", visual, {**base, "prompt": _TEXT}, _TEXT, 1), (_TEXT,)),
        ("point", PlannedRequest("check:point", "object", visual, {**base, "point_prompts": [
            {"x": px, "y": py, "label": 1, "object_id": 1, "frame_index": point_frame}]}, "object_1", 1), (_POINT_TARGET,)),
        ("box", PlannedRequest("check:box", "object", visual, {**base, "box_prompts": [
            {"x_min": bx0, "y_min": by0, "x_max": bx1, "y_max": by1, "object_id": 1, "frame_index": box_frame}]},
            "object_1", 1), (_BOX_TARGET,)),
        ("pair", PlannedRequest("check:pair", "object", visual, {**base, "point_prompts": [
            {**dict(zip("xy", _centre(gt.mask(name, pair_frame)))), "label": 1, "object_id": i, "frame_index": pair_frame}
            for i, name in enumerate(_PAIR, 1)]}, "object_1", 1), _PAIR),
    ]
    out.append(("instances", PlannedRequest("check:instances", "concept_instances", c.objects_endpoints,
                                            {"detection_threshold": 0.5, "prompt": _INSTANCES[0]}, _INSTANCES[0]),
                _INSTANCES[1]))
    return out


def _centre(mask: np.ndarray | None) -> tuple[int, int]:
    assert mask is not None
    ys, xs = np.nonzero(mask)
    i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))  # a pixel of the object near its centre
    return int(xs[i]), int(ys[i])


def _box(mask: np.ndarray | None) -> tuple[int, int, int, int]:
    assert mask is not None
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def make_clip(workdir: Path) -> tuple[Path, synthetic.GroundTruth]:
    scene = synthetic.instances_scene(frame_count=CHECK_FRAMES, width=192, height=144)
    path = workdir / "fal-check.mp4"
    return path, synthetic.write_video(scene, path)


def estimate(backend: FalBackend) -> tuple[float | None, str]:
    """What the check will cost on ``backend`` (every request, CHECK_FRAMES frames each)."""
    planned = [PlannedRequest(k, "object", e, {}, "") for k, e in
               [("text", (backend.config.endpoint,)), ("point", (backend.config.endpoint,)),
                ("box", (backend.config.endpoint,)), ("pair", (backend.config.endpoint,)),
                ("instances", backend.config.objects_endpoints[:1])]]
    return plan_cost(planned, CHECK_FRAMES)


def run_check(backend: FalBackend, workdir: Path, *, cancel: CancelToken | None = None) -> CheckReport:
    """Send the check requests, keep the payloads, score every layout. Spends money on fal."""
    workdir.mkdir(parents=True, exist_ok=True)
    path, gt = make_clip(workdir)
    info = probe(path)
    video = VideoSource(info=info, path=path)
    checks = _requests(backend, gt.scene, gt)
    identity = backend._video_identity(video, None)
    requests = [_Request(p, request_hash(p, identity, None)) for _, p, _ in checks]
    record = RunRecord(backend=backend.name)
    with contextlib.ExitStack() as stack:
        get_url = backend._lazy_input_url(video, None, cancel or CancelToken(), None, stack)
        for r in requests:  # one at a time: a failure of one still shows the others
            try:
                backend._run_requests([r], get_url, "fal-check", record, None, cancel or CancelToken())
            except SamError as exc:
                r.stored = {"error": str(exc)}
    for r in requests:  # fal-check's answers are a few frames: read each whole, to keep and to score
        if isinstance(r.stored, StoredResult):
            r.stored = {"payload": json.loads(b"".join(r.stored.chunks())), "attachments": r.stored.attachments}
    rows, scores = [], {}
    for (kind, planned, targets), r in zip(checks, requests):
        endpoint = r.entry.endpoint if r.entry is not None else planned.endpoints[0]
        rid = r.entry.request_id if r.entry is not None else None
        (workdir / f"{endpoint.replace('/', '_')}-{kind}.json").write_text(json.dumps(r.stored, indent=1))
        row = CheckRow(endpoint, kind, rid, {})
        if r.stored is None or "error" in r.stored:
            row.error = (r.stored or {}).get("error", "no result")
        else:
            _score(row, r.stored, endpoint, gt, info.frame_count, info.height, info.width, targets)
            for key, value in row.iou.items():
                if value is not None:
                    scores.setdefault(endpoint, {}).setdefault(key, []).append(value)
        rows.append(row)
    winners = {}
    for e, per_layout in scores.items():
        full = max(map(len, per_layout.values()))  # a layout must decode every payload of the endpoint
        winners[e] = RleLayout.parse(max(per_layout, key=lambda k: float(np.mean(per_layout[k])) if len(per_layout[k]) == full else -1.0))
    # Measured, not assumed: two objects in one request (pair) or two instances of one
    # concept (instances) came back as two masks on some frame, or as one.
    apart = {row.endpoint: row.tracks >= 2 for row in rows if row.kind in ("pair", "instances") and row.error is None}
    usd, _ = estimate(backend)
    return CheckReport(backend.name, rows, winners, apart, usd, workdir)


def _score(row: CheckRow, stored: dict[str, Any], endpoint: str, gt: synthetic.GroundTruth, frame_count: int,
           height: int, width: int, targets: tuple[str, ...]) -> None:
    spec = endpoint_table.endpoint(endpoint)
    for layout in ALL_LAYOUTS:
        try:
            decoded = decode_result(stored, spec, layout=layout, frame_count=frame_count, height=height, width=width,
                                    request_id=row.request_id or "-")
            ious = []
            for f in range(frame_count):
                masks = [fm.mask for fm in decoded.frame(f)]
                row.tracks = max(row.tracks, len(masks))
                got = np.logical_or.reduce(masks) if masks else np.zeros((height, width), bool)
                want = np.zeros((height, width), bool)
                for name in targets:
                    m = gt.mask(name, f)
                    if m is not None:
                        want |= m
                if want.any() or got.any():
                    ious.append(float((got & want).sum() / max((got | want).sum(), 1)))
            row.iou[layout.key] = float(np.mean(ious)) if ious else None
        except SamError:
            row.iou[layout.key] = None
