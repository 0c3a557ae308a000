"""What a fal run will cost, from the endpoint table (``backends/fal/endpoints.py``).

A video is several fal requests (one per visual object, one per text concept: see
``backends/fal/planner.py``), each billed per started block of 16 frames at its
endpoint's price. What fal actually billed comes back in ``x-fal-billable-units`` and is
recorded with the labels after each run.
"""

from __future__ import annotations

from .backends.fal.endpoints import SAM3_VIDEO_RLE_OBJECTS, SAM31_VIDEO_RLE, plan_cost
from .backends.fal.planner import TextMode, plan
from .types import SegmentRequest


def fal_estimate(request: SegmentRequest, frames: int, *, endpoint: str = SAM31_VIDEO_RLE,
                 objects_endpoint: str = SAM3_VIDEO_RLE_OBJECTS,
                 text_mode: TextMode = "instances") -> tuple[float | None, str]:
    """What one video with ``request`` costs on fal over ``frames`` frames (every planned request)."""
    planned = plan(request, visual_endpoint=endpoint, objects_endpoints=[objects_endpoint], text_mode=text_mode,
                   fallbacks={})
    return plan_cost(planned, frames)
