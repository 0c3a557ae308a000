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


def sample_video(sample: fo.Sample) -> VideoInfo:
    """Decoded size (rotation applied) and decoded frame count of a video sample."""
    if sample.media_type != "video":
        raise InvalidRequest(f"sample {sample.id} is not a video")
    return video_ops.probe(sample.filepath)
