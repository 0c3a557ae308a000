"""A FiftyOne video ``Model`` so ``dataset.apply_model(model, label_field=...)`` works.

FiftyOne opens each video with its own reader and stores what ``predict`` returns (a dict
of frame number -> ``fo.Detections``) through ``sample.add_labels``. That is FiftyOne's
generic, slower write path; :func:`segment_videos` is the fast one with the same labels.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import fiftyone as fo
from fiftyone.core.models import Model

from .. import video as video_ops
from ..backends.base import Backend, VideoSource, get_backend
from ..coords import frame_number_from_index
from ..errors import InvalidRequest
from ..postprocess import clean_frames
from ..types import FrameResult
from .labels import to_detections
from .options import SegmentOptions


# The settings of segment_videos that apply_model's loop can honour. The others need
# segment_videos itself: prompts per video (prompt_fields, selections, refine), its writer
# (mask_dir, overwrite), its run bookkeeping (run_key, concurrency, ...).
MODEL_OPTIONS = ("backend", "backend_options", "prompt", "point_prompts", "box_prompts", "detection_threshold",
                 "max_num_objects", "frames", "min_mask_area", "min_track_frames")


class SamVideoModel(Model):
    """SAM 3.1 video segmentation as a FiftyOne model.

    Takes the settings of :func:`segment_videos` that apply to one video at a time
    (:data:`MODEL_OPTIONS`: prompts, threshold, ``frames``, the clean-ups, ``backend``);
    any other is refused rather than ignored. ``apply_model`` enters the model as a
    context manager; on exit a backend the model built itself is closed (for
    ``backend="emulator"`` that stops the emulator) and built again if the model is used again.
    """

    def __init__(self, options: SegmentOptions | None = None, *, backend: str | Backend | None = None, **option_fields: Any) -> None:
        if isinstance(backend, str):
            option_fields["backend"], backend = backend, None
        self.options = SegmentOptions.build(options, **option_fields)
        defaults = SegmentOptions()
        ignored = [k for k in SegmentOptions.model_fields
                   if k not in MODEL_OPTIONS and getattr(self.options, k) != getattr(defaults, k)]
        if ignored:
            raise InvalidRequest(f"SamVideoModel cannot use {', '.join(ignored)} (apply_model writes one video's "
                                 f"labels at a time, through FiftyOne); use segment_videos for "
                                 f"{'them' if len(ignored) > 1 else 'it'}. The model takes: {', '.join(MODEL_OPTIONS)}")
        self.request = self.options.request()  # shape errors now, not on the first video
        self._given = backend
        self._owned: Backend | None = None

    def _backend(self) -> Backend:
        if self._given is not None:
            return self._given
        if self._owned is None:
            self._owned = get_backend(self.options.backend, **self.options.backend_options)
        return self._owned

    @property
    def media_type(self) -> str:
        return "video"

    @property
    def ragged_batches(self) -> bool:
        return False

    @property
    def transforms(self) -> None:
        return None

    @property
    def preprocess(self) -> bool:
        return False

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        pass

    def predict(self, arg: Any) -> dict[int, fo.Detections]:
        """``arg`` is the video reader FiftyOne opened (or a path): labels per frame number."""
        path = Path(getattr(arg, "inpath", arg))
        info = video_ops.probe(path)
        # Keyed by the file (the model never sees the sample): a rerun after a crash, or of
        # the same prompt on the same file, takes fal's journaled request instead of paying again.
        run = self._backend().segment(VideoSource(info=info, path=path), self.request, frames=self.options.frames,
                                      work_key=f"apply_model:{path.resolve()}")
        frames = list(clean_frames(run, min_mask_area=self.options.min_mask_area))
        if callable(commit := getattr(run, "commit", None)):
            commit()  # FiftyOne stores the labels next; the stored result stays until pruned
        seen = collections.Counter(o.track_id for f in frames for o in f.objects)
        short = {t for t, n in seen.items() if n < self.options.min_track_frames}
        return {frame_number_from_index(f.frame_index):
                to_detections(FrameResult(f.frame_index, [o for o in f.objects if o.track_id not in short]),
                              info.width, info.height)
                for f in frames}

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> SamVideoModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
