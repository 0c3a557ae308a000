"""The "SAM prompts" panel in the real App, driven by a real browser (Debian's Chromium
through Playwright): pick a frame, click on an object, draw a box with two clicks, press
Segment, run the form on the emulator, and get tracks with the chosen ids.

Needs the ``chromium`` binary (scripts/setup.sh installs it with apt) and the ``playwright``
package (a test extra; it drives the system Chromium, no browser download).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import fiftyone as fo
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from sam_backend import masks as mask_ops
from sam_backend.coords import pixel_box
from test_click_prompts import _inside

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh installs it)")
# No GPU, no sandbox (root in a container), no background network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Marks the session as automated (the App then skips its Enterprise promo pop-up).
INIT_SCRIPT = "window.IS_PLAYWRIGHT=true; localStorage.setItem('fiftyone-enterprise-tooltip-seen','true');"
UI_TIMEOUT_MS = 90_000  # the first modal load decodes the video: seconds on 2 cores
# Where to keep screenshots (e.g. docs/ to refresh the README's); a temp folder otherwise.
SHOTS = os.environ.get("SAM31_SCREENSHOTS")


@pytest.fixture
def page(tmp_path: Path) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.add_init_script(INIT_SCRIPT)
        page.set_default_timeout(UI_TIMEOUT_MS)
        yield page
        browser.close()


class PromptPanel:
    """The panel's DOM, as FiftyOne 1.22 renders it (data-cy hooks, MUI roles, Plotly SVG)."""

    def __init__(self, page, shots: Path, width: int, height: int):
        self.page, self.shots, self.width, self.height = page, shots, width, height

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"panel-{name}.png"))

    def open(self) -> None:
        self.page.wait_for_selector("[data-cy=modal-looker-container] canvas")
        time.sleep(2)
        tab = self.page.locator("[data-cy=panel-tab-sam_prompts]")
        if not tab.count():  # not open yet in this App session: add it with the modal's "+"
            self.page.locator("[data-cy=modal] [data-cy=new-panel-btn]").click()
            self.page.get_by_text("SAM prompts", exact=True).click()
        tab.click()
        self.wait_image()

    def wait_image(self) -> None:
        self.page.wait_for_selector("[data-cy=modal] .js-plotly-plot image")
        time.sleep(1.5)

    def current_frame(self) -> int:
        text = self.page.get_by_text(re.compile(r"^Frame \d+:")).first.inner_text()
        return int(re.match(r"Frame (\d+):", text).group(1))

    def go_to_frame(self, number: int) -> None:
        """Step the slider with its arrow keys until the panel shows frame ``number``. The
        panel re-renders after each change and takes the focus away, so each step refocuses
        the slider; a step the App drops under load is simply taken again."""
        deadline = time.monotonic() + 180
        while (current := self.current_frame()) != number:
            if time.monotonic() > deadline:
                raise AssertionError(f"the panel stayed on frame {current}, wanted {number}")
            step = 1 if current < number else -1
            self.page.locator("[data-cy=modal] input[type=range]").first.focus()
            self.page.keyboard.press("ArrowRight" if step > 0 else "ArrowLeft")
            with contextlib.suppress(PlaywrightTimeout):
                self.page.get_by_text(f"Frame {current + step}:").wait_for(timeout=5_000)
        self.wait_image()

    def set_mode(self, label: str) -> None:
        self.page.get_by_label(label, exact=True).check()
        time.sleep(0.8)

    def set_object(self, object_id: int, name: str) -> None:
        self._input_after("Object id").fill(str(object_id))
        self._input_after("Object name (optional)").fill(name)
        time.sleep(1.5)

    def _input_after(self, label: str):
        """The text input under a form label (the App's labels are not <label for=...>)."""
        return self.page.locator(f"xpath=//*[normalize-space(text())='{label}']/following::input[1]").first

    def click_pixel(self, x: int, y: int) -> None:
        """Click the centre of video pixel (x, y) on the frame image."""
        box = self.page.locator("[data-cy=modal] .js-plotly-plot image").first.bounding_box()
        px = box["x"] + (x + 0.5) * box["width"] / self.width
        py = box["y"] + (y + 0.5) * box["height"] / self.height
        self.page.mouse.move(px, py)
        time.sleep(0.3)  # Plotly turns a click into a point event only after a hover
        self.page.mouse.click(px, py)
        time.sleep(1.5)


def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _prompts(ds: fo.Dataset, field: str) -> list[tuple[int, object]]:
    ds.reload()
    out = []
    for number, frame in ds.first().frames.items():
        value = frame[field] if frame.has_field(field) else None
        out += [(number, lb) for lb in (getattr(value, "keypoints", None) or getattr(value, "detections", None) or [])]
    return out


def test_click_prompts_in_the_panel_then_segment(page, make_dataset, scene_video, app_server: str, tmp_path: Path) -> None:
    path, truth = scene_video
    ds = make_dataset(path, persistent=True)
    ds.compute_metadata()
    shots = Path(SHOTS) if SHOTS else tmp_path
    panel = PromptPanel(page, shots, 320, 240)
    ball = _inside(truth.mask("red ball", 10))  # 0-based index 10 = the App's frame 11
    x0, y0, x1, y1 = mask_ops.tight_box(truth.mask("blue box", 10))

    page.goto(f"{app_server}/datasets/{ds.name}?id={ds.first().id}", wait_until="load")
    panel.open()
    panel.go_to_frame(11)
    panel.set_object(1, "red ball")
    panel.click_pixel(*ball)
    _wait(lambda: len(_prompts(ds, "sam_points")) == 1, 30, "the click to be saved")
    [(number, keypoint)] = _prompts(ds, "sam_points")
    assert number == 11 and keypoint.index == 1 and keypoint.label == "red ball"
    assert tuple(int(v * s) for v, s in zip(keypoint.points[0], (320, 240))) == ball

    panel.set_mode("box: two corners")
    panel.set_object(2, "")
    panel.click_pixel(x0, y0)
    page.get_by_text("First corner at").wait_for()
    panel.click_pixel(x1 - 1, y1 - 1)  # the last pixel inside the box
    _wait(lambda: len(_prompts(ds, "sam_boxes")) == 1, 30, "the box to be saved")
    [(number, box)] = _prompts(ds, "sam_boxes")
    assert number == 11 and box.index == 2 and box.label == "object_2"
    assert pixel_box(box.bounding_box, 320, 240) == (x0, y0, x1, y1)
    page.get_by_text("Frame 11: 1 click(s) on, 0 not on, 1 box(es).").wait_for()
    panel.shot("1-clicks")

    page.get_by_role("button", name="Segment with these prompts").click()
    page.wait_for_selector("[data-cy=operators-prompt-modal]")
    page.get_by_text("Prompts: 1 label(s) in frames.sam_points, 1 label(s) in frames.sam_boxes").wait_for()
    page.get_by_label("emulator: offline stand-in for fal (synthetic test videos only)").check()
    page.get_by_text("no charge (emulator)").wait_for()
    panel.shot("2-segment-form")
    page.get_by_role("button", name="Execute").click()

    def tracked() -> bool:
        ds.reload()
        return ds.has_frame_field("sam") and ds.count("frames.sam.detections") > 0

    _wait(tracked, 120, "the segment run to write frames.sam")
    page.goto(f"{app_server}/datasets/{ds.name}?id={ds.first().id}", wait_until="load")
    page.click("[data-cy=panel-tab-fo-sample-modal-plugin]")  # back to the video with its tracks
    page.wait_for_selector("[data-cy=modal-looker-container] canvas")
    time.sleep(4)
    panel.shot("3-tracked")
    names = {(d.index, d.label) for f in ds.first().frames.values() for d in f["sam"].detections}
    assert names == {(1, "red ball"), (2, "object_2")}
    frames_with = {i: sum(1 for f in ds.first().frames.values() if any(d.index == i for d in f["sam"].detections))
                   for i in (1, 2)}
    # the emulator's tracker follows a prompted object on every frame where it is visible
    assert frames_with == {1: len(truth.frames_visible("red ball")), 2: len(truth.frames_visible("blue box"))}
