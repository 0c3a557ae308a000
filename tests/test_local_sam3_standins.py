"""Stand-ins for the parts of Meta's sam3 that cannot run here, for tests/test_local_sam3_real.py
(no tests in this module; it is imported only inside the sam3 test venv).

Only these are replaced; everything around them is upstream's code:
- CUDA: a TorchFunctionMode maps ``device="cuda"`` to the CPU, ``.cuda()`` / ``pin_memory``
  are no-ops, and the few ``torch.cuda`` queries the predictor makes answer as one device.
- Weights: ``load_state_dict`` of the video model records the call (nothing to download).
- Network forwards, which "see" by colour with the emulator's luma key (as the contract fake):
  ``Sam3VideoBase._det_track_one_frame`` (a text session's detector + tracker step),
  ``Sam3TrackerPredictor._get_image_feature`` (image encoder), ``Sam3TrackerBase.track_step``
  (SAM heads with memory attention: clicks, boxes and masks on a conditioning frame, memory
  elsewhere) and ``Sam3TrackerBase._encode_new_memory`` (memory encoder: the colour under
  the mask). The memory carries each object's colour, so tracking goes through upstream's
  memory bookkeeping, not around it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

BACKEND_OPTIONS = {"max_num_objects": 8}
_MODE: Any = None  # the CUDA-to-CPU torch function mode class, once installed
_NONE = -1.0  # memory value of an object with no colour (not visible)
LOADED: list[int] = []


def install_standins() -> None:
    import torch
    from torch.overrides import TorchFunctionMode

    if getattr(torch, "_sam31_standins", False):
        return
    torch._sam31_standins = True  # type: ignore[attr-defined]

    def cpu(device: Any) -> Any:
        if isinstance(device, str) and device.startswith("cuda"):
            return "cpu"
        if isinstance(device, torch.device) and device.type == "cuda":
            return torch.device("cpu")
        return device

    class CudaToCpu(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = dict(kwargs or {})
            if "device" in kwargs:
                kwargs["device"] = cpu(kwargs["device"])
            name = getattr(func, "__name__", "")
            if name in ("cuda", "pin_memory"):
                return args[0]
            if name == "to":
                args = tuple(cpu(a) for a in args)
            return func(*args, **kwargs)

    global _MODE
    _MODE = CudaToCpu

    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.cuda.current_device = lambda: 0
    torch.cuda.set_device = lambda device: None
    torch.cuda.device_count = lambda: 1
    torch.cuda.get_device_properties = lambda *a, **k: "CPU (test stand-in)"
    torch.cuda.get_arch_list = lambda: []
    for name in ("memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved"):
        setattr(torch.cuda, name, lambda *a, **k: 0)
    CudaToCpu().__enter__()  # for the test's main thread (torch function modes are per thread)

    from sam3.model import sam3_tracker_base, sam3_tracking_predictor, sam3_video_base, sam3_video_inference

    def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: ANN001
        LOADED.append(len(state_dict))
        return [], []

    sam3_video_inference.Sam3VideoInferenceWithInstanceInteractivity.load_state_dict = load_state_dict
    sam3_video_base.Sam3VideoBase._det_track_one_frame = _det_track_one_frame
    sam3_tracking_predictor.Sam3TrackerPredictor._get_image_feature = _get_image_feature
    sam3_tracker_base.Sam3TrackerBase.track_step = _track_step
    sam3_tracker_base.Sam3TrackerBase._encode_new_memory = _encode_new_memory


def cpu_mode() -> Any:
    """The CUDA-to-CPU mapping for another thread (torch function modes are thread-local)."""
    return _MODE()


# ---- seeing by colour -------------------------------------------------------------------


def _labels_of(image: Any, mean: Any, std: Any, size: tuple[int, int] | None = None) -> np.ndarray:
    """The emulator's colour labels of a normalised (3, S, S) model input, at ``size`` (h, w)."""
    from PIL import Image

    from sam_backend.emulator.segmenter import classify

    rgb = (image.float().cpu() * std + mean).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    grey = Image.fromarray(rgb).convert("L")
    if size is not None:
        grey = grey.resize((size[1], size[0]), Image.BILINEAR)
    return classify(np.asarray(grey))


def _opened(mask: np.ndarray) -> np.ndarray:
    """``mask`` without one-pixel streaks (a 3x3-cross opening): resampling the frame to the
    model's 1008x1008 and back leaves blended edge pixels whose luma is another colour's."""
    def erode(m: np.ndarray) -> np.ndarray:
        out = m.copy()
        out[1:, :] &= m[:-1, :]
        out[:-1, :] &= m[1:, :]
        out[:, 1:] &= m[:, :-1]
        out[:, :-1] &= m[:, 1:]
        return out

    def dilate(m: np.ndarray) -> np.ndarray:
        out = m.copy()
        out[1:, :] |= m[:-1, :]
        out[:-1, :] |= m[1:, :]
        out[:, 1:] |= m[:, :-1]
        out[:, :-1] |= m[:, 1:]
        return out

    return dilate(erode(mask)) & mask


def _det_track_one_frame(self, frame_idx, num_frames, reverse, input_batch, geometric_prompt, tracker_states_local,
                         tracker_metadata_prev, feature_cache, orig_vid_height, orig_vid_width, is_image_only=False,
                         allow_new_detections=True):  # noqa: ANN001 - upstream's signature
    import torch

    from sam_backend.emulator.segmenter import concept_colours

    mean = torch.tensor(self.image_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(self.image_std, dtype=torch.float32)[:, None, None]
    labels = _labels_of(input_batch.img_batch[frame_idx], mean, std, (orig_vid_height, orig_vid_width))
    metadata = tracker_metadata_prev if tracker_metadata_prev else self._initialize_metadata()
    colour_ids: dict[int, int] = metadata.setdefault("standin_colour_ids", {})
    text = input_batch.find_text_batch[0]
    wanted = concept_colours(text) if text not in ("<text placeholder>", "visual") else []
    counts = np.bincount(labels.ravel(), minlength=256)
    new = [c for c in wanted if c not in colour_ids and counts[c] > 0]
    leftmost = {c: int(np.flatnonzero((labels == c).any(axis=0))[0]) for c in new}
    for colour in sorted(new, key=lambda c: (leftmost[c], c)):
        if allow_new_detections and len(colour_ids) < self.max_num_objects:
            metadata["max_obj_id"] += 1
            colour_ids[colour] = metadata["max_obj_id"]
    masks = {oid: torch.from_numpy(_opened(labels == colour))[None] for colour, oid in colour_ids.items()}
    scores = {oid: 0.9 for oid in masks}
    metadata["obj_id_to_score"].update(scores)
    metadata["obj_id_to_tracker_score_frame_wise"][frame_idx].update(scores)
    ids = np.array(sorted(masks), dtype=np.int64)
    metadata["obj_ids_per_gpu"], metadata["obj_ids_all_gpu"] = [ids], ids
    metadata["num_obj_per_gpu"] = np.array([len(ids)], dtype=np.int64)
    stats = {"num_obj_tracked": len(ids), "num_obj_dropped": 0}
    return masks, scores, tracker_states_local, metadata, stats, torch.zeros(0)


def _tracker_norm(self) -> tuple[Any, Any]:
    """Mean/std the tracker's JPEG loader normalised with (its signature's defaults)."""
    import torch

    from sam3.model.utils import sam2_utils

    params = inspect.signature(sam2_utils.load_video_frames_from_jpg_images).parameters
    mean = torch.tensor(params["img_mean"].default, dtype=torch.float32)[:, None, None]
    std = torch.tensor(params["img_std"].default, dtype=torch.float32)[:, None, None]
    return mean, std


def _get_image_feature(self, inference_state, frame_idx, batch_size):  # noqa: ANN001
    """Image encoder stand-in: the 'features' are the frame's colour labels at model size."""
    import torch

    image = inference_state["images"][frame_idx].float().unsqueeze(0)
    cache = inference_state.setdefault("standin_labels", {})
    if frame_idx not in cache:
        mean, std = _tracker_norm(self)
        cache[frame_idx] = torch.from_numpy(_labels_of(image[0], mean, std).astype(np.int64))
    labels = cache[frame_idx]
    return image.expand(batch_size, -1, -1, -1), None, [labels], [None], [tuple(labels.shape)]


def _colour_under(labels: Any, mask: Any) -> float:
    from sam_backend.emulator.segmenter import BACKGROUND_LABEL

    picked = labels[mask]
    if picked.numel() == 0:
        return _NONE
    hist = np.bincount(picked.numpy().ravel(), minlength=256)
    hist[BACKGROUND_LABEL] = 0
    return float(hist.argmax()) if hist.any() else _NONE


def _track_step(self, frame_idx, is_init_cond_frame, current_vision_feats, current_vision_pos_embeds, feat_sizes, image,
                point_inputs, mask_inputs, output_dict, num_frames, track_in_reverse=False, run_mem_encoder=True,
                prev_sam_mask_logits=None, use_prev_mem_frame=True, **more):  # noqa: ANN001
    """SAM heads + memory attention stand-in: a click, box or mask names a colour on a
    conditioning frame; elsewhere each object's colour comes from its nearest memory."""
    import torch
    import torch.nn.functional as F

    from sam_backend.emulator.segmenter import BACKGROUND_LABEL

    labels = current_vision_feats[-1]
    size = labels.shape[0]
    batch = image.shape[0]
    colours = []
    for b in range(batch):
        if point_inputs is not None:
            coords = point_inputs["point_coords"][b].float().cpu()
            kinds = point_inputs["point_labels"][b].cpu().tolist()
            picked: set[float] = set()
            k = 0
            while k < len(kinds):
                if kinds[k] == 2 and k + 1 < len(kinds) and kinds[k + 1] == 3:  # a box: its main colour
                    (x0, y0), (x1, y1) = coords[k].tolist(), coords[k + 1].tolist()
                    box = torch.zeros_like(labels, dtype=torch.bool)
                    box[max(int(y0), 0):max(int(np.ceil(y1)), 0), max(int(x0), 0):max(int(np.ceil(x1)), 0)] = True
                    colour = _colour_under(labels, box)
                    if colour != _NONE:
                        picked.add(colour)
                    k += 2
                    continue
                x, y = coords[k].tolist()
                colour = float(labels[min(max(int(y), 0), size - 1), min(max(int(x), 0), size - 1)])
                if colour != BACKGROUND_LABEL:
                    picked.add(colour) if kinds[k] == 1 else picked.discard(colour)
                k += 1
            colours.append(min(picked) if picked else _NONE)
        elif mask_inputs is not None:
            mask = F.interpolate(mask_inputs[b:b + 1].float(), size=(size, size), mode="nearest")[0, 0] > 0.5
            colours.append(_colour_under(labels, mask))
        else:
            colours.append(_remembered(output_dict, frame_idx, track_in_reverse, b))
    masks = torch.stack([labels == c if c != _NONE else torch.zeros_like(labels, dtype=torch.bool) for c in colours])
    logits_hi = (masks.float() * 20 - 10)[:, None]
    low = self.low_res_mask_size
    logits_low = F.interpolate(logits_hi, size=(low, low), mode="bilinear", align_corners=False)
    visible = masks.flatten(1).any(dim=1)
    out = {
        "pred_masks": logits_low,
        "pred_masks_high_res": logits_hi,
        "obj_ptr": torch.zeros(batch, self.hidden_dim),
        "object_score_logits": (visible.float() * 20 - 10)[:, None],
        "maskmem_features": None,
        "maskmem_pos_enc": None,
        "iou_score": visible.float()[:, None],  # read when the tracker selects memories by IoU
        "eff_iou_score": visible.float()[:, None],
    }
    if run_mem_encoder:
        out["maskmem_features"], out["maskmem_pos_enc"] = _memory(colours)
    return out


def _memory(colours: list[float]) -> tuple[Any, list[Any]]:
    import torch

    features = torch.tensor(colours, dtype=torch.float32).view(-1, 1, 1, 1)
    return features, [torch.zeros_like(features)]


def _encode_new_memory(self, image, current_vision_feats, feat_sizes, pred_masks_high_res, object_score_logits,
                       is_mask_from_pts, output_dict=None, is_init_cond_frame=False):  # noqa: ANN001
    """Memory encoder stand-in: remembers the colour under each (final) mask."""
    import torch.nn.functional as F

    labels = current_vision_feats[-1]
    size = labels.shape[0]
    masks = F.interpolate(pred_masks_high_res.float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0] > 0
    return _memory([_colour_under(labels, m) for m in masks])


def _remembered(output_dict: dict, frame_idx: int, reverse: bool, b: int) -> float:
    """Object ``b``'s colour from its nearest memory before this frame in tracking order
    (a hidden object remembers nothing; look further back)."""
    frames: dict[int, Any] = {**output_dict["non_cond_frame_outputs"], **output_dict["cond_frame_outputs"]}
    order = sorted((f for f in frames if (f > frame_idx if reverse else f < frame_idx)), key=lambda f: abs(f - frame_idx))
    order += sorted((f for f in frames if f not in order and f != frame_idx), key=lambda f: abs(f - frame_idx))
    for f in order:
        memory = frames[f].get("maskmem_features")
        if memory is not None and b < memory.shape[0] and float(memory[b].flatten()[0]) != _NONE:
            return float(memory[b].flatten()[0])
    return _NONE


# ---- the backend under test -------------------------------------------------------------


def make_backend(folder: Path, **options: Any) -> Any:
    """The local backend with engine 'sam3' built by the production factory (only the CUDA
    preflight is skipped): a stand-in checkpoint and tokenizer vocabulary in ``folder``."""
    import gzip

    import torch

    install_standins()
    from sam_backend.backends.local import LocalBackend, LocalConfig
    from sam_backend.backends.local.meta import default_predictor_factory
    from sam_backend.backends.local.meta_build import BPE_FILE

    torch.save({"model": {}}, folder / "sam3.pt")
    merges = ["#version: 0.2", "r e", "re d</w>", "b a", "ba l", "bal l</w>", "b o", "bo x</w>", "g r", "gr e",
              "gre e", "gree n</w>", "b l", "bl u", "blu e</w>"]
    with gzip.open(folder / BPE_FILE, "wt") as fh:
        fh.write("\n".join(merges) + "\n")
    config = LocalConfig(engine="sam3", checkpoint=folder, device="cuda", **options)
    return LocalBackend(config, predictor_factory=default_predictor_factory)


def write_scene(path: Path, frames: int) -> tuple[Path, Any]:
    from sam_backend import synthetic

    return path, synthetic.write_video(synthetic.default_scene(frame_count=frames, width=160, height=120), path)


def run_request(backend: Any, path: Path, *, chunk_size: int | None = None, overlap: int | None = None,
                **request: Any) -> list[Any]:
    from sam_backend.backends.base import VideoSource
    from sam_backend.types import SegmentRequest
    from sam_backend.video import probe

    if chunk_size is not None:
        backend.config = backend.config.model_copy(update={"chunk_size": chunk_size, "overlap": overlap})
    req = SegmentRequest.build(max_num_objects=BACKEND_OPTIONS["max_num_objects"], **request)
    return list(backend.segment(VideoSource(info=probe(path), path=path), req))
