"""Clean-ups applied to a backend's stream before it is written.

Streaming transforms only (memory stays bounded by one frame): naming visual-prompt tracks
after the labels they were prompted with, and dropping specks. Dropping short tracks
needs the whole video and happens at write time (see the writer's ``WritePolicy``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from .types import FrameResult


def clean_frames(frames: Iterable[FrameResult], *, names: Mapping[int, str] | None = None,
                 min_mask_area: int = 0) -> Iterator[FrameResult]:
    """Rename tracks found in ``names`` (track id -> label) and drop objects whose mask has
    fewer than ``min_mask_area`` pixels on that frame."""
    names = dict(names or {})
    for frame in frames:
        objects = []
        for obj in frame.objects:
            if min_mask_area and obj.area < min_mask_area:
                continue
            label = names.get(obj.track_id)
            objects.append(obj if label is None or label == obj.label else obj.with_label(label))
        yield FrameResult(frame.frame_index, objects)
