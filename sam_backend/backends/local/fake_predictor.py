"""A contract fake of Meta's SAM 3 / SAM 3.1 video predictor, for testing the whole local
path (requests, chunking, id stitching, progress, cancel, errors) on a CPU.

It answers the same request dicts with the same response dicts as the real predictor
(``sam3.model.sam3_base_predictor.Sam3BasePredictor`` and the SAM 3 video model under it),
but "sees" by colour: frames of :mod:`sam_backend.synthetic` videos are classified with the
emulator's luma key, which reproduces their ground-truth masks. What each part mirrors:

- ``handle_request`` / ``handle_stream_request``: the real dispatcher, key for key and
  default for default (``frame_index``, ``points``, ``point_labels``, ``bounding_boxes``,
  ``bounding_box_labels``, ``obj_id``, ``rel_coordinates``, ``output_prob_thresh``,
  ``propagation_direction``, ``start_frame_index``, ``max_frame_num_to_track``...), with
  method signatures named like the real ones so signature filtering is exercised.
- ``start_session``: ``resource_path`` as a list of PIL images (the real loader asserts
  that every item is a PIL image) or a folder of JPEGs; returns ``{"session_id"}``.
- ``add_prompt``: text or ``bounding_boxes`` (normalised xywh, all in [0, 1]) *reset the
  session* (one concept per session, as in the real model); points need an ``obj_id``
  (the real model asserts it) and use the tracker, where labels 2/3 are box corners;
  returns ``{"frame_index", "outputs"}`` for the prompted frame.
- ``propagate_in_video``: ``both`` = forward from the start frame (default: the earliest
  prompted frame; none -> RuntimeError like the real one) to the end, then backward from
  the frame before it to 0; yields ``{"frame_index", "outputs"}``.
- Outputs: ``out_obj_ids`` int64 (N,), ``out_probs`` float32 (N,), ``out_boxes_xywh``
  float32 (N, 4) normalised, ``out_binary_masks`` bool (N, H, W) at the video's size,
  non-overlapping, empty masks removed, ``frame_stats`` None.
- Ids: the detector numbers new objects from 0 per session in the order it first sees
  them on the frames it processes; several new objects on one frame are numbered in
  raster order of their masks (leftmost first), an arbitrary but fixed query order as a
  real detector has. So the same object gets different ids in different sessions, as
  with the real model, and chunk stitching has real work to do (``id_history`` logs them). Tracker (point) objects keep the caller's ``obj_id``, score 1.0.
- ``max_num_objects``: new objects beyond it are not added (the real model logs a warning).
- ``cancel_propagation`` stops a running propagation; ``close_session`` is idempotent.

Not mirrored: accuracy, hot-start delay and masklet confirmation (objects here are certain
from their first frame), GPU memory, bf16 autocast. ``oom_after_frames`` raises the real
CUDA out-of-memory message after that many propagated frames, for error-path tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from ...emulator.segmenter import BACKGROUND_LABEL, classify, concept_colours

_TEXT_SCORE = 0.9  # what the fake detector reports for every concept match


class _Session:
    def __init__(self, session_id: str, labels: list[np.ndarray]) -> None:
        self.id = session_id
        self.labels = labels  # per frame: (H, W) uint8 palette label map
        self.reset()

    def reset(self) -> None:
        self.text_colours: list[int] = []  # colours the concept prompt matches
        self.detected: dict[int, int] = {}  # colour -> detector object id
        self.tracked: dict[int, set[int]] = {}  # obj_id -> colours (tracker objects)
        self.prompted_frames: set[int] = set()
        self.cancelled = False

    @property
    def height(self) -> int:
        return int(self.labels[0].shape[0])

    @property
    def width(self) -> int:
        return int(self.labels[0].shape[1])


class ContractFakePredictor:
    """Answers Meta predictor requests from colour-keyed synthetic frames (see module doc)."""

    def __init__(self, *, max_num_objects: int = 16, oom_after_frames: int | None = None) -> None:
        self.max_num_objects = max_num_objects
        self.oom_after_frames = oom_after_frames
        self.default_output_prob_thresh = 0.5
        self.requests: list[dict[str, Any]] = []  # every request (frames summarised), for tests
        self.sessions: dict[str, _Session] = {}
        self.sessions_started = 0
        self.frames_propagated = 0
        self.id_history: list[tuple[str, int, int]] = []  # (session, colour, detector id)

    # ---- the real dispatcher ------------------------------------------------------------

    def _log(self, request: dict[str, Any]) -> None:
        # Keep the log light: frames handed over as images are logged as ("PIL images", n).
        entry = dict(request)
        if isinstance(entry.get("resource_path"), list):
            entry["resource_path"] = ("PIL images", len(entry["resource_path"]))
        self.requests.append(entry)

    def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        self._log(request)
        request_type = request["type"]
        if request_type == "start_session":
            return self.start_session(
                resource_path=request["resource_path"],
                session_id=request.get("session_id", None),
                offload_video_to_cpu=request.get("offload_video_to_cpu", False),
                offload_state_to_cpu=request.get("offload_state_to_cpu", False),
            )
        if request_type == "add_prompt":
            return self.add_prompt(
                session_id=request["session_id"],
                frame_idx=request["frame_index"],
                text=request.get("text", None),
                points=request.get("points", None),
                point_labels=request.get("point_labels", None),
                clear_old_points=request.get("clear_old_points", True),
                bounding_boxes=request.get("bounding_boxes", None),
                bounding_box_labels=request.get("bounding_box_labels", None),
                clear_old_boxes=request.get("clear_old_boxes", True),
                output_prob_thresh=request.get("output_prob_thresh", self.default_output_prob_thresh),
                obj_id=request.get("obj_id", None),
                rel_coordinates=request.get("rel_coordinates", True),
            )
        if request_type == "remove_object":
            return self.remove_object(session_id=request["session_id"], frame_idx=request.get("frame_index", 0),
                                      obj_id=request["obj_id"])
        if request_type == "reset_session":
            return self.reset_session(session_id=request["session_id"])
        if request_type == "cancel_propagation":
            return self.cancel_propagation(session_id=request["session_id"])
        if request_type == "close_session":
            return self.close_session(session_id=request["session_id"], run_gc_collect=request.get("run_gc_collect", True))
        raise RuntimeError(f"invalid request type: {request_type}")

    def handle_stream_request(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self._log(request)
        if request["type"] != "propagate_in_video":
            raise RuntimeError(f"invalid request type: {request['type']}")
        yield from self.propagate_in_video(
            session_id=request["session_id"],
            propagation_direction=request.get("propagation_direction", "both"),
            start_frame_idx=request.get("start_frame_index", None),
            max_frame_num_to_track=request.get("max_frame_num_to_track", None),
            output_prob_thresh=request.get("output_prob_thresh", self.default_output_prob_thresh),
        )

    # ---- verbs --------------------------------------------------------------------------

    def start_session(self, resource_path: Any, session_id: str | None = None,
                      offload_video_to_cpu: bool = False, offload_state_to_cpu: bool = False) -> dict[str, Any]:
        from PIL import Image

        if isinstance(resource_path, list):
            assert all(isinstance(img, Image.Image) for img in resource_path)
            images = resource_path
        elif isinstance(resource_path, str) and os.path.isdir(resource_path):
            names = sorted((n for n in os.listdir(resource_path) if n.lower().endswith((".jpg", ".jpeg"))),
                           key=lambda n: int(os.path.splitext(n)[0]))
            images = [Image.open(os.path.join(resource_path, n)) for n in names]
        else:
            raise NotImplementedError(f"the contract fake takes decoded frames (a list of PIL images), got {resource_path!r}")
        if not images:
            raise RuntimeError("no images found")
        labels = [classify(np.asarray(img.convert("L"))) for img in images]
        session_id = session_id or str(uuid.uuid4())
        self.sessions[session_id] = _Session(session_id, labels)
        self.sessions_started += 1
        return {"session_id": session_id}

    def add_prompt(self, session_id: str, frame_idx: int, text: str | None = None, points: Any = None,
                   point_labels: Any = None, clear_old_points: bool = True, bounding_boxes: Any = None,
                   bounding_box_labels: Any = None, clear_old_boxes: bool = True, output_prob_thresh: float = 0.5,
                   obj_id: int | None = None, rel_coordinates: bool = True) -> dict[str, Any]:
        session = self._session(session_id)
        n = len(session.labels)
        assert 0 <= frame_idx < n, f"frame_idx={frame_idx} is out of range for a total of {n} frames"
        labels = session.labels[frame_idx]
        h, w = labels.shape
        if points is not None:
            assert text is None and bounding_boxes is None, "When points are provided, text_str and boxes_xywh must be None."
            assert obj_id is not None, "When points are provided, obj_id must be provided."
            pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
            lab = np.asarray(point_labels, dtype=np.int32).reshape(-1)
            if rel_coordinates:
                pts = pts * np.array([w, h], dtype=np.float32)
            colours = set() if clear_old_points else set(session.tracked.get(obj_id, set()))
            if len(lab) >= 2 and lab[0] == 2 and lab[1] == 3:  # a box as two corner points
                x0, y0 = np.floor(pts[0]).astype(int)
                x1, y1 = np.ceil(pts[1]).astype(int)
                inside = labels[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
                hist = np.bincount(inside.ravel(), minlength=256)
                hist[BACKGROUND_LABEL] = 0
                if hist.any():
                    colours.add(int(hist.argmax()))
                pts, lab = pts[2:], lab[2:]
            for (x, y), label in zip(pts, lab):
                xi, yi = min(max(int(x), 0), w - 1), min(max(int(y), 0), h - 1)
                colour = int(labels[yi, xi])
                if colour == BACKGROUND_LABEL:
                    continue
                if label == 1:
                    colours.add(colour)
                elif label == 0:
                    colours.discard(colour)
            is_new = obj_id not in session.tracked
            if is_new and len(session.tracked) + len(session.detected) >= self.max_num_objects:
                return {"frame_index": frame_idx, "outputs": self._outputs(session, frame_idx, output_prob_thresh)}
            session.tracked[obj_id] = colours
        else:
            assert text is not None or bounding_boxes is not None, "at least one type of prompt (text, boxes) must be provided"
            session.reset()  # "since it's a semantic prompt, we start over"
            if text is not None and text != "visual":
                session.text_colours = concept_colours(text)
            if bounding_boxes is not None:
                boxes = np.asarray(bounding_boxes, dtype=np.float32).reshape(-1, 4)
                box_labels = np.asarray(bounding_box_labels).reshape(-1)
                assert len(box_labels) == len(boxes)
                assert (boxes >= 0).all() and (boxes <= 1).all()
                for (bx, by, bw, bh), positive in zip(boxes, box_labels):
                    x0, y0, x1, y1 = int(bx * w), int(by * h), int(np.ceil((bx + bw) * w)), int(np.ceil((by + bh) * h))
                    hist = np.bincount(labels[y0:y1, x0:x1].ravel(), minlength=256)
                    hist[BACKGROUND_LABEL] = 0
                    if hist.any() and positive:
                        session.text_colours.append(int(hist.argmax()))
            self._detect(session, frame_idx)
        session.prompted_frames.add(frame_idx)
        return {"frame_index": frame_idx, "outputs": self._outputs(session, frame_idx, output_prob_thresh)}

    def propagate_in_video(self, session_id: str, propagation_direction: str = "both", start_frame_idx: int | None = None,
                           max_frame_num_to_track: int | None = None, output_prob_thresh: float = 0.5,
                           **kwargs: Any) -> Iterator[dict[str, Any]]:
        session = self._session(session_id)
        if propagation_direction not in ("both", "forward", "backward"):
            raise ValueError(f"invalid propagation direction: {propagation_direction}")
        n = len(session.labels)
        if start_frame_idx is None:
            if not session.prompted_frames:
                raise RuntimeError("No prompts are received on any frames. Please add prompt on at least one frame before propagation.")
            start_frame_idx = min(session.prompted_frames)
        limit = n if max_frame_num_to_track is None else max_frame_num_to_track
        order: list[int] = []
        if propagation_direction in ("both", "forward"):
            order += list(range(start_frame_idx, min(start_frame_idx + limit, n - 1) + 1))
        if propagation_direction in ("both", "backward"):
            order += list(range(start_frame_idx - 1, max(start_frame_idx - limit, 0) - 1, -1))
        session.cancelled = False
        for frame_idx in order:
            if session.cancelled:
                return
            if self.oom_after_frames is not None and self.frames_propagated >= self.oom_after_frames:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity; "
                                   "21.40 GiB already allocated; 1.12 GiB free; 22.10 GiB reserved in total by PyTorch)")
            self.frames_propagated += 1
            self._detect(session, frame_idx)
            yield {"frame_index": frame_idx, "outputs": self._outputs(session, frame_idx, output_prob_thresh)}

    def remove_object(self, session_id: str, frame_idx: int = 0, obj_id: int = 0, is_user_action: bool = True) -> dict[str, Any]:
        session = self._session(session_id)
        session.tracked.pop(obj_id, None)
        session.detected = {c: i for c, i in session.detected.items() if i != obj_id}
        return {"frame_index": frame_idx, "outputs": self._outputs(session, frame_idx, 0.0)}

    def reset_session(self, session_id: str) -> dict[str, Any]:
        self._session(session_id).reset()
        return {"is_success": True}

    def cancel_propagation(self, session_id: str) -> dict[str, Any]:
        self._session(session_id).cancelled = True
        return {"is_success": True}

    def close_session(self, session_id: str, run_gc_collect: bool = True) -> dict[str, Any]:
        self.sessions.pop(session_id, None)
        return {"is_success": True}

    # ---- the "model" --------------------------------------------------------------------

    def _session(self, session_id: str) -> _Session:
        if session_id not in self.sessions:
            raise RuntimeError(f"Cannot find session {session_id}; it might have expired")
        return self.sessions[session_id]

    def _detect(self, session: _Session, frame_idx: int) -> None:
        """New concept matches on this frame get the next ids, leftmost first."""
        labels = session.labels[frame_idx]
        counts = np.bincount(labels.ravel(), minlength=256)
        new = [c for c in session.text_colours if c not in session.detected and counts[c] > 0]
        leftmost = {c: int(np.flatnonzero((labels == c).any(axis=0))[0]) for c in new}
        for colour in sorted(new, key=lambda c: (leftmost[c], c)):
            if len(session.detected) + len(session.tracked) >= self.max_num_objects:
                break
            session.detected[colour] = max([*session.detected.values(), *session.tracked, -1]) + 1
            self.id_history.append((session.id, colour, session.detected[colour]))

    def _outputs(self, session: _Session, frame_idx: int, output_prob_thresh: float) -> dict[str, Any]:
        labels = session.labels[frame_idx]
        h, w = labels.shape
        objects: list[tuple[int, float, np.ndarray]] = []
        for colour, oid in session.detected.items():
            if _TEXT_SCORE >= output_prob_thresh:
                objects.append((oid, _TEXT_SCORE, labels == colour))
        for oid, colours in session.tracked.items():
            objects.append((oid, 1.0, np.isin(labels, sorted(colours)) if colours else np.zeros((h, w), bool)))
        objects = sorted((o for o in objects if o[2].any()), key=lambda o: o[0])
        ids = np.array([o[0] for o in objects], dtype=np.int64)
        probs = np.array([o[1] for o in objects], dtype=np.float32)
        masks = np.stack([o[2] for o in objects]) if objects else np.zeros((0, h, w), dtype=bool)
        boxes = np.zeros((len(objects), 4), dtype=np.float32)
        for k, m in enumerate(masks):
            ys, xs = np.nonzero(m)
            boxes[k] = (xs.min() / w, ys.min() / h, (xs.max() - xs.min()) / w, (ys.max() - ys.min()) / h)
        return {"out_obj_ids": ids, "out_probs": probs, "out_boxes_xywh": boxes, "out_binary_masks": masks,
                "frame_stats": None}
