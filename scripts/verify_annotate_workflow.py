"""Draw SAM prompts in the real FiftyOne App (headless Chromium + Playwright), read them back.

The "draw on the frame, then Segment" workflow, checked by hand once and kept as a script:

1. builds a video dataset from ``sam_backend.synthetic`` (known object positions);
2. starts the App server on 127.0.0.1 with the plugin in a temporary plugins folder;
3. prepares the prompt fields: with the ``prepare_prompts`` operator run from the App's
   operator browser when the plugin registers it (else with ``prepare_prompt_fields``);
4. in the sample modal's Annotate tab: drags a box around the red ball on one frame and
   picks its class, then clicks a polyline (three clicks, class "pos") on the blue box on
   another frame;
5. waits for the App to save, reads the labels back from the database and turns them into
   prompts with ``prompts_from_field``, and checks them against the scene's ground truth.

Screenshots of each step go to ``docs/annotate-*.png``. Needs Debian's ``chromium`` and the
``playwright`` Python package (no browser download: it drives the system Chromium).

    python scripts/verify_annotate_workflow.py [--out docs] [--plugin PATH] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app_screenshot import free_port, wait_for  # noqa: E402  (this folder is on sys.path when run as a script)

DATASET = "sam31-annotate-demo"
OBJECTS = ["red ball", "blue box", "green ball"]
BOX_FRAME = 10  # 0-based frame index where the red ball gets its box
CLICK_FRAME = 40  # ... and where the blue box gets its clicks
# Chromium flags: no GPU, no sandbox (root in a container), no background network (none here).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Hides the App's Enterprise promo pop-up and analytics in automated sessions.
INIT_SCRIPT = "window.IS_PLAYWRIGHT=true; localStorage.setItem('fiftyone-enterprise-tooltip-seen','true');"
UI_TIMEOUT_MS = 60_000  # first modal load decodes the video: seconds on 2 cores
SAVE_TIMEOUT_S = 30.0  # the App saves edits in the background; this is ample


class Modal:
    """The sample modal of the App, driven through the DOM hooks FiftyOne 1.22.1 exposes
    (``data-cy`` attributes and aria labels found by exploring the page)."""

    def __init__(self, page, out: Path, width: int, height: int):
        self.page, self.out, self.width, self.height = page, out, width, height
        self.frame = 0

    def shot(self, name: str) -> None:
        path = self.out / f"annotate-{name}.png"
        self.page.screenshot(path=str(path))
        print(f"  screenshot {path}")

    def wait_video(self) -> None:
        self.page.wait_for_selector("[data-cy=imavid-frame-canvas], [data-cy=modal-looker-container] canvas",
                                    timeout=UI_TIMEOUT_MS)
        time.sleep(3)  # let the first frames decode and draw

    def open_annotate_tab(self) -> None:
        if not self.page.query_selector("[data-cy=detection-mode]"):
            self.page.get_by_text("Annotate", exact=True).click()
        self.page.wait_for_selector("[data-cy=detection-mode]", timeout=UI_TIMEOUT_MS)
        dismiss = self.page.get_by_role("button", name="Dismiss")
        if dismiss.count():
            dismiss.first.click()  # the Enterprise promo card in the sidebar
        time.sleep(1)

    def tool_enabled(self, data_cy: str) -> bool:
        return "disabled" not in (self.page.get_attribute(f"[data-cy={data_cy}]", "class") or "")

    def go_to_frame(self, index: int) -> None:
        counter = self.page.locator("[aria-label^='Showing elapsed time']")
        if counter.count():
            counter.click()  # show frame numbers instead of seconds
        step = "Step forward" if index > self.frame else "Step back"
        for _ in range(abs(index - self.frame)):
            self.page.click(f"[aria-label='{step}']")
            time.sleep(0.08)
        self.frame = index
        time.sleep(1.0)
        shown = self.page.inner_text("[aria-label^='Showing frame numbers']")
        if not shown.strip().startswith(f"#{index} "):  # the counter is 0-based
            raise RuntimeError(f"expected the modal on frame index {index}, it shows {shown!r}")

    def to_page(self, x: float, y: float) -> tuple[float, float]:
        """Video pixel -> page coordinates (the frame is letterboxed in its canvas)."""
        box = self.page.query_selector("[data-cy=imavid-frame-canvas]").bounding_box()
        scale = min(box["width"] / self.width, box["height"] / self.height)
        ox = box["x"] + (box["width"] - self.width * scale) / 2
        oy = box["y"] + (box["height"] - self.height * scale) / 2
        return ox + x * scale, oy + y * scale

    def drag_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        self.page.click("[data-cy=detection-mode]")
        time.sleep(0.5)
        (ax, ay), (bx, by) = self.to_page(x0, y0), self.to_page(x1, y1)
        self.page.mouse.move(ax, ay)
        self.page.mouse.down()
        for k in range(1, 11):  # a real drag: the App listens to pointer moves
            self.page.mouse.move(ax + (bx - ax) * k / 10, ay + (by - ay) * k / 10)
            time.sleep(0.03)
        self.page.mouse.up()
        time.sleep(1.0)

    def click_polyline(self, points: list[tuple[float, float]]) -> None:
        self.page.click("[data-cy=polyline-mode]")
        time.sleep(0.5)
        for x, y in points:
            self.page.mouse.click(*self.to_page(x, y))
            time.sleep(0.4)

    def finish_polyline(self) -> None:
        """Right click ends the polyline (the App's own hint: "Right click to exit")."""
        self.page.mouse.click(*self.to_page(self.width - 5, self.height - 5), button="right")
        time.sleep(1.0)

    def pick_class(self, name: str) -> None:
        self.page.locator("[data-cy=root_label_container] label", has_text=name).first.click()
        time.sleep(0.8)

    def back(self) -> None:
        self.page.click("[data-cy=annotate-edit-back]")
        time.sleep(0.8)


def operator_listed(base: str, dataset: str) -> bool:
    import json

    req = urllib.request.Request(f"{base}/operators", data=json.dumps({"dataset_name": dataset}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        listing = json.load(resp)
    return any(op["uri"] == "@sam31/video/prepare_prompts" for op in listing.get("operators", []))


def run_operator_from_app(page, modal: Modal, base: str) -> None:
    """The one-click path: operator browser -> form -> Execute; the App opens the Annotate tab."""
    page.goto(f"{base}/datasets/{DATASET}", wait_until="load")
    page.wait_for_selector("[data-cy=looker]", timeout=UI_TIMEOUT_MS)
    time.sleep(2)
    page.click("[data-cy=action-browse-operations]")
    page.fill("[data-cy=operators-browser-search]", "Prepare SAM")
    page.get_by_text("Prepare SAM prompt fields for drawing", exact=True).click()
    page.wait_for_selector("[data-cy=operators-prompt-modal]", timeout=UI_TIMEOUT_MS)
    page.locator("[data-cy=operators-prompt-modal] input[type=string]").nth(2).fill(", ".join(OBJECTS))
    time.sleep(1)
    modal.shot("1-operator-form")
    page.get_by_role("button", name="Execute").click()
    page.wait_for_selector("[data-cy=detection-mode]", timeout=UI_TIMEOUT_MS)
    time.sleep(3)
    modal.shot("2-opened-by-operator")
    print(f"  after the operator: box tool enabled={modal.tool_enabled('detection-mode')}, "
          f"polyline tool enabled={modal.tool_enabled('polyline-mode')}")


def wait_for_saved(dataset, fields: list[str]) -> None:
    deadline = time.monotonic() + SAVE_TIMEOUT_S
    while time.monotonic() < deadline:
        dataset.reload()
        if all(dataset.count(f"frames.{f}") > 0 for f in fields):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the App did not save labels into {fields} within {SAVE_TIMEOUT_S:.0f} s")


def describe_saved(dataset, field: str) -> None:
    """What the App stored: the drawn label (keyframe) and its track copies."""
    rows = []
    for number, frame in dataset.first().frames.items():
        value = frame[field] if frame.has_field(field) else None
        for label in (getattr(value, "detections", None) or getattr(value, "polylines", None) or []):
            rows.append((number, label))
    keyframes = [(n, lb) for n, lb in rows if getattr(lb, "keyframe", None) is not False]
    print(f"  frames.{field}: {len(rows)} labels on frames {rows[0][0]}..{rows[-1][0]}, "
          f"{len(keyframes)} drawn (keyframe), {len(rows) - len(keyframes)} copies the App made (keyframe=False)")
    for n, lb in keyframes:
        shape = lb.bounding_box if hasattr(lb, "bounding_box") and lb.bounding_box else lb.points
        print(f"    frame {n}: {type(lb).__name__} label={lb.label!r} index={lb.index} "
              f"instance={getattr(lb, 'instance_id', None)} {shape}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--plugin", type=Path, default=ROOT, help="plugin folder to serve (default: this repo)")
    parser.add_argument("--keep", action="store_true", help="keep the dataset afterwards")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        print("chromium not found: apt-get install -y chromium", file=sys.stderr)
        return 2
    plugins = Path(tempfile.mkdtemp(prefix="sam31_plugins_"))
    (plugins / "sam31-video").symlink_to(args.plugin.resolve(), target_is_directory=True)
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(plugins)  # before fiftyone reads its config

    import fiftyone as fo
    import fiftyone.core.odm as foo
    from fiftyone import ViewField as F
    from playwright.sync_api import sync_playwright

    from sam_backend import synthetic
    from sam_backend import masks as mask_ops
    from sam_backend.fiftyone_io.annotate import prepare_prompt_fields
    from sam_backend.fiftyone_io.prompts import prompts_from_field
    from sam_backend.video import probe

    work = Path(tempfile.mkdtemp(prefix="sam31_annotate_"))
    scene = synthetic.default_scene()
    video = work / "shapes.mp4"
    truth = synthetic.write_video(scene, video)
    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)
    dataset = fo.Dataset(DATASET, persistent=True)
    dataset.add_sample(fo.Sample(filepath=str(video)))
    sample_id = dataset.first().id
    args.out.mkdir(parents=True, exist_ok=True)

    foo.get_db_conn()  # start (or join) the database service before the server joins it
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "fiftyone.server.main", "--address", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    failures: list[str] = []
    try:
        wait_for(f"{base}/fiftyone")
        with_operator = operator_listed(base, DATASET)
        with sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=browser, args=CHROMIUM_ARGS)
            page = chromium.new_page(viewport={"width": 1400, "height": 900})
            page.add_init_script(INIT_SCRIPT)
            modal = Modal(page, args.out, scene.width, scene.height)

            print("1. prepare the prompt fields")
            if with_operator:
                run_operator_from_app(page, modal, base)
                print("  reloading the page: the App reads label schemas when it loads")
                page.reload(wait_until="load")
            else:
                print("  prepare_prompts is not registered by this plugin folder: using the SDK")
                print("  " + prepare_prompt_fields(dataset, classes=OBJECTS).summary())
                page.goto(f"{base}/datasets/{DATASET}?id={sample_id}", wait_until="load")
            modal.wait_video()
            modal.open_annotate_tab()
            ready = modal.tool_enabled("detection-mode") and modal.tool_enabled("polyline-mode")
            print(f"  Annotate tab: box and polyline tools enabled: {ready}")
            if not ready:
                failures.append("the Annotate tab does not offer both the box and the polyline tool")
            modal.shot("3-ready")

            print(f"2. box around the red ball on frame index {BOX_FRAME} (frame number {BOX_FRAME + 1})")
            modal.go_to_frame(BOX_FRAME)
            x0, y0, x1, y1 = mask_ops.tight_box(truth.mask("red ball", BOX_FRAME))
            modal.drag_box(x0 - 2, y0 - 2, x1 + 2, y1 + 2)
            modal.pick_class("red ball")
            modal.shot("4-box")
            modal.back()

            print(f"3. clicks (a polyline, class 'pos') on the blue box on frame index {CLICK_FRAME}")
            modal.go_to_frame(CLICK_FRAME)
            visible = truth.mask("blue box", CLICK_FRAME)
            clicks = _inner_points(visible, count=3)
            modal.click_polyline(clicks)
            modal.pick_class("pos")
            modal.shot("5-clicks")
            modal.finish_polyline()
            modal.shot("6-saved")
            chromium.close()

        print("4. read back what the App saved")
        wait_for_saved(dataset, ["sam_boxes", "sam_clicks"])
        time.sleep(2)  # the App writes the track copies right after the drawn label
        dataset.reload()
        for field in ("sam_boxes", "sam_clicks"):
            describe_saved(dataset, field)
        info = probe(video)
        sample = dataset.first()
        for field in ("sam_boxes", "sam_clicks"):
            p_all = prompts_from_field(sample, field, info)
            print(f"  prompts_from_field(frames.{field}): {p_all.counts()}")
        # Only the drawn labels (the App's track copies filtered out) are the user's prompts.
        drawn = dataset.filter_labels("frames.sam_boxes", F("keyframe") != False, only_matches=False)  # noqa: E712
        drawn = drawn.filter_labels("frames.sam_clicks", F("keyframe") != False, only_matches=False)  # noqa: E712
        drawn_sample = drawn.first()
        boxes = prompts_from_field(drawn_sample, "sam_boxes", info)
        points = prompts_from_field(drawn_sample, "sam_clicks", info)
        print("  drawn labels only (keyframes):")
        for prompt in boxes.box_prompts + points.point_prompts:
            print(f"    {type(prompt).__name__} {prompt.model_dump()}")
        print(f"    object names: boxes {boxes.names}, clicks {points.names}")

        want = (x0 - 2, y0 - 2, x1 + 2, y1 + 2)
        got = [(b.x_min, b.y_min, b.x_max, b.y_max, b.frame_index) for b in boxes.box_prompts]
        if len(got) != 1 or got[0][4] != BOX_FRAME or max(abs(a - b) for a, b in zip(got[0][:4], want)) > 2:
            failures.append(f"box prompts {got} != one box near {want} on frame index {BOX_FRAME}")
        if boxes.names != {1: "red ball"}:
            failures.append(f"box object names {boxes.names} != {{1: 'red ball'}}")
        clicked = {(p.x, p.y) for p in points.point_prompts if p.frame_index == CLICK_FRAME and p.label == 1}
        if len(points.point_prompts) != 3 or len(clicked) != 3 or not all(visible[y, x] for x, y in clicked):
            failures.append(f"point prompts {points.point_prompts} are not 3 positive clicks on the blue box")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(plugins, ignore_errors=True)
        if not args.keep and fo.dataset_exists(DATASET):
            fo.delete_dataset(DATASET)
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("OK: drawn in the App, saved, read back as the expected prompts")
    return 0


def _inner_points(mask, count: int) -> list[tuple[float, float]]:
    """``count`` points well inside the visible part of an object (7 px from any edge),
    spread left to right; at pixel centres so they land on the pixel they name."""
    import numpy as np

    margin = 7
    ok = mask.copy()
    for dy in range(-margin, margin + 1):  # erode: every neighbour within the margin is on
        for dx in range(-margin, margin + 1):
            ok &= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    ys, xs = np.nonzero(ok)
    if xs.size == 0:
        raise RuntimeError("the object is too small on that frame to click inside it")
    order = np.argsort(xs)
    picks = [order[int(i)] for i in np.linspace(0, xs.size - 1, count)]
    return [(xs[i] + 0.5, ys[i] + 0.5) for i in picks]


if __name__ == "__main__":
    raise SystemExit(main())
