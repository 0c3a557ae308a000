"""The plugin's App operators. Each is thin: it parses its form and calls sam_backend.fiftyone_io."""

from .segment_video import SegmentVideo

OPERATORS = [SegmentVideo]

__all__ = ["OPERATORS", "SegmentVideo"]
