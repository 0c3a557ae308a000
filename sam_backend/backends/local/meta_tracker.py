"""Points, boxes and carried-over masks through the SAM 3 tracker's own API, the route
upstream documents for point/box video tracking (``examples/sam3_for_sam2_video_task_example
.ipynb``: ``tracker = model.tracker; tracker.backbone = model.detector.backbone``, then
``init_state`` / ``add_new_points_or_box`` / ``add_new_mask`` / ``propagate_in_video``).

Why not the request API: there, points go to ``add_tracker_new_points``, which refines the
outputs of a detector pass (``_build_tracker_output`` asserts cached detector outputs on the
frame, sam3 0.1.4), takes no mask, and leaves no detector output to start propagation from.
The tracker takes clicks, a box and a mask per object, and propagates from the prompted
frame forward and backward. Versions whose model has no such tracker (SAM 3.1 multiplex)
use the request API (see :mod:`.meta`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import Cancelled
from ..base import CancelToken
from .engine import ChunkJob, RawObject
from .meta_build import filter_kwargs

_TRACKER_VERBS = ("init_state", "add_new_points_or_box", "add_new_mask", "propagate_in_video")
_JPEG_QUALITY = 95  # the tracker's loader reads a JPEG folder; 95 keeps colours within a few levels


def tracker_of(predictor: Any) -> Any | None:
    """The model's SAM 2-style tracker with its backbone attached, or None if it has none."""
    model = getattr(predictor, "model", None)
    tracker = getattr(model, "tracker", None)
    if tracker is None or not all(callable(getattr(tracker, verb, None)) for verb in _TRACKER_VERBS):
        return None
    if getattr(tracker, "backbone", None) is None:  # as in upstream's notebook
        tracker.backbone = model.detector.backbone
    return tracker


def run_tracker(tracker: Any, job: ChunkJob, cancel: CancelToken, *, offload: bool,
                autocast: Any) -> Iterator[tuple[int, list[RawObject]]]:
    """Tracker sessions over the chunk, one per frame on which objects are first prompted:
    the tracker takes every frame holding an input as that session's conditioning output, so
    an object first prompted later would be blank on it (SAM 2's consolidation). Seeds go in
    as masks, prompts as clicks/boxes in relative coordinates; then propagation forward and
    backward from that frame."""
    first: dict[int, int] = {}
    for item in (*job.seeds, *job.visual):
        first[item.obj_id] = min(first.get(item.obj_id, item.frame), item.frame)
    with tempfile.TemporaryDirectory(prefix="sam31-frames-") as folder:
        _write_jpegs(job, Path(folder))
        for start in sorted(set(first.values())):
            objects = {oid for oid, frame in first.items() if frame == start}
            yield from _session(tracker, job, cancel, folder, start, objects, offload=offload, autocast=autocast)


def _session(tracker: Any, job: ChunkJob, cancel: CancelToken, folder: str, start: int, objects: set[int], *,
             offload: bool, autocast: Any) -> Iterator[tuple[int, list[RawObject]]]:
    import torch

    with autocast():
        state = tracker.init_state(**filter_kwargs(tracker.init_state, {
            "video_path": folder, "offload_video_to_cpu": offload, "offload_state_to_cpu": offload,
            "async_loading_frames": False}))
    w, h = job.width, job.height
    with autocast():
        for seed in job.seeds:
            if seed.obj_id in objects:
                tracker.add_new_mask(inference_state=state, frame_idx=seed.frame, obj_id=seed.obj_id,
                                     mask=torch.from_numpy(np.ascontiguousarray(seed.mask)))
        for prompt in job.visual:
            if prompt.obj_id not in objects:
                continue
            points = [[(x + 0.5) / w, (y + 0.5) / h] for x, y, _ in prompt.points]  # pixel centres
            labels = [int(label) for _, _, label in prompt.points]
            box = None
            if prompt.box is not None:
                x0, y0, x1, y1 = prompt.box
                # A tensor: upstream scales relative boxes by ``box * image_size``, which on a
                # list would repeat it (sam3 0.1.4, add_new_points_or_box).
                box = torch.tensor([x0 / w, y0 / h, x1 / w, y1 / h], dtype=torch.float32)
            tracker.add_new_points_or_box(inference_state=state, frame_idx=prompt.frame, obj_id=prompt.obj_id,
                                          points=points or None, labels=labels or None, box=box,
                                          clear_old_points=True, rel_coordinates=True)
    for reverse in (False, True):
        if reverse and start == 0:
            break
        stream = tracker.propagate_in_video(state, start_frame_idx=start, max_frame_num_to_track=len(job.frames),
                                            reverse=reverse, propagate_preflight=True)
        while True:
            with autocast():
                item = next(stream, None)
            if item is None:
                break
            if cancel.cancelled:
                raise Cancelled("run cancelled; propagation stopped")
            frame_idx, obj_ids, _, video_res_masks, obj_scores = item
            masks = (video_res_masks[:, 0] > 0).cpu().numpy()
            scores = torch.sigmoid(obj_scores.float().reshape(-1)).tolist()
            yield int(frame_idx), [RawObject(int(oid), float(scores[k]), masks[k], None) for k, oid in enumerate(obj_ids)]


def _write_jpegs(job: ChunkJob, folder: Path) -> None:
    """The chunk as ``<index>.jpg`` files, the layout upstream's JPEG-folder loader sorts."""
    from PIL import Image

    for i, frame in enumerate(job.frames):
        Image.fromarray(np.ascontiguousarray(frame)).save(folder / f"{i:05d}.jpg", quality=_JPEG_QUALITY)
