"""The "SAM prompts" panel's events through the real App server (what the browser sends):
load, clicks with the image pixel Plotly reports, two-click boxes, undo, clear, errors."""

from __future__ import annotations

from typing import Any

import fiftyone as fo
import httpx
import pytest

from sam_backend.coords import pixel_box, pixel_point

URI = "@sam31/video/sam_prompts"


class Panel:
    """One panel instance: sends an event with the state the App holds, applies the state
    patches the server sends back (as the App does), and keeps the ops it asked for."""

    def __init__(self, app_server: str, ds: fo.Dataset):
        self.url, self.ds = app_server, ds
        self.state: dict[str, Any] = {}
        self.data: dict[str, Any] = {}
        self.ops: list[dict[str, Any]] = []

    def send(self, method: str, **event: Any) -> None:
        body = {"operator_uri": URI, "dataset_name": self.ds.name, "view": [], "current_sample": self.ds.first().id,
                "params": {"__method__": method, "panel_id": "p1", "panel_state": self.state, **event}}
        response = httpx.post(f"{self.url}/operators/execute", json=body, timeout=60)
        assert response.status_code == 200, response.text
        payload = response.json()
        assert not payload.get("error"), payload
        self.ops = payload["executor"]["requests"]
        for op in self.ops:
            if op["operator_uri"] == "patch_panel_state":
                self.state.update(op["params"]["state"])
            elif op["operator_uri"] == "patch_panel_data":
                self.data.update(op["params"]["data"])

    def set_options(self, **options: Any) -> None:
        """What typing in the mode / object id / name row does to the App's panel state."""
        self.state["options"] = {**self.state.get("options", {}), **options}

    def notices(self) -> list[str]:
        return [op["params"]["message"] for op in self.ops if op["operator_uri"] == "notify"]


def _labels(ds: fo.Dataset, field: str) -> list[tuple[int, Any]]:
    ds.reload()
    return [(n, lb) for n, f in ds.first().frames.items() if f.has_field(field) and f[field]
            for lb in (getattr(f[field], "keypoints", None) or getattr(f[field], "detections", None) or [])]


@pytest.fixture
def panel(make_dataset, scene_video, app_server: str) -> Panel:
    ds = make_dataset(scene_video[0], persistent=True)
    return Panel(app_server, ds)


def test_load_shows_the_frame_and_clicks_become_labels(panel: Panel) -> None:
    panel.send("on_load")
    assert panel.state["frame"] == 1 and panel.state["options"] == {"mode": "pos", "object_id": 1, "name": ""}
    assert (panel.state["width"], panel.state["height"], panel.state["scale"], panel.state["frame_count"]) == (320, 240, 1.0, 96)
    [image] = panel.data["frame_plot"]
    assert image["type"] == "image" and image["source"].startswith("data:image/jpeg;base64,")

    panel.send("on_frame", value=30)
    panel.set_options(object_id=4, name="ball")
    panel.send("on_click", idx=[120, 77])  # Plotly's image pixel: [row, col]
    panel.set_options(mode="neg")
    panel.send("on_click", idx=[5, 6])
    [(n1, pos), (n2, neg)] = _labels(panel.ds, "sam_points")
    assert (n1, pos.label, pos.index, pixel_point(*pos.points[0], 320, 240)) == (30, "ball", 4, (77, 120))
    assert (n2, neg.label, neg.index, pixel_point(*neg.points[0], 320, 240)) == (30, "neg", 4, (6, 5))
    assert panel.state["summary"] == "Frame 30: 1 click(s) on, 1 not on, 0 box(es)."
    markers = [t for t in panel.data["frame_plot"] if t["type"] == "scatter"]
    assert [(t["x"], t["y"]) for t in markers] == [([77], [120]), ([6], [5])]

    panel.send("undo")
    assert [lb.label for _, lb in _labels(panel.ds, "sam_points")] == ["ball"]
    assert panel.state["summary"] == "Frame 30: 1 click(s) on, 0 not on, 0 box(es)."


def test_two_clicks_make_a_box_and_clear_removes_the_frame_prompts(panel: Panel) -> None:
    panel.send("on_load")
    panel.set_options(mode="box", object_id=2)
    panel.send("on_click", idx=[100, 200])
    assert panel.state["corner"] == [200, 100] and _labels(panel.ds, "sam_boxes") == []
    assert "First corner at (200, 100)" in panel.state["summary"]
    panel.send("on_click", idx=[60, 150])  # the opposite corner, up and left
    [(number, box)] = _labels(panel.ds, "sam_boxes")
    assert (number, box.index, box.label) == (1, 2, "object_2")
    assert pixel_box(box.bounding_box, 320, 240) == (150, 60, 201, 101)  # both clicked pixels inside
    assert panel.state["corner"] is None
    panel.set_options(mode="pos")
    panel.send("on_click", idx=[10, 10])
    panel.send("on_frame", value=2)
    panel.send("on_click", idx=[20, 20])
    panel.send("on_frame", value=1)
    panel.send("clear_frame")
    assert _labels(panel.ds, "sam_boxes") == []
    assert [n for n, _ in _labels(panel.ds, "sam_points")] == [2]  # other frames keep theirs


def test_bad_input_is_reported_and_nothing_is_written(panel: Panel, make_dataset, tmp_path) -> None:
    panel.send("on_load")
    panel.set_options(mode="box")
    panel.send("on_click", idx=[50, 50])
    panel.send("on_click", idx=[50, 90])  # same row: no area
    assert any("has no area" in m for m in panel.notices())
    panel.set_options(mode="pos", object_id=-3)
    panel.send("on_click", idx=[50, 50])
    assert any("object id must be >= 0" in m for m in panel.notices())
    assert not panel.ds.has_frame_field("sam_points") and not panel.ds.has_frame_field("sam_boxes")

    image = tmp_path / "still.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    stills = make_dataset(image, persistent=True)
    other = Panel(panel.url, stills)
    other.send("on_load")
    assert other.state["error"] == "Open a video sample: this panel works on the video shown in the modal."


def test_a_pending_corner_survives_option_events_that_change_neither_mode_nor_object(panel: Panel) -> None:
    panel.send("on_load")
    panel.set_options(mode="box", object_id=3)
    panel.send("on_click", idx=[40, 70])
    panel.set_options(name="lid")  # a name typed, or the App's late echo of an earlier edit
    panel.send("on_option")
    assert panel.state["corner"] == [70, 40]
    panel.send("on_click", idx=[90, 130])
    [(_, box)] = _labels(panel.ds, "sam_boxes")
    assert (box.index, box.label, pixel_box(box.bounding_box, 320, 240)) == (3, "lid", (70, 40, 131, 91))

    panel.send("on_click", idx=[10, 20])  # a new first corner for object 3 ...
    panel.set_options(object_id=5)  # ... then another object: its box starts afresh
    panel.send("on_option")
    assert panel.state["corner"] is None
    panel.send("on_click", idx=[12, 22])
    panel.set_options(object_id=3)  # back to 3 without an option event: the corner is 5's, not 3's
    panel.send("on_click", idx=[30, 40])
    assert panel.state["corner"] == [40, 30] and len(_labels(panel.ds, "sam_boxes")) == 1
