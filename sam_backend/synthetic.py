"""Synthetic videos of moving coloured shapes, with exact ground-truth masks and ids.

Each object has its own palette colour, so a colour-keyed segmenter (the emulator's toy
model) can find it, and the ground truth is known per pixel. The palette's colours have
well separated luma (Y), so they survive H.264's 4:2:0 chroma subsampling: Y is stored at
full resolution, which keeps decoded masks within a pixel of the rendered ones.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Literal

import numpy as np

from . import masks as mask_ops
from .video import encode_rgb_frames

# name -> RGB. Background is black (Y=0). Luma (BT.601) of each, for the record:
# blue 58, red 96, green 142, cyan 190, yellow 225, white 255: at least 30 apart.
PALETTE: dict[str, tuple[int, int, int]] = {
    "blue": (20, 40, 255),
    "red": (250, 30, 30),
    "green": (40, 210, 60),
    "cyan": (90, 230, 250),
    "yellow": (250, 240, 80),
    "white": (255, 255, 255),
}
BACKGROUND = (0, 0, 0)
# The kind of object each colour is drawn as in the scenes here (balls are circles, boxes
# rectangles), so a text concept like "ball" names several instances and "red ball" one.
KINDS: dict[str, tuple[str, ...]] = {"ball": ("red", "green", "yellow"), "box": ("blue", "cyan", "white")}


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """One object: a filled circle or rectangle moving along straight segments.

    ``keyframes`` are (frame_index, centre_x, centre_y); the object exists from the first
    to the last keyframe (inclusive), so it can enter late and leave early; centres may
    lie outside the frame to slide in or out across the border. Higher ``z`` draws on top.
    """

    name: str
    colour: str
    kind: Literal["circle", "rect"]
    half_w: int
    half_h: int
    keyframes: tuple[tuple[int, float, float], ...]
    z: int = 0

    def centre(self, frame_index: int) -> tuple[float, float] | None:
        kf = self.keyframes
        if frame_index < kf[0][0] or frame_index > kf[-1][0]:
            return None
        for (f0, x0, y0), (f1, x1, y1) in zip(kf, kf[1:]):
            if f0 <= frame_index <= f1:
                t = 0.0 if f1 == f0 else (frame_index - f0) / (f1 - f0)
                return x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        return kf[-1][1], kf[-1][2]


@dataclasses.dataclass(frozen=True)
class Scene:
    width: int
    height: int
    frame_count: int
    fps: str  # a string so odd rates like "30000/1001" stay exact
    shapes: tuple[ShapeSpec, ...]

    def shape(self, name: str) -> ShapeSpec:
        return next(s for s in self.shapes if s.name == name)


def default_scene(frame_count: int = 96, width: int = 320, height: int = 240, fps: str = "30000/1001") -> Scene:
    """Three objects that enter, leave and cross, at an odd frame rate (29.97 fps).

    - red ball: crosses the frame left to right, passing over the blue box.
    - blue box: drifts right to left, then leaves through the left border.
    - green ball: enters late from the bottom, crosses under the red ball, leaves at the top.

    Geometry is laid out for 320x240 and scaled to ``width`` x ``height``. Keep motion at
    a few pixels per frame (e.g. >= 48 frames at 160x120): much faster motion makes H.264
    smear edges enough for the luma-keyed toy segmenter to misread a few pixels.
    """
    n = frame_count - 1
    sx, sy = width / 320, height / 240

    def kf(*points: tuple[float, float, float]) -> tuple[tuple[int, float, float], ...]:
        return tuple((int(round(f * n)), x * sx, y * sy) for f, x, y in points)

    return Scene(
        width=width,
        height=height,
        frame_count=frame_count,
        fps=fps,
        shapes=(
            ShapeSpec("blue box", "blue", "rect", round(34 * sx), round(24 * sy),
                      kf((0, 230, 120), (0.6, 120, 110), ((n - 6) / n, -40, 100)), z=0),
            ShapeSpec("red ball", "red", "circle", round(26 * sx), round(26 * sy), kf((0, 30, 110), (1, 300, 130)), z=2),
            ShapeSpec("green ball", "green", "circle", round(20 * sx), round(20 * sy),
                      kf((0.25, 170, 262), (0.75, 150, -25)), z=1),
        ),
    )


def instances_scene(frame_count: int = 64, width: int = 256, height: int = 192, fps: str = "25") -> Scene:
    """Two balls and two boxes (two concepts, two instances each) that enter in an order
    unlike their palette order (the cyan box first, the green ball last), and overlap."""
    n = frame_count - 1
    sx, sy = width / 256, height / 192

    def kf(*points: tuple[float, float, float]) -> tuple[tuple[int, float, float], ...]:
        return tuple((int(round(f * n)), x * sx, y * sy) for f, x, y in points)

    return Scene(
        width=width, height=height, frame_count=frame_count, fps=fps,
        shapes=(
            ShapeSpec("cyan box", "cyan", "rect", round(22 * sx), round(16 * sy), kf((0, 200, 40), (1, 150, 60))),
            ShapeSpec("blue box", "blue", "rect", round(18 * sx), round(26 * sy), kf((0.1, 40, 140), (1, 90, 120))),
            ShapeSpec("red ball", "red", "circle", round(16 * sx), round(16 * sy), kf((0.2, 120, 100), (0.9, 60, 40))),
            ShapeSpec("green ball", "green", "circle", round(13 * sx), round(13 * sy), kf((0.5, 210, 160), (1, 180, 120)), z=1),
        ),
    )


def _shape_mask(shape: ShapeSpec, centre: tuple[float, float], height: int, width: int) -> np.ndarray:
    cx, cy = centre
    yy, xx = np.ogrid[:height, :width]
    if shape.kind == "circle":
        return ((xx - cx) / shape.half_w) ** 2 + ((yy - cy) / shape.half_h) ** 2 <= 1.0
    return (np.abs(xx - cx) <= shape.half_w) & (np.abs(yy - cy) <= shape.half_h)


def render_frame(scene: Scene, frame_index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The RGB frame and each visible object's mask (after occlusion) on it."""
    image = np.empty((scene.height, scene.width, 3), np.uint8)
    image[:] = BACKGROUND
    owner = np.full((scene.height, scene.width), -1, np.int16)
    for i, shape in sorted(enumerate(scene.shapes), key=lambda t: t[1].z):
        c = shape.centre(frame_index)
        if c is None:
            continue
        m = _shape_mask(shape, c, scene.height, scene.width)
        owner[m] = i
        image[m] = PALETTE[shape.colour]
    visible = {}
    for i, shape in enumerate(scene.shapes):
        m = owner == i
        if m.any():
            visible[shape.name] = m
    return image, visible


@dataclasses.dataclass
class GroundTruth:
    """Per object name, the RLE mask on every frame where it is visible."""

    scene: Scene
    masks: dict[str, dict[int, dict]]  # name -> frame_index -> COCO RLE

    def mask(self, name: str, frame_index: int) -> np.ndarray | None:
        rle = self.masks[name].get(frame_index)
        return None if rle is None else mask_ops.decode_rle(rle)

    def frames_visible(self, name: str) -> list[int]:
        return sorted(self.masks[name])


def ground_truth(scene: Scene) -> GroundTruth:
    gt: dict[str, dict[int, dict]] = {s.name: {} for s in scene.shapes}
    for f in range(scene.frame_count):
        _, visible = render_frame(scene, f)
        for name, m in visible.items():
            gt[name][f] = mask_ops.encode_rle(m)
    return GroundTruth(scene, gt)


def frames(scene: Scene) -> Iterator[np.ndarray]:
    for f in range(scene.frame_count):
        yield render_frame(scene, f)[0]


def write_video(scene: Scene, path: str | os.PathLike[str]) -> GroundTruth:
    """Encode the scene to ``path`` (H.264 MP4) and return its ground truth."""
    encode_rgb_frames(frames(scene), path, width=scene.width, height=scene.height, fps=scene.fps)
    return ground_truth(scene)
