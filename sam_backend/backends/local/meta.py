"""Meta's SAM 3.1 (Object Multiplex) / SAM 3 video predictor from the ``sam3`` package,
driven through its request API (``handle_request`` / ``handle_stream_request``).

Mapping of our request (see reference/sam3-predictor.md):
- Text: a text prompt resets the session (one concept per session), so each
  comma-separated concept is its own session pass; ids are made distinct across passes.
- Points: ``add_prompt`` with ``points`` + ``point_labels`` and the object's ``obj_id``, in
  relative coordinates: upstream routes these to the tracker (``add_tracker_new_points``),
  which leaves no detector output, so propagation names its start frame (the earliest
  prompted frame) and runs forward, then backward from there. Boxes with an object id go to the same tracker call as two corner
  points labelled 2 and 3 (how SAM's tracker encodes a box), so one box = one object =
  its object id, exactly like the fal backend. (``bounding_boxes`` in normalised xywh is
  the predictor's *concept* prompt: all look-alikes of the box; not what a box with an
  object id means here.)
- ``detection_threshold`` -> ``output_prob_thresh`` (SAM 3.1 filters its outputs with it,
  SAM 3 ignores it), and outputs scoring below it are dropped here in both versions.
  ``max_num_objects`` -> the builder.
- Points, boxes and objects carried into the next chunk go through the model's tracker
  when it has one (SAM 3, :mod:`.meta_tracker`: carried objects as masks); otherwise
  (SAM 3.1) through the request API, carried objects as their box plus a click on their
  innermost pixel, on the overlap frame where the previous chunk saw most of them.
- The builder gets only the arguments it takes (:mod:`.meta_build`); one predictor per
  device is shared by every thread behind a lock; bf16 autocast is entered per call.
- Frames are decoded by us and given as a list of PIL images (never an mp4 path).
- Every request is filtered to the keyword arguments the installed version's methods
  accept (versions differ; unexpected kwargs raise TypeError in some).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ... import masks as mask_ops
from ...errors import Cancelled
from ..base import CancelToken
from .config import CHECKPOINT_FILES, ENV_CHECKPOINT, LocalConfig
from .engine import ChunkJob, RawObject, Seed, VisualPrompt
from .errors import INSTALL_META, EngineUnavailable
from .meta_tracker import run_tracker, tracker_of
from .meta_build import (SharedPredictor, acquire, build_predictor, named_parameters, patch_init_state, release,
                         shared_predictor)

# Request keys whose method parameter has another name (the predictor's wire names differ).
_PARAM_NAMES = {"frame_index": "frame_idx", "start_frame_index": "start_frame_idx"}
_METHODS = {"start_session": "start_session", "add_prompt": "add_prompt",
            "propagate_in_video": "propagate_in_video", "cancel_propagation": "cancel_propagation",
            "close_session": "close_session"}


def resolve_checkpoint(config: LocalConfig) -> Path:
    """The checkpoint file for the engine, or an EngineUnavailable saying where to get it."""
    wanted = CHECKPOINT_FILES[config.engine]
    repo = "facebook/sam3.1" if config.engine == "sam3.1" else "facebook/sam3"
    how = (f"download {wanted} from the gated Hugging Face repository {repo} (accept the licence there), then pass "
           f"checkpoint='/path/to/{wanted}' or set {ENV_CHECKPOINT} to the file or to the folder holding it")
    if config.checkpoint is None:
        raise EngineUnavailable(f"engine {config.engine!r} needs a checkpoint and none was given: {how}")
    path = config.checkpoint.expanduser()
    if path.is_dir():
        candidate = path / wanted
        if not candidate.is_file():
            present = sorted(p.name for p in path.glob("*.pt"))[:5]
            raise EngineUnavailable(f"checkpoint folder {path} has no {wanted} (found: {present or 'no .pt files'}): {how}")
        return candidate
    if not path.is_file():
        raise EngineUnavailable(f"checkpoint not found: {path}: {how}")
    return path


def check_meta(config: LocalConfig) -> None:
    """Checkpoint, package, then CUDA: each missing piece is an EngineUnavailable with the fix."""
    resolve_checkpoint(config)
    if importlib.util.find_spec("sam3") is None:
        raise EngineUnavailable(f"engine {config.engine!r} needs Meta's sam3 package, which is not installed: {INSTALL_META}"
                                " (SAM 3.1 is only in the GitHub repository; the PyPI sam3 has SAM 3 only)")
    try:
        import torch
    except ImportError:
        raise EngineUnavailable(f"engine {config.engine!r} needs PyTorch with CUDA: pip install torch (a CUDA build)") from None
    if config.device == "cpu" or not torch.cuda.is_available():
        raise EngineUnavailable(
            f"engine {config.engine!r} (Meta's predictor) runs only on a CUDA GPU, and "
            + ("device='cpu' was asked" if config.device == "cpu" else "none is visible here (torch.cuda.is_available() is False)")
            + "; on a CPU use engine='transformers' (SAM 3 through transformers)"
        )


def default_predictor_factory(config: LocalConfig, max_num_objects: int) -> Any:
    """Build Meta's predictor with exactly the builder arguments the installed version takes."""
    return build_predictor(config, resolve_checkpoint(config), max_num_objects, importlib.import_module("sam3.model_builder"))


class MetaEngine:
    """Segments chunks with one predictor per device, shared by every thread of every backend
    built with the same settings, used by one chunk at a time (its lock); bf16 autocast is
    entered around each call into the predictor, in the thread that makes it."""

    seeds_as_masks = True  # through the tracker (SAM 3); the request API takes none: see _add_seed

    def __init__(self, config: LocalConfig, *, predictor_factory: Callable[..., Any] | None = None) -> None:
        self.config = config
        self.name = config.engine
        self.device = "cuda" if config.device == "auto" else config.device
        self._factory = predictor_factory
        self._key = (config.engine, str(config.checkpoint), self.device, config.compile, id(predictor_factory))
        self._holding = False

    def _shared(self, max_num_objects: int) -> SharedPredictor:
        factory = self._factory

        def build(n: int) -> Any:
            predictor = (factory(config=self.config, max_num_objects=n) if factory is not None
                         else default_predictor_factory(self.config, n))
            return patch_init_state(predictor)  # upstream #544, also for injected predictors

        shared = shared_predictor(self._key, max_num_objects, build)
        if not self._holding:
            acquire(self._key)
            self._holding = True
        return shared

    def close(self) -> None:
        if self._holding:
            self._holding = False
            release(self._key)

    def _autocast(self) -> Any:
        """bf16 autocast for this thread (autocast state is thread-local) on CUDA only."""
        if not self.device.startswith("cuda"):
            return contextlib.nullcontext()
        try:
            import torch
        except ImportError:  # an injected predictor (tests) without torch installed
            return contextlib.nullcontext()
        if not torch.cuda.is_available():
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)

    # ---- requests -----------------------------------------------------------------------

    def _request(self, predictor: Any, request: dict[str, Any]) -> Any:
        with self._autocast():
            return predictor.handle_request(_filter_request(predictor, request))

    def _stream(self, predictor: Any, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The propagation stream, each step run under autocast (never across our yields)."""
        stream = predictor.handle_stream_request(_filter_request(predictor, request))
        try:
            while True:
                with self._autocast():
                    item = next(stream, None)
                if item is None:
                    return
                yield item
        finally:
            with contextlib.suppress(Exception):
                stream.close()

    def run_chunk(self, job: ChunkJob, cancel: CancelToken) -> Iterator[tuple[int, list[RawObject]]]:
        from PIL import Image

        shared = self._shared(job.max_num_objects)
        images = [Image.fromarray(np.ascontiguousarray(f)) for f in job.frames]
        with shared.lock:  # sessions of one predictor share its model: one chunk at a time
            predictor = shared.predictor
            next_text_id = 0
            for concept in job.concepts:
                id_map: dict[int, int] = {}
                for frame, objects in self._session_pass(predictor, images, job, cancel, concept=concept):
                    raw = []
                    for oid, score, mask in objects:
                        if oid not in id_map:
                            id_map[oid], next_text_id = next_text_id, next_text_id + 1
                        raw.append(RawObject(id_map[oid], score, mask, concept))
                    yield frame, raw
            tracker = tracker_of(predictor) if (job.visual or job.seeds) else None
            if tracker is not None:  # SAM 3: upstream's route for points, boxes and masks
                yield from run_tracker(tracker, job, cancel, offload=self.config.offload, autocast=self._autocast)
            elif job.visual or job.seeds:
                for frame, objects in self._session_pass(predictor, images, job, cancel, concept=None):
                    yield frame, [RawObject(oid, score, mask, None) for oid, score, mask in objects]

    def _session_pass(self, predictor: Any, images: list[Any], job: ChunkJob, cancel: CancelToken,
                      *, concept: str | None) -> Iterator[tuple[int, list[tuple[int, float, np.ndarray]]]]:
        """One session: start, prompt, propagate both ways from the prompted frame, close
        (also on cancel/error). Outputs below the detection threshold are dropped here: SAM 3
        ignores ``output_prob_thresh`` and SAM 3.1 applies it only to what it outputs."""
        start = {"type": "start_session", "resource_path": images, "offload_video_to_cpu": self.config.offload,
                 "offload_state_to_cpu": self.config.offload}
        session = self._request(predictor, start)["session_id"]
        try:
            thresh = job.detection_threshold
            if concept is not None:
                self._request(predictor, {"type": "add_prompt", "session_id": session, "frame_index": 0,
                                          "text": concept, "output_prob_thresh": thresh})
                first = 0
            else:
                prompted = [self._add_seed(predictor, session, seed, job, thresh) for seed in job.seeds]
                for prompt in job.visual:
                    self._add_visual(predictor, session, prompt, job, thresh)
                    prompted.append(prompt.frame)
                # Points and boxes go to the tracker, which leaves no detector output behind:
                # without a start frame the predictor raises "No prompts are received".
                first = min(prompted)
            stream = self._stream(predictor, {"type": "propagate_in_video", "session_id": session,
                                              "propagation_direction": "both", "start_frame_index": first,
                                              "output_prob_thresh": thresh})
            for item in stream:
                if cancel.cancelled:
                    self._request(predictor, {"type": "cancel_propagation", "session_id": session})
                    raise Cancelled("run cancelled; propagation stopped")
                yield int(item["frame_index"]), _objects(item.get("outputs"), thresh)
        finally:
            with contextlib.suppress(Exception):
                self._request(predictor, {"type": "close_session", "session_id": session})

    def _add_seed(self, predictor: Any, session: str, seed: Seed, job: ChunkJob, thresh: float) -> int:
        """An object carried over from the previous chunk, on the overlap frame it was last
        seen on: its mask's box plus a click on the mask's innermost pixel (the request API
        takes no mask; the box alone drifts onto neighbours)."""
        box = mask_ops.tight_box(seed.mask)
        inner = _innermost_pixel(seed.mask)
        points = () if inner is None else ((inner[0], inner[1], 1),)
        self._add_visual(predictor, session, VisualPrompt(seed.obj_id, seed.frame, points, box), job, thresh)
        return seed.frame

    def _add_visual(self, predictor: Any, session: str, prompt: VisualPrompt, job: ChunkJob, thresh: float) -> None:
        w, h = job.width, job.height
        points: list[list[float]] = []
        labels: list[int] = []
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            points += [[x0 / w, y0 / h], [x1 / w, y1 / h]]
            labels += [2, 3]  # SAM's tracker: box = top-left (2) + bottom-right (3) corner points
        for x, y, label in prompt.points:
            points.append([(x + 0.5) / w, (y + 0.5) / h])  # pixel centre, relative
            labels.append(int(label))
        self._request(predictor, {"type": "add_prompt", "session_id": session, "frame_index": prompt.frame,
                                  "points": points, "point_labels": labels, "obj_id": prompt.obj_id,
                                  "clear_old_points": True, "rel_coordinates": True, "output_prob_thresh": thresh})


def _innermost_pixel(mask: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of the mask pixel farthest from its border (a click that is surely inside)."""
    if not mask.any():
        return None
    depth = mask.astype(np.int32)
    current = mask.copy()
    while True:  # erode until nothing is left; the last survivors are the innermost
        shrunk = current.copy()
        shrunk[1:, :] &= current[:-1, :]
        shrunk[:-1, :] &= current[1:, :]
        shrunk[:, 1:] &= current[:, :-1]
        shrunk[:, :-1] &= current[:, 1:]
        shrunk[0, :] = shrunk[-1, :] = False
        shrunk[:, 0] = shrunk[:, -1] = False
        if not shrunk.any():
            break
        depth += shrunk
        current = shrunk
    ys, xs = np.nonzero(depth == depth.max())
    k = len(ys) // 2
    return int(xs[k]), int(ys[k])


def _objects(outputs: Any, thresh: float) -> list[tuple[int, float, np.ndarray]]:
    """The predictor's per-frame outputs scoring at least ``thresh`` as (id, score, bool
    mask); masks are full-size. Tracker (point/box) objects score 1.0 in both versions."""
    if not outputs:
        return []
    ids = np.asarray(outputs["out_obj_ids"]).reshape(-1)
    probs = np.asarray(outputs.get("out_probs", np.ones(len(ids))), dtype=np.float32).reshape(-1)
    masks = np.asarray(outputs["out_binary_masks"])
    return [(int(i), float(p), masks[k].astype(bool, copy=False)) for k, (i, p) in enumerate(zip(ids, probs))
            if p >= thresh]


def _filter_request(predictor: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Drop request keys the installed predictor's method for this type does not take."""
    method = getattr(predictor, _METHODS.get(request["type"], ""), None)
    if method is None:
        return request
    names, more = named_parameters(method)
    if more:
        return request
    return {k: v for k, v in request.items() if k == "type" or _PARAM_NAMES.get(k, k) in names}
