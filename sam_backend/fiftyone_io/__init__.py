"""FiftyOne glue: the only part of sam_backend (besides the plugin's operators) that imports
fiftyone. Writes tracked objects as frame-level ``fo.Detections``; ``segment_videos`` is
the SDK call, ``SamVideoModel`` the ``apply_model`` adapter."""

from .export import export_tracks, import_tracks
from .model import SamVideoModel
from .options import SampleProgress, SegmentOptions, SegmentReport
from .runs import RunStatus, redecode, resume, status
from .segment import segment_videos
from .writer import FrameLabelWriter

__all__ = [
    "FrameLabelWriter", "SampleProgress", "SamVideoModel", "SegmentOptions", "SegmentReport",
    "RunStatus", "export_tracks", "import_tracks", "redecode", "resume", "segment_videos", "status",
]
