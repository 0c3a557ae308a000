"""A sample's video as the decoder and the App's player show it: the one source of frame
size and frame count for prompts, the writer, exports and imports.

FiftyOne's ``metadata`` reads the container: a phone video stored 320x240 with a 90°
rotation flag says 320x240, while every decoder and the App's player show 240x320; an edit
list or a truncated file counts frames no decoder produces. Coordinates drawn in the App
are relative to what it shows, so pixels must come from the decoded size.
"""

from __future__ import annotations

import fiftyone as fo

from .. import video as video_ops
from ..errors import InvalidRequest
from ..types import VideoInfo


def check_whole_videos(samples: fo.core.collections.SampleCollection, action: str) -> None:
    """Refuse collections that are not whole video samples: other media, and clips views,
    whose sample ids are clip ids (labels written or read under them reach no sample)."""
    if samples.media_type != "video":
        raise InvalidRequest(f"{action} needs video samples; this collection has media_type={samples.media_type!r}")
    if samples._is_clips:
        raise InvalidRequest(f"{action} runs on whole videos, not on a clips view: pass the videos (e.g. "
                             "dataset.select(clips.values('sample_id'))) and frames=FrameRange(...) for a part of each")


def sample_video(sample: fo.Sample) -> VideoInfo:
    """Decoded size (rotation applied) and decoded frame count of a video sample."""
    if sample.media_type != "video":
        raise InvalidRequest(f"sample {sample.id} is not a video")
    return video_ops.probe(sample.filepath)
