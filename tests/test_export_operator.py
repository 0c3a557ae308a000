"""The export_tracks operator: its form, immediate and delegated execution with progress,
and (once registered in the plugin) the SDK call and the App server's HTTP API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import httpx
import pytest
from fiftyone.operators.executor import ExecutionContext, Executor

from operators.export_tracks import ExportTracks
from sam_backend.fiftyone_io.export import MANIFEST
from test_export_formats import labelled_dataset, read_coco, read_mot, truth_frames

URI = "@sam31/video/export_tracks"


@pytest.fixture(scope="module")
def scene(small_video) -> Iterator[fo.Dataset]:
    path, truth = small_video
    ds = labelled_dataset(path, truth_frames(truth))
    ds.persistent = True  # the App server (another process) reads it
    yield ds
    ds.delete()


def _ctx(ds: fo.Dataset, params: dict, **request: object) -> ExecutionContext:
    return ExecutionContext(request_params={"dataset_name": ds.name, "view": [], "params": params, **request},
                            executor=Executor())


def _triggered(messages: list) -> list[tuple[str, dict]]:
    return [(m.body.operator_uri, m.body.params or {}) for m in messages]


def test_form_fields_follow_the_format_and_flag_bad_folders(scene, tmp_path) -> None:
    op = ExportTracks()
    props = op.resolve_input(_ctx(scene, {"format": "coco"})).to_json()["type"]["properties"]
    assert {"format", "label_field", "output_dir", "frame_stride", "frames", "coco_masks", "overwrite"} <= set(props)
    assert props["label_field"]["type"]["values"] == ["sam"] and props["label_field"]["default"] == "sam"
    props = op.resolve_input(_ctx(scene, {"format": "yolo-seg"})).to_json()["type"]["properties"]
    assert "frames" not in props and "coco_masks" not in props  # YOLO always writes images; no COCO options
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("not an export")
    out = op.resolve_input(_ctx(scene, {"format": "mot", "output_dir": str(busy)})).to_json()["type"]["properties"]["output_dir"]
    assert out["invalid"] and "not empty" in out["error_message"]
    # relative to the App server's own working directory, which the user does not see
    out = op.resolve_input(_ctx(scene, {"format": "mot", "output_dir": "exports/a"})).to_json()["type"]["properties"]["output_dir"]
    assert out["invalid"] and "give an absolute folder" in out["error_message"]


def test_immediate_execution_streams_progress_then_notifies(scene, tmp_path) -> None:
    out = tmp_path / "coco"
    messages = list(ExportTracks().execute(_ctx(scene, {"format": "coco", "label_field": "sam", "output_dir": str(out),
                                                        "frames": "video", "coco_masks": "polygons"})))
    names = _triggered(messages)
    progress = [p for n, p in names if n == "set_progress"]
    assert progress and progress[-1]["progress"] == 1.0 and "48/48 frames" in progress[-1]["label"]
    assert names[-1][0] == "notify" and names[-1][1]["variant"] == "success"
    assert "coco: 1 videos, 48 frames" in names[-1][1]["message"]
    _, got = read_coco(out / "labels.json")
    assert len(got) == 48 and not (out / "data").exists()
    assert json.loads((out / MANIFEST).read_text())["options"]["coco_masks"] == "polygons"


def test_delegated_execution_reports_progress_through_the_context(scene, tmp_path) -> None:
    out = tmp_path / "mot"
    seen: list[float] = []
    ctx = ExecutionContext(request_params={"dataset_name": scene.name, "view": [], "delegated": True,
                                           "params": {"format": "mot", "output_dir": str(out), "frame_stride": 2}},
                           executor=Executor(), set_progress=lambda _id, p: seen.append(p.progress))
    messages = list(ExportTracks().execute(ctx))
    assert seen and seen[-1] == 1.0 and "set_progress" not in [n for n, _ in _triggered(messages)]
    assert sorted(read_mot(out / "small.txt")) == list(range(1, 49, 2))


def test_errors_are_notified_and_fail_the_run(scene, tmp_path) -> None:
    messages: list = []
    with pytest.raises(RuntimeError, match="frames.missing does not exist"):
        for message in ExportTracks().execute(_ctx(scene, {"format": "coco", "label_field": "missing",
                                                           "output_dir": str(tmp_path / "x")})):
            messages.append(message)
    (name, params), = _triggered(messages)
    assert name == "notify" and params["variant"] == "error" and "frames.missing" in params["message"]
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------
# Through the plugin registry (needs export_tracks in operators/__init__.py and fiftyone.yml)


@pytest.fixture
def registered() -> None:
    try:
        foo.get_operator(URI)
    except ValueError:
        pytest.fail(f"{URI} is not registered in the plugin (operators/__init__.py, fiftyone.yml)")


def test_sdk_call_runs_the_registered_operator(registered, scene, tmp_path) -> None:
    out = tmp_path / "sdk"
    foo.get_operator(URI)(scene.view(), str(out), "mots", frame_stride=4)
    assert (out / "small.txt").is_file() and (out / "labels.txt").read_text().splitlines() == ["blue box", "green ball", "red ball"]


def test_app_server_resolves_the_form_and_executes(registered, scene, tmp_path, request) -> None:
    app_server = request.getfixturevalue("app_server")  # started only once the operator is known
    out = tmp_path / "http"
    body = {"operator_uri": URI, "dataset_name": scene.name, "view": [],
            "params": {"format": "ytvis", "label_field": "sam", "output_dir": str(out), "frame_stride": 6}}
    form = httpx.post(f"{app_server}/operators/resolve-type", json=body | {"target": "inputs"}, timeout=30).json()
    assert {"format", "label_field", "output_dir", "frames"} <= set(form["type"]["properties"])
    with httpx.stream("POST", f"{app_server}/operators/execute/generator", json=body, timeout=120) as response:
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    triggered = [m["body"]["operator_uri"] for m in lines if m.get("cls") == "InvocationRequest"]
    assert "set_progress" in triggered and triggered[-1] == "notify"
    assert len(json.loads((out / "instances.json").read_text())["videos"][0]["file_names"]) == 8
    assert Path(out / "JPEGImages" / "small" / "000042.jpg").is_file()
