"""Prices, in one table that is easy to update, and the estimate built from them.

fal bills these endpoints per started block of 16 video frames (public pricing pages,
read 2026-11): SAM 3.1 about $0.01, SAM 3 about $0.005. The RLE variants are assumed to
cost what their model's rendered-video endpoint costs. What fal actually billed comes back
in the ``x-fal-billable-units`` response header and is recorded after each run.
"""

from __future__ import annotations

import math

FRAMES_PER_UNIT = 16

# endpoint id -> USD per block of FRAMES_PER_UNIT frames
FAL_PRICES_USD: dict[str, float] = {
    "fal-ai/sam-3-1/video": 0.01,
    "fal-ai/sam-3-1/video-rle": 0.01,
    "fal-ai/sam-3/video": 0.005,
    "fal-ai/sam-3/video-rle": 0.005,
}


def fal_cost_usd(endpoint: str, frames: int) -> float | None:
    """Expected charge for one request over ``frames`` frames; None for unknown endpoints."""
    price = FAL_PRICES_USD.get(endpoint)
    if price is None:
        return None
    return math.ceil(frames / FRAMES_PER_UNIT) * price
