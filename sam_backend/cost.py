"""What a fal run will cost, from the endpoint table (``backends/fal/endpoints.py``).

A video is several fal requests (one per visual object, one per text concept: see
``backends/fal/planner.py``), each billed per started block of 16 frames at its
endpoint's price. What fal actually billed comes back in ``x-fal-billable-units`` and is
recorded with the labels after each run.
"""

from __future__ import annotations

from collections.abc import Sequence

from .backends.base import CostEstimate
from .backends.fal.endpoints import SAM3_VIDEO_RLE_OBJECTS, SAM31_VIDEO_RLE, plan_cost
from .backends.fal.planner import TextMode, plan
from .errors import OverBudget
from .types import SegmentRequest


def fal_estimate(request: SegmentRequest, frames: int, *, endpoint: str = SAM31_VIDEO_RLE,
                 objects_endpoint: str = SAM3_VIDEO_RLE_OBJECTS,
                 text_mode: TextMode = "instances") -> tuple[float | None, str]:
    """What one video with ``request`` costs on fal over ``frames`` frames (every planned request)."""
    planned = plan(request, visual_endpoint=endpoint, objects_endpoints=[objects_endpoint], text_mode=text_mode,
                   fallbacks={})
    return plan_cost(planned, frames)


def dollars(usd: float) -> str:
    """``$0.045``, ``$0.05``, ``$12.30``: fal's prices are half-cents, so two decimals would
    show a $0.045 estimate as $0.04 and a user setting the cap from it would be refused."""
    cents = round(usd, 2)
    return f"${usd:,.2f}" if abs(usd - cents) < 1e-9 else f"${usd:,.3f}" if abs(usd - round(usd, 3)) < 1e-9 \
        else f"${usd:,.4f}"


def total_usd(estimates: Sequence[CostEstimate]) -> float | None:
    """The run's cost: the sum of its videos' estimates; None when any is unpriced or free."""
    if not estimates or any(e.usd is None for e in estimates):
        return None
    return sum(e.usd or 0.0 for e in estimates)


def check_budget(estimates: Sequence[CostEstimate], max_usd: float | None, *, stored_usd: float = 0.0) -> None:
    """Refuse a run whose estimate, less ``stored_usd`` (results already paid for that the
    run takes from the journal), is above ``max_usd`` (or whose cost cannot be known),
    before anything is sent. Free backends (local) always pass."""
    billed = [e for e in estimates if e.billed]
    if max_usd is None or not billed:
        return
    frames = sum(e.frames for e in billed)
    scope = f"{len(billed)} video(s), {frames:,} frames"
    unpriced = next((e for e in billed if e.usd is None), None)
    if unpriced is not None:
        raise OverBudget(f"max_usd={dollars(max_usd)} cannot be kept: {unpriced.detail}, so this run's cost ({scope}) is "
                         "unknown. Nothing was sent; pick a priced endpoint, or leave max_usd unset to run anyway")
    total = total_usd(billed)
    assert total is not None
    usd = round(max(0.0, total - stored_usd), 6)  # sums of cents: no 0.045000000000000005 over a 0.045 cap
    if usd > max_usd:
        paid = (f"; {dollars(stored_usd)} of the {dollars(total)} estimate is already paid: results in the journal"
                if stored_usd else "")
        raise OverBudget(f"this run is estimated at {dollars(usd)} ({scope}{paid}), above max_usd="
                         f"{dollars(max_usd)}. Nothing was sent. First video: {billed[0].detail}. Send fewer "
                         "frames (a frame range or step), fewer concepts or objects, or fewer videos, or raise max_usd")
