"""The plugin's App operators. Each is thin: it parses its form and calls sam_backend.fiftyone_io."""

from .export_tracks import ExportTracks
from .prepare_prompts import PreparePrompts
from .prompt_panel import PromptPanel
from .segment_video import SegmentVideo
from .segmentation_runs import SegmentationRuns

OPERATORS = [SegmentVideo, PreparePrompts, PromptPanel, SegmentationRuns, ExportTracks]

__all__ = ["OPERATORS", "ExportTracks", "PreparePrompts", "PromptPanel", "SegmentVideo", "SegmentationRuns"]
