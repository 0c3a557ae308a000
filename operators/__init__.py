"""The plugin's App operators. Each is thin: it parses its form and calls sam_backend.fiftyone_io."""

from .prepare_prompts import PreparePrompts
from .segment_video import SegmentVideo

OPERATORS = [SegmentVideo, PreparePrompts]

__all__ = ["OPERATORS", "PreparePrompts", "SegmentVideo"]
