"""A contract fake of Meta's SAM 3 / SAM 3.1 video predictor, for testing the whole local
path (builder arguments, requests, chunking, id stitching, progress, cancel, errors) on a CPU.

It is reached the way the real one is: through a builder module (:func:`fake_sam3_module`)
whose functions have upstream's signatures, so the engine's argument filtering runs against
them. It answers the same request dicts with the same response dicts as the real predictor,
but "sees" by colour: frames of :mod:`sam_backend.synthetic` videos are classified with the
emulator's luma key, which reproduces their ground-truth masks. It refuses what the real
code refuses, so a test written against it fails where a GPU would. Each behaviour and the
upstream code it mirrors (facebookresearch/sam3 main, July 2026; PyPI sam3 0.1.4 where
noted; tests/test_local_sam3_real.py runs the PyPI code itself):

- Builders, ``sam3/model_builder.py``: ``build_sam3_predictor(checkpoint_path, bpe_path,
  version, compile, warm_up, max_num_objects, multiplex_count, use_fa3=True, use_rope_real,
  async_loading_frames, **kwargs)`` passes ``**kwargs`` on to
  ``build_sam3_multiplex_video_predictor`` (no ``**kwargs``, no ``load_from_HF``/``device``)
  or ``build_sam3_video_predictor(*args, gpus_to_use, **kwargs)`` ->
  ``Sam3VideoPredictorMultiGPU`` -> ``Sam3VideoPredictor.__init__`` (no ``**kwargs``): an
  unknown argument is a TypeError here as there. ``use_fa3=True`` imports flash-attn 3
  (``flash_attn_interface``): ImportError when it is not installed, as on any non-Hopper box.
- ``handle_request`` / ``handle_stream_request``: ``Sam3BasePredictor``'s dispatcher, key for
  key and default for default (``frame_index``, ``points``, ``point_labels``,
  ``bounding_boxes``, ``obj_id``, ``rel_coordinates``, ``output_prob_thresh``,
  ``propagation_direction``, ``start_frame_index``, ``max_frame_num_to_track``...).
- ``start_session``: ``Sam3BasePredictor.start_session`` always forwards
  ``offload_video_to_cpu`` *and* ``offload_state_to_cpu`` to ``self.model.init_state``; the
  SAM 3.1 model's ``init_state`` (``video_tracking_multiplex_demo``) has no
  ``offload_state_to_cpu``: TypeError on every session (upstream issue #544) unless the
  model's ``init_state`` is wrapped. ``resource_path`` is a list of PIL images (the loader
  asserts each is one, ``io_utils.load_resource_as_video_frames``) or a JPEG folder.
- ``add_prompt``: text or ``bounding_boxes`` (normalised xywh in [0, 1]) reset the session
  ("since it's a semantic prompt, we start over", ``Sam3VideoInference.add_prompt``) and run
  the detector on the frame; points need an ``obj_id`` (asserted in
  ``Sam3VideoInferenceWithInstanceInteractivity.add_prompt``) and go to the tracker
  (``add_tracker_new_points``), where labels 2/3 are box corners; tracker objects score 1.0
  (``obj_id_to_score[obj_id] = 1.0`` there). In SAM 3 (0.1.4) that path only refines a
  detector pass: on a frame without detector output it fails the assertion "No cached
  outputs found" (``_build_tracker_output``), so the engine sends SAM 3's points and boxes
  to the model's tracker API instead, which this fake does not have (the real-code tests
  cover it).
- ``propagate_in_video``: ``both`` = forward from the start frame to the end, then backward
  from the frame before it (``Sam3BasePredictor.propagate_in_video``). Without
  ``start_frame_index`` the start is the earliest frame with *detector* output; a session
  prompted only through the tracker has none: RuntimeError "No prompts are received..."
  (``Sam3VideoInference._get_processing_order``; ``add_tracker_new_points`` never sets
  ``previous_stages_out``).
- ``output_prob_thresh``: SAM 3.1 drops outputs scoring below it; SAM 3 ignores it
  (its model's ``propagate_in_video``/``add_prompt`` take no such argument in 0.1.4, and
  ``Sam3BasePredictor`` passes it only where the signature has it).
- Outputs: ``out_obj_ids`` int64 (N,), ``out_probs`` float32 (N,), ``out_boxes_xywh``
  float32 (N, 4) normalised, ``out_binary_masks`` bool (N, H, W) at the video's size,
  non-overlapping, empty masks removed, ``frame_stats`` None (``_postprocess_output``).
- Ids: the detector numbers new objects from 0 per session in the order it first sees
  them on the frames it processes; several new objects on one frame are numbered in raster
  order of their masks (leftmost first), an arbitrary but fixed query order as a real
  detector has. So the same object gets different ids in different sessions, as with the
  real model, and chunk stitching has real work to do (``id_history`` logs them).
- ``max_num_objects``: new objects beyond it are not added (the real model logs a warning).
- ``cancel_propagation`` stops a running propagation; ``close_session`` is idempotent.

Not mirrored: accuracy, hot-start delay and masklet confirmation (objects here are certain
from their first frame), GPU memory, bf16 autocast. ``oom_after_frames`` raises the real
CUDA out-of-memory message after that many propagated frames, for error-path tests.
"""

from __future__ import annotations

import importlib
import os
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...emulator.segmenter import BACKGROUND_LABEL, classify, concept_colours

_TEXT_SCORE = 0.9  # what the fake detector reports for every concept match (unless told otherwise)


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
        self.detector_frames: set[int] = set()  # frames with detector output (text/box passes)
        self.cancelled = False

    @property
    def height(self) -> int:
        return int(self.labels[0].shape[0])

    @property
    def width(self) -> int:
        return int(self.labels[0].shape[1])


class ContractFakePredictor:
    """Answers Meta predictor requests from colour-keyed synthetic frames (see module doc)."""

    def __init__(self, *, version: str = "sam3.1", max_num_objects: int = 16, oom_after_frames: int | None = None,
                 text_score: float = _TEXT_SCORE) -> None:
        self.version = version
        self.model = _FakeModel(version)
        self.text_score = text_score
        self.builds: list[dict[str, Any]] = []  # arguments each build received
        self.max_num_objects = max_num_objects
        self.oom_after_frames = oom_after_frames
        self.default_output_prob_thresh = 0.5
        self.requests: list[dict[str, Any]] = []  # every request (frames summarised), for tests
        self.sessions: dict[str, _Session] = {}
        self.sessions_started = 0
        self.most_live_sessions = 0  # sessions open at once, at most (one model: one chunk at a time)
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

        # Sam3BasePredictor.start_session: both offload flags always go to the model (#544).
        self.model.init_state(resource_path=resource_path, offload_video_to_cpu=offload_video_to_cpu,
                              offload_state_to_cpu=offload_state_to_cpu, async_loading_frames=False)
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
        self.most_live_sessions = max(self.most_live_sessions, len(self.sessions))
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
            if self.version == "sam3":  # add_tracker_new_points refines a detector pass (0.1.4)
                assert frame_idx in session.detector_frames, (
                    "No cached outputs found. Ensure normal propagation has run first to populate the cache.")
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
            return {"frame_index": frame_idx, "outputs": self._outputs(session, frame_idx, output_prob_thresh)}
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
            session.detector_frames.add(frame_idx)
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
                raise RuntimeError("No prompts are received on any frames. Please add prompt on at least one frame "
                                   "before propagation.")
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
            if session.text_colours:
                session.detector_frames.add(frame_idx)
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
            if self.version == "sam3" or self.text_score >= output_prob_thresh:  # SAM 3 ignores the threshold
                objects.append((oid, self.text_score, labels == colour))
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


class _FakeModel:
    """The model under the predictor: only ``init_state``'s signature matters here. SAM 3's
    takes both offload flags; SAM 3.1's multiplex model names no ``offload_state_to_cpu``."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.init_state = self._init_state_31 if version == "sam3.1" else self._init_state_3

    def _init_state_3(self, resource_path: Any, offload_video_to_cpu: bool = False, offload_state_to_cpu: bool = False,
                      async_loading_frames: bool = False, video_loader_type: str = "cv2") -> None:
        return None

    def _init_state_31(self, resource_path: Any, offload_video_to_cpu: bool = False, async_loading_frames: bool = False,
                       video_loader_type: str = "cv2") -> None:
        return None


def _fa3_import() -> None:
    importlib.import_module("flash_attn_interface")  # what use_fa3=True does upstream


def fake_sam3_module(fake: ContractFakePredictor) -> types.SimpleNamespace:
    """A stand-in for ``sam3.model_builder`` whose builders have upstream's signatures (see the
    module doc) and return ``fake`` once the arguments pass; ``fake.builds`` logs them."""

    def _load(checkpoint_path: str | None) -> None:
        if checkpoint_path is None or not Path(checkpoint_path).is_file():
            raise FileNotFoundError(f"checkpoint not found: {checkpoint_path}")  # torch.load would fail

    def build_sam3_multiplex_video_predictor(checkpoint_path: str | None = None, bpe_path: str | None = None,
                                             max_num_objects: int = 16, multiplex_count: int = 16,
                                             use_fa3: bool = True, use_rope_real: bool = True, compile: bool = False,
                                             warm_up: bool = False, session_expiration_sec: int = 1200,
                                             default_output_prob_thresh: float = 0.5,
                                             async_loading_frames: bool = True) -> ContractFakePredictor:
        if use_fa3:
            _fa3_import()
        _load(checkpoint_path)
        fake.builds.append({"checkpoint_path": checkpoint_path, "max_num_objects": max_num_objects,
                            "use_fa3": use_fa3, "compile": compile})
        fake.max_num_objects = max_num_objects
        return fake

    class Sam3VideoPredictor:
        def __init__(self, checkpoint_path: str | None = None, bpe_path: str | None = None,
                     has_presence_token: bool = True, geo_encoder_use_img_cross_attn: bool = True,
                     strict_state_dict_loading: bool = True, async_loading_frames: bool = False,
                     video_loader_type: str = "cv2", apply_temporal_disambiguation: bool = True,
                     compile: bool = False, default_output_prob_thresh: float = 0.5) -> None:
            _load(checkpoint_path)
            fake.builds.append({"checkpoint_path": checkpoint_path, "compile": compile})

    class Sam3VideoPredictorMultiGPU(Sam3VideoPredictor):
        def __init__(self, *model_args: Any, gpus_to_use: list[int] | None = None, **model_kwargs: Any) -> None:
            super().__init__(*model_args, **model_kwargs)

    def build_sam3_video_predictor(*model_args: Any, gpus_to_use: list[int] | None = None,
                                   **model_kwargs: Any) -> ContractFakePredictor:
        Sam3VideoPredictorMultiGPU(*model_args, gpus_to_use=gpus_to_use, **model_kwargs)
        return fake

    def build_sam3_predictor(checkpoint_path: str | None = None, bpe_path: str | None = None, version: str = "sam3.1",
                             compile: bool = False, warm_up: bool = False, max_num_objects: int = 16,
                             multiplex_count: int = 16, use_fa3: bool = True, use_rope_real: bool = True,
                             async_loading_frames: bool = True, **kwargs: Any) -> ContractFakePredictor:
        if version != fake.version:
            raise AssertionError(f"the test built a {fake.version} fake but the engine asked for {version}")
        if version == "sam3.1":
            return build_sam3_multiplex_video_predictor(
                checkpoint_path=checkpoint_path, bpe_path=bpe_path, max_num_objects=max_num_objects,
                multiplex_count=multiplex_count, use_fa3=use_fa3, use_rope_real=use_rope_real, compile=compile,
                warm_up=warm_up, async_loading_frames=async_loading_frames, **kwargs)
        return build_sam3_video_predictor(checkpoint_path=checkpoint_path, bpe_path=bpe_path, compile=compile,
                                          async_loading_frames=async_loading_frames, **kwargs)

    module = types.SimpleNamespace(
        build_sam3_predictor=build_sam3_predictor,
        build_sam3_multiplex_video_predictor=build_sam3_multiplex_video_predictor,
        build_sam3_video_predictor=build_sam3_video_predictor,
        Sam3VideoPredictorMultiGPU=Sam3VideoPredictorMultiGPU,
    )
    module.__file__ = str(Path(__file__).resolve().parent / "sam3_fake" / "model_builder.py")
    return module

