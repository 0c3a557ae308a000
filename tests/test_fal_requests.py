"""What fal's endpoints really answer, end to end: the request planner against the
emulator's union and per-object endpoints, checked against ground truth and against the
exact JSON the emulator received; RLE layouts found by fal-check; redecode repairs a run
whose decoding failed without a new request. Real HTTP (loopback), real MongoDB, real
ffmpeg-encoded videos."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fiftyone as fo
import numpy as np
import pytest

from sam_backend import masks as mask_ops
from sam_backend import synthetic
from sam_backend.backends.fal import FalBackend, FalConfig
from sam_backend.backends.fal.journal import Journal, RequestState
from sam_backend.backends.fal.rle import RleLayout, layouts_path, save_layouts
from sam_backend.backends.fal.selfcheck import estimate, run_check
from sam_backend.coords import pixel_box
from sam_backend.emulator import EmulatorConfig, EmulatorServer
from sam_backend.fiftyone_io.cli import main as cli
from sam_backend.fiftyone_io.runs import redecode
from sam_backend.fiftyone_io.segment import segment_videos

VISUAL, OBJECTS = "fal-ai/sam-3-1/video-rle", "fal-ai/sam-3/video-rle-objects"
BALLS, BOXES = ("red ball", "green ball"), ("cyan box", "blue box")
Clip = tuple[Path, synthetic.GroundTruth]


@pytest.fixture(scope="module")
def instances_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    """Two balls and two boxes entering in an order unlike their palette order."""
    path = tmp_path_factory.mktemp("instances") / "instances.mp4"
    return path, synthetic.write_video(synthetic.instances_scene(), path)


def config(emu: EmulatorServer, **overrides: Any) -> FalConfig:
    return FalConfig(**{**dict(key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url, cdn_url=emu.cdn_url,
                               poll_initial_s=0.02, poll_max_s=0.2), **overrides})


@pytest.fixture
def emu() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(queue_steps=0)) as server:
        yield server


def tracks(sample: fo.Sample, field: str, scene: synthetic.Scene) -> dict[int, dict[str, Any]]:
    """track id -> {"labels": set, "masks": {frame index: full-frame mask}}."""
    out: dict[int, dict[str, Any]] = {}
    for number, frame in sample.frames.items():
        for det in frame[field].detections:
            x0, y0, x1, y1 = pixel_box(det.bounding_box, scene.width, scene.height)
            full = np.zeros((scene.height, scene.width), bool)
            full[y0:y1, x0:x1] = det.mask
            t = out.setdefault(det.index, {"labels": set(), "masks": {}})
            t["labels"].add(det.label)
            assert number - 1 not in t["masks"], f"track {det.index} twice on frame {number}"
            t["masks"][number - 1] = full
    return out


def assert_track_is(track: dict[str, Any], truth: synthetic.GroundTruth, names: tuple[str, ...]) -> None:
    """The track covers exactly the frames where any of ``names`` is visible, each mask
    the union of their true masks (IoU >= 0.98)."""
    want = {}
    for f in range(truth.scene.frame_count):
        masks = [m for n in names if (m := truth.mask(n, f)) is not None]
        if masks:
            want[f] = np.logical_or.reduce(masks)
    assert sorted(track["masks"]) == sorted(want), names
    for f, m in want.items():
        assert mask_ops.iou(track["masks"][f], m) >= 0.98, (names, f)


def sent(emu: EmulatorServer, before: int) -> list[tuple[str, dict[str, Any]]]:
    out = [(app, {k: v for k, v in body.items() if k != "video_url"}) for app, body in emu.stats.submits[before:]]
    return sorted(out, key=lambda item: (item[0], str(item[1])))


def test_two_concepts_get_one_track_per_instance(emu: EmulatorServer, make_dataset, instances_clip: Clip) -> None:
    path, truth = instances_clip
    ds = make_dataset(path)
    with FalBackend(config(emu)) as backend:
        report = segment_videos(ds, prompt="ball, box", label_field="sam", backend=backend)
    assert report.failed == {}
    assert sent(emu, 0) == [(OBJECTS, {"prompt": "ball", "detection_threshold": 0.5}),
                            (OBJECTS, {"prompt": "box", "detection_threshold": 0.5})]
    got = tracks(ds.first(), "sam", truth.scene)
    assert sorted(got) == [1, 2, 3, 4]  # unique across concepts
    by_label = {label: sorted(t for t, v in got.items() if v["labels"] == {label}) for label in ("ball", "box")}
    assert len(by_label["ball"]) == len(by_label["box"]) == 2
    for label, names in (("ball", BALLS), ("box", BOXES)):
        # each instance is one track; which of the concept's ids it has follows fal's ids
        matched = sorted(next(n for n in names if _overlaps(got[t], truth, n)) for t in by_label[label])
        assert matched == sorted(names)
        for t in by_label[label]:
            assert_track_is(got[t], truth, (next(n for n in names if _overlaps(got[t], truth, n)),))
    info = ds.get_field("frames.sam").info["sam31_video"]
    assert info["model"] == "sam3" and any("instances by SAM 3" in w for w in info["warnings"])


def _overlaps(track: dict[str, Any], truth: synthetic.GroundTruth, name: str) -> bool:
    f = min(track["masks"])
    m = truth.mask(name, f)
    return m is not None and mask_ops.iou(track["masks"][f], m) >= 0.9


def test_union_mode_gives_one_track_per_concept_on_sam31(emu: EmulatorServer, make_dataset, instances_clip: Clip) -> None:
    path, truth = instances_clip
    ds = make_dataset(path)
    with FalBackend(config(emu, text_mode="union")) as backend:
        report = segment_videos(ds, prompt="ball, box", label_field="sam", backend=backend)
    assert report.failed == {}
    defaults = {"detection_threshold": 0.5, "max_num_objects": 16, "apply_mask": False}
    assert sent(emu, 0) == [(VISUAL, {"prompt": "ball", **defaults}), (VISUAL, {"prompt": "box", **defaults})]
    got = tracks(ds.first(), "sam", truth.scene)
    assert {t: v["labels"] for t, v in got.items()} == {1: {"ball"}, 2: {"box"}}
    assert_track_is(got[1], truth, BALLS)  # every ball together, as SAM 3.1's RLE endpoint answers
    assert_track_is(got[2], truth, BOXES)
    assert ds.get_field("frames.sam").info["sam31_video"]["model"] == "sam3.1"


def test_points_and_boxes_for_three_objects_are_three_exact_tracks(emu: EmulatorServer, make_dataset,
                                                                   instances_clip: Clip) -> None:
    path, truth = instances_clip
    ds = make_dataset(path)
    targets = {9: "green ball", 4: "cyan box", 6: "red ball"}  # ids in an order unlike the objects'
    points, boxes = [], []
    for oid, name in targets.items():
        f = max(truth.frames_visible(name), key=lambda i: truth.mask(name, i).sum())
        ys, xs = np.nonzero(truth.mask(name, f))
        if name.endswith("box"):
            x0, y0, x1, y1 = mask_ops.tight_box(truth.mask(name, f))
            boxes.append({"x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1, "object_id": oid, "frame_index": f})
        else:
            i = len(xs) // 2
            points.append({"x": int(xs[i]), "y": int(ys[i]), "label": 1, "object_id": oid, "frame_index": f})
    with FalBackend(config(emu)) as backend:
        report = segment_videos(ds, point_prompts=points, box_prompts=boxes, label_field="sam", backend=backend,
                                detection_threshold=0.35, max_num_objects=7)
    assert report.failed == {}
    wire = sent(emu, 0)
    assert [app for app, _ in wire] == [VISUAL] * 3  # one request per object id
    by_id = {(b.get("point_prompts") or b.get("box_prompts"))[0]["object_id"]: b for _, b in wire}
    assert sorted(by_id) == [4, 6, 9]
    for body in by_id.values():  # the user's non-default settings are on the wire
        assert body["detection_threshold"] == 0.35 and body["max_num_objects"] == 7
        assert len(body.get("point_prompts", []) + body.get("box_prompts", [])) == 1
    got = tracks(ds.first(), "sam", truth.scene)
    assert {t: v["labels"] for t, v in got.items()} == {oid: {f"object_{oid}"} for oid in targets}
    for oid, name in targets.items():
        assert_track_is(got[oid], truth, (name,))  # exact per object, out of union answers


def test_threshold_and_max_objects_change_what_comes_back(emu: EmulatorServer, make_dataset, instances_clip: Clip) -> None:
    path, truth = instances_clip
    ds = make_dataset(path)
    with FalBackend(config(emu)) as backend:
        strict = segment_videos(ds, prompt="ball, box", label_field="strict", backend=backend,
                                detection_threshold=0.99)  # the emulator scores every object 0.95
        capped = segment_videos(ds, prompt="ball, box", label_field="capped", backend=backend, max_num_objects=1)
    assert strict.failed == {} and strict.detections == 0
    assert [b["detection_threshold"] for _, b in emu.stats.submits[:2]] == [0.99, 0.99]
    assert capped.failed == {} and capped.tracks[ds.first().id] == 2  # one instance per concept kept


@pytest.mark.parametrize("layout", ["row1", "row0", "column1", "column0"])
def test_fal_check_finds_the_layout_the_endpoints_use(layout: str, tmp_path: Path) -> None:
    with EmulatorServer(EmulatorConfig(queue_steps=0, rle_layout=layout)) as emu, FalBackend(config(emu)) as backend:
        report = run_check(backend, tmp_path)
        submits = len(emu.stats.submits)
    assert [r.error for r in report.rows] == [None] * 5 and submits == 5  # text, point, box, pair, instances
    assert {e: l.key for e, l in report.winners.items()} == {VISUAL: layout, OBJECTS: layout}
    assert report.apart == {VISUAL: False, OBJECTS: True}
    for row in report.rows:
        assert row.iou[layout] is not None and row.iou[layout] >= 0.98
        assert all(v is None or v < row.iou[layout] for k, v in row.iou.items() if k != layout)
    assert len(list(tmp_path.glob("*.json"))) == 5  # every raw payload kept
    assert f"RLE layout {layout}" in str(report)
    # measured: the two objects clicked together came back as one mask on every frame
    [pair] = [r for r in report.rows if r.kind == "pair"]
    assert pair.tracks == 1 and pair.endpoint == VISUAL


def test_fal_check_without_a_key_runs_on_the_emulator_and_stores_nothing(capsys: pytest.CaptureFixture[str],
                                                                        tmp_path: Path) -> None:
    assert cli(["fal-check", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "offline emulator" in out and "RLE layout row1" in out and "objects apart: yes" in out
    assert len(list(tmp_path.glob("*.json"))) == 5
    assert not layouts_path(os.environ).exists()  # an emulator's layout is no fact about fal


def test_fal_check_with_a_key_shows_the_cost_sends_only_with_yes_and_stores_the_layouts(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The paid path, against an emulator that speaks column-major 0-based RLE: the first
    run prints the estimate and sends nothing; with --yes it measures and stores the layout
    that every later run's decoders then read."""
    with EmulatorServer(EmulatorConfig(queue_steps=0, rle_layout="column0")) as emu:
        monkeypatch.setenv("FAL_KEY", emu.key)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        hosts = dict(queue_url=emu.queue_url, rest_url=emu.rest_url, cdn_url=emu.cdn_url, poll_initial_s=0.02, poll_max_s=0.2)
        # fal's hosts swapped for the emulator's; the key, journal and layouts still come from the environment
        monkeypatch.setattr(FalBackend, "from_env", classmethod(
            lambda cls, environ=None, **kw: cls(FalConfig.from_env(environ or os.environ, **{**hosts, **kw}))))
        usd, _ = estimate(FalBackend.from_env())

        assert cli(["fal-check", "--out", str(tmp_path / "dry")]) == 0
        out = capsys.readouterr().out
        assert f"about ${usd:.2f}" in out and "nothing was sent: run again with --yes" in out
        assert (emu.stats.submits, emu.stats.uploads, emu.stats.token_calls) == ([], 0, 0)
        assert not layouts_path(os.environ).exists()

        assert cli(["fal-check", "--yes", "--out", str(tmp_path / "paid")]) == 0
        out = capsys.readouterr().out
        assert len(emu.stats.submits) == 5 and "stored the measured layouts" in out
    assert "FAL_KEY is set" in out and emu.key not in out
    stored = FalConfig.from_env(os.environ).rle_layouts
    assert {e: layout.key for e, layout in stored.items()} == {VISUAL: "column0", OBJECTS: "column0"}


def corner_scene() -> synthetic.Scene:
    """A box that covers the top-left pixel on frame 0: its first RLE run starts at the
    first pixel, 0 or 1 depending on the start base, so decoding with the wrong base fails."""
    return synthetic.Scene(width=96, height=64, frame_count=20, fps="20", shapes=(
        synthetic.ShapeSpec("white box", "white", "rect", 8, 6, ((0, 4.0, 3.0), (19, 60.0, 30.0))),
        synthetic.ShapeSpec("red ball", "red", "circle", 9, 9, ((0, 70.0, 40.0), (19, 30.0, 40.0)))))


@pytest.mark.parametrize("via", ["sdk", "cli"])
def test_redecode_repairs_a_failed_decode_without_a_new_request(via: str, make_dataset, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "corner.mp4"
    truth = synthetic.write_video(corner_scene(), path)
    ds = make_dataset(path, persistent=True)
    journal = tmp_path / "journal.sqlite3"
    with EmulatorServer(EmulatorConfig(queue_steps=0, rle_layout="row0")) as emu:
        with FalBackend(config(emu, journal_path=journal)) as backend:  # decodes as row1, the default
            report = segment_videos(ds, prompt="box, ball", label_field="sam", backend=backend)
        [message] = report.failed.values()
        assert "frame 0" in message and "before the first pixel" in message and "redecode" in message
        assert not ds.has_frame_field("sam")
        submits = len(emu.stats.submits)
        assert submits == 2

        fixed = {e: RleLayout.parse("row0") for e in (VISUAL, OBJECTS)}  # what fal-check would store
        if via == "sdk":
            with FalBackend(config(emu, journal_path=journal, rle_layouts=fixed)) as backend:
                repaired = redecode(run_id=report.run_id, backend=backend)
            assert repaired.failed == {} and repaired.done == [ds.first().id]
        else:  # a later process: the layouts fal-check stored, the journal on disk, no key needed
            stored = layouts_path(os.environ)
            save_layouts(stored, fixed)
            try:
                assert cli(["redecode", report.run_id, "--journal", str(journal)]) == 0
                out = capsys.readouterr().out  # it sends nothing: no estimate as if it would pay
                assert "no charge (stored results, nothing sent)" in out and "estimated $" not in out
            finally:
                stored.unlink()
        assert len(emu.stats.submits) == submits and emu.stats.uploads == 1  # nothing sent again
    with Journal(journal) as j:
        assert {e.state for e in j.entries()} == {RequestState.WRITTEN}
    got = tracks(ds.first(), "sam", truth.scene)
    assert {t: v["labels"] for t, v in got.items()} == {1: {"box"}, 2: {"ball"}}
    assert_track_is(got[1], truth, ("white box",))
    assert_track_is(got[2], truth, ("red ball",))


def test_redecode_never_submits_what_was_never_paid_for(emu: EmulatorServer, make_dataset, instances_clip: Clip,
                                                        tmp_path: Path) -> None:
    path, _ = instances_clip
    ds = make_dataset(path, persistent=True)
    with FalBackend(config(emu, journal_path=tmp_path / "j.sqlite3")) as backend:
        report = segment_videos(ds, prompt="ball", label_field="sam", backend=backend)
        backend.journal._execute("UPDATE requests SET result = NULL")  # as if the stored results were pruned
        before = len(emu.stats.submits)
        again = redecode(run_id=report.run_id, backend=backend)
    assert len(emu.stats.submits) == before
    [message] = again.failed.values()
    assert "no stored fal result" in message
