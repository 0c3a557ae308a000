"""Meta's SAM 3.1 (Object Multiplex) / SAM 3 video predictor from the ``sam3`` package,
driven through its request API (``handle_request`` / ``handle_stream_request``).

Mapping of our request (see reference/sam3-predictor.md):
- Text: a text prompt resets the session (one concept per session), so each
  comma-separated concept is its own session pass; ids are made distinct across passes.
- Points: ``add_prompt`` with ``points`` + ``point_labels`` and the object's ``obj_id``, in
  relative coordinates. Boxes with an object id go to the same tracker call as two corner
  points labelled 2 and 3 (how SAM's tracker encodes a box), so one box = one object =
  its object id, exactly like the fal backend. (``bounding_boxes`` in normalised xywh is
  the predictor's *concept* prompt: all look-alikes of the box; not what a box with an
  object id means here.)
- ``detection_threshold`` -> ``output_prob_thresh``; ``max_num_objects`` -> the builder.
- Frames are decoded by us and given as a list of PIL images (never an mp4 path).
- Every request is filtered to the keyword arguments the installed version's methods
  accept (versions differ; unexpected kwargs raise TypeError in some).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ... import masks as mask_ops
from ...errors import Cancelled
from ..base import CancelToken
from .config import CHECKPOINT_FILES, ENV_CHECKPOINT, LocalConfig
from .engine import ChunkJob, RawObject, VisualPrompt
from .errors import INSTALL_META, EngineUnavailable

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
    """Build Meta's predictor with only the builder arguments the installed version takes."""
    builder_module = importlib.import_module("sam3.model_builder")
    build = getattr(builder_module, "build_sam3_predictor", None)
    kwargs: dict[str, Any] = {
        "checkpoint_path": str(resolve_checkpoint(config)),
        "version": config.engine,
        "compile": config.compile,
        "max_num_objects": max_num_objects,
        "async_loading_frames": False,  # we hand over decoded frames; nothing to load lazily
        "load_from_HF": False,  # never download: the user supplies the checkpoint
        "device": None if config.device == "auto" else config.device,
    }
    if build is None:  # older releases: SAM 3 only, through the video builder
        if config.engine == "sam3.1":
            raise EngineUnavailable(f"the installed sam3 package has no SAM 3.1 (no build_sam3_predictor): {INSTALL_META}")
        build = builder_module.build_sam3_video_predictor
    return build(**_accepted(build, kwargs))


class MetaEngine:
    """One predictor per backend (loading weights is the slow part); one session per pass."""

    seeds_as_masks = False  # the request API takes no mask prompt: carried objects go in as boxes

    def __init__(self, config: LocalConfig, *, predictor_factory: Callable[..., Any] | None = None) -> None:
        self.config = config
        self.name = config.engine
        self.device = "cuda" if config.device == "auto" else config.device
        self._factory = predictor_factory
        self._predictor: Any = None
        self._built_for: int = 0

    def _predictor_for(self, max_num_objects: int) -> Any:
        # SAM 3.1 sizes its multiplex buckets at build time: rebuild only when more are asked.
        if self._predictor is None or max_num_objects > self._built_for:
            self.close()
            factory = self._factory
            self._predictor = (factory(config=self.config, max_num_objects=max_num_objects) if factory is not None
                               else default_predictor_factory(self.config, max_num_objects))
            self._built_for = max_num_objects
        return self._predictor

    def close(self) -> None:
        predictor, self._predictor = self._predictor, None
        shutdown = getattr(predictor, "shutdown", None)
        if callable(shutdown):
            shutdown()

    # ---- requests -----------------------------------------------------------------------

    def _request(self, predictor: Any, request: dict[str, Any]) -> Any:
        return predictor.handle_request(_filter_request(predictor, request))

    def _stream(self, predictor: Any, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return predictor.handle_stream_request(_filter_request(predictor, request))

    def run_chunk(self, job: ChunkJob, cancel: CancelToken) -> Iterator[tuple[int, list[RawObject]]]:
        from PIL import Image

        predictor = self._predictor_for(job.max_num_objects)
        images = [Image.fromarray(np.ascontiguousarray(f)) for f in job.frames]
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
        if job.visual or job.seeds:
            for frame, objects in self._session_pass(predictor, images, job, cancel, concept=None):
                yield frame, [RawObject(oid, score, mask, None) for oid, score, mask in objects]

    def _session_pass(self, predictor: Any, images: list[Any], job: ChunkJob, cancel: CancelToken,
                      *, concept: str | None) -> Iterator[tuple[int, list[tuple[int, float, np.ndarray]]]]:
        """One session: start, prompt, propagate both ways, close (also on cancel/error).

        Text passes yield every frame; the visual pass yields visual objects only."""
        session = self._request(predictor, {
            "type": "start_session", "resource_path": images,
            "offload_video_to_cpu": self.config.offload, "offload_state_to_cpu": self.config.offload,
        })["session_id"]
        try:
            thresh = job.detection_threshold
            if concept is not None:
                self._request(predictor, {"type": "add_prompt", "session_id": session, "frame_index": 0,
                                          "text": concept, "output_prob_thresh": thresh})
            else:
                for seed in job.seeds:  # carried over from the previous chunk, on its first frame
                    box = mask_ops.tight_box(seed.mask)
                    if box is not None:
                        self._add_visual(predictor, session, VisualPrompt(seed.obj_id, seed.frame, (), box), job, thresh)
                for prompt in job.visual:
                    self._add_visual(predictor, session, prompt, job, thresh)
            stream = self._stream(predictor, {"type": "propagate_in_video", "session_id": session,
                                              "propagation_direction": "both", "output_prob_thresh": thresh})
            try:
                for item in stream:
                    if cancel.cancelled:
                        self._request(predictor, {"type": "cancel_propagation", "session_id": session})
                        raise Cancelled("run cancelled; propagation stopped")
                    yield int(item["frame_index"]), _objects(item.get("outputs"))
            finally:
                with contextlib.suppress(Exception):
                    stream.close()
        finally:
            with contextlib.suppress(Exception):
                self._request(predictor, {"type": "close_session", "session_id": session})

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


def _objects(outputs: Any) -> list[tuple[int, float, np.ndarray]]:
    """The predictor's per-frame outputs as (id, score, bool mask); masks are full-size."""
    if not outputs:
        return []
    ids = np.asarray(outputs["out_obj_ids"]).reshape(-1)
    probs = np.asarray(outputs.get("out_probs", np.ones(len(ids))), dtype=np.float32).reshape(-1)
    masks = np.asarray(outputs["out_binary_masks"])
    return [(int(i), float(p), masks[k].astype(bool, copy=False)) for k, (i, p) in enumerate(zip(ids, probs))]


def _parameters(fn: Callable[..., Any]) -> Mapping[str, inspect.Parameter] | None:
    """``fn``'s named parameters; None when it takes any keyword (**kwargs) or has no signature."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return params


def _accepted(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` that ``fn`` accepts (all of them if it takes **kwargs)."""
    params = _parameters(fn)
    return kwargs if params is None else {k: v for k, v in kwargs.items() if k in params}


def _filter_request(predictor: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Drop request keys the installed predictor's method for this type does not take."""
    method = getattr(predictor, _METHODS.get(request["type"], ""), None)
    params = _parameters(method) if method is not None else None
    if params is None:
        return request
    return {k: v for k, v in request.items() if k == "type" or _PARAM_NAMES.get(k, k) in params}
