"""The local backend end to end on a CPU, with the contract fake of Meta's predictor
(sam_backend/backends/local/fake_predictor.py) standing in for SAM 3.1: real videos
decoded by ffmpeg, real chunking and id stitching, real writer and MongoDB. No torch."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sam_backend import masks as mask_ops
from sam_backend import synthetic
from sam_backend.backends.base import CancelToken, VideoSource, get_backend
from sam_backend.backends.local import BACKEND, EngineUnavailable, LocalOutOfMemory
from sam_backend.backends.local.chunking import StoredObject, match_tracks, plan_chunks
from sam_backend.backends.local.fake_predictor import ContractFakePredictor, fake_sam3_module
from sam_backend.backends.local.meta import _filter_request, resolve_checkpoint
from sam_backend.backends.local.meta_build import BPE_FILE, build_predictor, patch_init_state
from sam_backend.errors import Cancelled, InvalidRequest, SamError
from sam_backend.types import FrameRange, SegmentRequest
from sam_backend.video import probe

ROOT = Path(__file__).resolve().parents[1]


_CHECKPOINTS: list[Path] = []


def checkpoint_dir() -> Path:
    """A folder with stand-in checkpoints and the tokenizer vocabulary (the fake builder only
    checks they exist, as torch.load and the tokenizer would)."""
    if not _CHECKPOINTS:
        folder = Path(tempfile.mkdtemp(prefix="sam31-ckpt-"))
        for name in ("sam3.1_multiplex.pt", "sam3.pt", BPE_FILE):
            (folder / name).write_bytes(b"stand-in")
        _CHECKPOINTS.append(folder)
    return _CHECKPOINTS[0]


def fake_backend(fake: ContractFakePredictor, **options):
    """The local backend on the fake, reached through the engine's real builder call (argument
    filtering and the #544 workaround included) against builders with upstream's signatures."""
    module = fake_sam3_module(fake)

    def factory(config, max_num_objects):
        return build_predictor(config, resolve_checkpoint(config), max_num_objects, module)

    options.setdefault("engine", fake.version)
    return get_backend("local", checkpoint=str(checkpoint_dir()), predictor_factory=factory, **options)


def source(path: Path) -> VideoSource:
    return VideoSource(info=probe(path), path=path)


def gt_track_ids(results, gt: synthetic.GroundTruth, names) -> dict[str, Counter]:
    """For each ground-truth object, how often each output track id was its best match.

    Also asserts the object is found on every frame where it is visible, and its mask IoU
    over the whole video (summed intersection / summed union, the usual video J) is at
    least 0.98. Per frame, a few pixels of H.264 chroma smear at an entering edge can cost
    more on a tiny mask, which is why the bar is on the video, not on each frame."""
    found: dict[str, Counter] = {n: Counter() for n in names}
    inter = Counter()
    union = Counter()
    for fr in results:
        for name in names:
            truth = gt.mask(name, fr.frame_index)
            if truth is None:
                continue
            best = max(fr.objects, key=lambda o: mask_ops.iou(o.mask, truth), default=None)
            assert best is not None and mask_ops.iou(best.mask, truth) > 0.5, f"{name} missing on frame {fr.frame_index}"
            found[name][best.track_id] += 1
            inter[name] += int(np.logical_and(best.mask, truth).sum())
            union[name] += int(np.logical_or(best.mask, truth).sum())
    for name in names:
        assert inter[name] / union[name] >= 0.98, f"{name}: video IoU {inter[name] / union[name]:.4f}"
    return found


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synthetic.GroundTruth]:
    """600 frames of the default scene at 160x120: slow motion, objects enter and leave
    across chunk boundaries, the red ball passes in front of the others."""
    path = tmp_path_factory.mktemp("local") / "long.mp4"
    return path, synthetic.write_video(synthetic.default_scene(frame_count=600, width=160, height=120), path)


def test_600_frames_in_100_frame_chunks_keep_one_track_id_per_object(long_video) -> None:
    path, gt = long_video
    fake = ContractFakePredictor()
    progress = []
    request = SegmentRequest.build(prompt="red green ball, blue box")
    with fake_backend(fake, chunk_size=100, overlap=24) as backend:
        run = backend.segment(source(path), request, on_progress=progress.append)
        results = list(run)
    assert [fr.frame_index for fr in results] == list(range(600))
    assert run.record.backend == "local" and run.record.model == "sam3.1"
    # 8 chunks (0-100, 76-176, ..., 532-600), one session per concept in each.
    assert len(plan_chunks(600, 100, 24)) == 8 and fake.sessions_started == 16
    # The detector's ids really differ between sessions for the same object: stitching matters.
    ids_per_colour: dict[int, set[int]] = {}
    for _, colour, oid in fake.id_history:
        ids_per_colour.setdefault(colour, set()).add(oid)
    assert any(len(ids) > 1 for ids in ids_per_colour.values()), ids_per_colour
    found = gt_track_ids(results, gt, ["red ball", "green ball", "blue box"])
    for name, ids in found.items():
        assert len(ids) == 1, f"{name} got track ids {dict(ids)}"
    assert len({next(iter(c)) for c in found.values()}) == 3
    labels = {o.track_id: o.label for fr in results for o in fr.objects}
    assert labels[next(iter(found["red ball"]))] == "red green ball"
    assert labels[next(iter(found["blue box"]))] == "blue box"
    assert sorted(labels) == [1, 2, 3]
    for fr in results[::50]:
        for o in fr.objects:
            assert o.mask.dtype == bool and o.mask.shape == (120, 160)
            assert o.box == mask_ops.tight_box(o.mask)
    running = [p for p in progress if p.stage == "running" and p.frames_done]
    assert running and "frames/s" in running[-1].message and "ETA" in running[-1].message
    assert [p.frames_done for p in running] == sorted(p.frames_done for p in running)
    assert progress[-1].stage == "done" and progress[-1].frames_done == 600


def test_points_and_boxes_keep_their_object_ids_across_chunks(small_video) -> None:
    path, gt = small_video
    red = gt.mask("red ball", 10)
    ys, xs = np.nonzero(red)
    x, y = int(np.median(xs)), int(np.median(ys))
    bx0, by0, bx1, by1 = mask_ops.tight_box(gt.mask("blue box", 30))
    request = SegmentRequest.build(
        point_prompts=[{"x": x, "y": y, "label": 1, "object_id": 5, "frame_index": 10}],
        box_prompts=[{"x_min": bx0, "y_min": by0, "x_max": bx1, "y_max": by1, "object_id": 7, "frame_index": 30}],
    )
    fake = ContractFakePredictor()
    with fake_backend(fake, chunk_size=40, overlap=8) as backend:
        run = backend.segment(source(path), request)
        results = list(run)
    assert [fr.frame_index for fr in results] == list(range(48))
    found = gt_track_ids(results, gt, ["red ball"])
    assert dict(found["red ball"]) == {5: gt.frames_visible("red ball").__len__()}
    blue = [fr for fr in results if any(o.track_id == 7 for o in fr.objects)]
    assert all({o.label for o in fr.objects} <= {"object_5", "object_7"} for fr in results)
    assert dict(gt_track_ids(blue, gt, ["blue box"])["blue box"]) == {7: len(gt.frames_visible("blue box"))}
    # After the box leaves, only the luma key's stray edge pixels can carry its colour.
    gone = [o for fr in blue if fr.frame_index not in gt.frames_visible("blue box") for o in fr.objects if o.track_id == 7]
    assert all(o.mask.sum() < 20 for o in gone)
    # What went over the wire: relative coordinates, the box as tracker corner points (2, 3),
    # the object id, never the concept-style bounding_boxes.
    prompts = [r for r in fake.requests if r["type"] == "add_prompt"]
    box_req = next(r for r in prompts if r["obj_id"] == 7 and r["frame_index"] == 30)
    assert box_req["point_labels"] == [2, 3]
    assert np.allclose(box_req["points"], [[bx0 / 160, by0 / 120], [bx1 / 160, by1 / 120]])
    point_req = next(r for r in prompts if r["obj_id"] == 5 and r["frame_index"] == 10)
    assert point_req["point_labels"] == [1] and 0 < point_req["points"][0][0] < 1
    assert not any("bounding_boxes" in r or "text" in r for r in prompts)
    starts = [r for r in fake.requests if r["type"] == "start_session"]
    assert starts and all(r["resource_path"] == ("PIL images", 40 if i == 0 else 16) for i, r in enumerate(starts))
    # The second chunk (frames 32-47) carried both objects over from the overlap (chunk frames
    # 0-7) as box + a click inside, and every propagation named its start frame: a session with
    # only tracker prompts has no detector output to start from ("No prompts are received").
    seeds = [r for r in prompts if r["point_labels"] == [2, 3, 1] and r["frame_index"] < 8]
    assert sorted(r["obj_id"] for r in seeds) == [5, 7]
    runs = [r for r in fake.requests if r["type"] == "propagate_in_video"]
    assert [r["start_frame_index"] for r in runs] == [10, min(r["frame_index"] for r in seeds)]


def test_an_object_first_prompted_after_the_first_chunk_is_said_labelled_from_where_it_is(
        small_video, make_dataset, caplog: pytest.LogCaptureFixture) -> None:
    """Chunks [0,20) [14,34) [28,48): a box on frame 30 belongs to the chunk from 14, whose
    labels are written from frame 20 (14-19 came from the chunk before, which never saw
    it). The warning names frame 20, and the labels start there; segment_videos logs it
    (it was only in the field's info: a script or CLI user never saw it)."""
    path, gt = small_video
    assert {20, 30} <= set(gt.frames_visible("blue box"))
    x0, y0, x1, y1 = mask_ops.tight_box(gt.mask("blue box", 30))
    request = SegmentRequest.build(box_prompts=[{"x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1,
                                                 "object_id": 7, "frame_index": 30}])
    with fake_backend(ContractFakePredictor(), chunk_size=20, overlap=6) as backend:
        run = backend.segment(source(path), request)
        results = list(run)
    [warning] = run.record.warnings
    assert "object 7 (first prompted on frame index 30) is labelled from frame index 20 on" in warning
    assert "raise chunk_size above 31" in warning
    assert min(fr.frame_index for fr in results if any(o.track_id == 7 for o in fr.objects)) == 20

    from sam_backend.fiftyone_io import segment_videos

    with fake_backend(ContractFakePredictor(), chunk_size=20, overlap=6) as backend, caplog.at_level("WARNING"):
        segment_videos(make_dataset(path), box_prompts=request.box_prompts, label_field="sam", backend=backend)
    assert warning in caplog.messages


def test_frame_range_keeps_the_videos_own_frame_indices(small_video) -> None:
    path, gt = small_video
    fake = ContractFakePredictor()
    with fake_backend(fake, chunk_size=6, overlap=2) as backend:
        results = list(backend.segment(source(path), SegmentRequest.build(prompt="red ball"),
                                       frames=FrameRange(start=4, stop=40, step=3)))
    assert [fr.frame_index for fr in results] == list(range(4, 40, 3))
    found = gt_track_ids(results, gt, ["red ball"])
    assert len(found["red ball"]) == 1


def test_segment_videos_writes_local_results(small_video, make_dataset) -> None:
    import fiftyone as fo  # noqa: F401  (the SDK path)

    from sam_backend.fiftyone_io import segment_videos

    path, gt = small_video
    ds = make_dataset(path)
    fake = ContractFakePredictor()
    with fake_backend(fake, chunk_size=20, overlap=6) as backend:
        report = segment_videos(ds, prompt="red ball, green ball", label_field="local_sam", backend=backend)
    assert report.failed == {} and len(report.done) == 1 and report.estimated_usd is None
    assert report.records[report.done[0]].model == "sam3.1"
    sample = ds.first()
    assert len(sample.frames) == 48
    seen = Counter()
    for n in range(1, 49):
        dets = sample.frames[n]["local_sam"]
        assert dets is not None
        for d in dets.detections:
            seen[(d.label, d.index)] += 1
    assert {label for label, _ in seen} == {"red ball", "green ball"}
    assert len({index for _, index in seen}) == 2  # one stable track id each
    assert seen[next(k for k in seen if k[0] == "red ball")] == len(gt.frames_visible("red ball"))
    assert ds.get_field("frames.local_sam").info["sam31_video"]["backend"] == "local"


def test_local_videos_in_flight_are_capped_whatever_the_concurrency(small_video, make_dataset) -> None:
    """Chunks run one at a time on the engine, and each video in flight holds a decoded
    chunk: segment_videos' default of 8 videos at once only multiplied memory (4 x 640x480
    took 525 MB against 140 one at a time). The local backend keeps 2 in flight."""
    import threading

    from sam_backend.fiftyone_io import segment_videos

    ds = make_dataset(*[small_video[0]] * 5)
    lock, active, peak = threading.Lock(), [0], [0]
    with fake_backend(ContractFakePredictor(), chunk_size=20, overlap=6) as backend:
        segment = backend.segment

        def counted(*args, **kwargs):
            run = segment(*args, **kwargs)
            frames = run._frames

            def tracked():
                with lock:
                    active[0] += 1
                    peak[0] = max(peak[0], active[0])
                try:
                    yield from frames
                finally:
                    with lock:
                        active[0] -= 1
            run._frames = tracked()
            return run

        backend.segment = counted
        report = segment_videos(ds, prompt="red ball", label_field="sam", backend=backend, concurrency=8)
    assert report.failed == {} and len(report.done) == 5 and peak[0] == 2


def test_cancel_stops_propagation_and_writes_nothing(small_video, make_dataset) -> None:
    from sam_backend.fiftyone_io import segment_videos

    path, _ = small_video
    cancel = CancelToken()

    class CancelMidway(ContractFakePredictor):
        def propagate_in_video(self, *args, **kwargs):
            for n, item in enumerate(super().propagate_in_video(*args, **kwargs)):
                if n == 5:
                    cancel.cancel()  # as if the user pressed cancel mid-propagation
                yield item

    fake = CancelMidway()
    ds = make_dataset(path)
    with fake_backend(fake, chunk_size=20, overlap=6) as backend, pytest.raises(Cancelled):
        segment_videos(ds, prompt="red ball", label_field="cancelled", backend=backend, cancel=cancel)
    kinds = [r["type"] for r in fake.requests]
    assert "cancel_propagation" in kinds and kinds[-1] == "close_session"
    assert fake.sessions == {}  # every session closed
    assert not ds.has_frame_field("cancelled") or all(
        ds.first().frames[n]["cancelled"] is None for n in range(1, 49))


def test_out_of_memory_is_reported_with_what_to_lower(small_video, make_dataset) -> None:
    from sam_backend.fiftyone_io import segment_videos

    path, _ = small_video
    fake = ContractFakePredictor(oom_after_frames=30)
    with fake_backend(fake, chunk_size=20, overlap=6) as backend:
        with pytest.raises(LocalOutOfMemory) as err:
            list(backend.segment(source(path), SegmentRequest.build(prompt="red ball")))
        message = str(err.value)
        assert "out of memory" in message and "chunk_size=16" in message and "offload=True" in message
        assert "frames 14-33" in message  # the second chunk
        assert isinstance(err.value, SamError) and fake.sessions == {}
        ds = make_dataset(path)
        fake.frames_propagated = 0
        report = segment_videos(ds, prompt="red ball", label_field="oom", backend=backend)
    failed = list(report.failed.values())
    assert len(failed) == 1 and "out of memory" in failed[0] and "chunk_size=16" in failed[0]
    assert report.done == [] and not ds.has_frame_field("oom")


def test_request_is_validated_before_any_work(small_video) -> None:
    path, _ = small_video
    fake = ContractFakePredictor()
    backend = fake_backend(fake)
    bad = SegmentRequest.build(box_prompts=[{"x_min": 100, "y_min": 10, "x_max": 170, "y_max": 40, "object_id": 1}])
    with pytest.raises(InvalidRequest, match=r"outside the frame \(160x120\)"):
        backend.segment(source(path), bad)
    with pytest.raises(InvalidRequest, match="not among the frames"):
        backend.segment(source(path), SegmentRequest.build(point_prompts=[{"x": 5, "y": 5, "frame_index": 3}]),
                        frames=FrameRange(start=0, step=2))
    assert fake.requests == []


def test_cost_estimate_is_time_not_money() -> None:
    from sam_backend.types import VideoInfo

    backend = fake_backend(ContractFakePredictor())
    info = VideoInfo(width=160, height=120, frame_count=300, fps=30, duration=10)
    est = backend.estimate_cost(info, SegmentRequest.build(prompt="x"))
    assert est.usd is None and est.backend == "local" and est.frames == 300
    assert "estimated time about 10 s" in est.detail


def test_missing_checkpoint_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="needs a checkpoint") as err:
        BACKEND(engine="sam3.1", environ={})
    assert "facebook/sam3.1" in str(err.value) and "SAM31_LOCAL_CHECKPOINT" in str(err.value)
    with pytest.raises(EngineUnavailable, match="has no sam3.pt"):
        BACKEND(engine="sam3", environ={"SAM31_LOCAL_CHECKPOINT": str(tmp_path)})
    with pytest.raises(EngineUnavailable, match="checkpoint not found"):
        BACKEND(engine="sam3.1", checkpoint=str(tmp_path / "nope.pt"))


def test_missing_sam3_package_gives_the_install_line(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("sam3") is not None:
        pytest.skip("Meta's sam3 package is installed here")
    (tmp_path / "sam3.1_multiplex.pt").write_bytes(b"not really weights")
    with pytest.raises(EngineUnavailable) as err:
        BACKEND(engine="sam3.1", environ={"SAM31_LOCAL_CHECKPOINT": str(tmp_path)})
    assert "pip install 'sam3 @ git+https://github.com/facebookresearch/sam3.git'" in str(err.value)


def test_missing_transformers_gives_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(EngineUnavailable, match=r"pip install 'sam31-video\[local\]'"):
        BACKEND(engine="transformers", model="/does/not/matter")


def test_the_other_engines_model_option_is_refused_naming_the_right_one(tmp_path: Path) -> None:
    """``checkpoint`` with transformers, or ``model`` with a Meta engine, would be ignored
    and the run would load something else: refused when the backend is built."""
    with pytest.raises(InvalidRequest, match=r"engine='transformers' loads model=.*pass model=\.\.\. instead"):
        BACKEND(engine="transformers", checkpoint=str(tmp_path / "sam3.1_multiplex.pt"), environ={})
    with pytest.raises(InvalidRequest, match=r"model='/models/sam3-hf' is read by engine='transformers' only; "
                                             r"engine='sam3' loads checkpoint=<sam3\.pt"):
        BACKEND(engine="sam3", model="/models/sam3-hf", environ={})
    with pytest.raises(InvalidRequest, match="pass engine='transformers'"):
        BACKEND(model="/models/sam3-hf", environ={})  # the default engine is sam3.1
    # both set in the environment is fine: each engine reads its own
    both = {"SAM31_LOCAL_CHECKPOINT": str(tmp_path), "SAM31_LOCAL_MODEL": "/models/sam3-hf"}
    with pytest.raises(EngineUnavailable, match="has no sam3.pt"):
        BACKEND(engine="sam3", environ=both)


def test_bad_options_are_invalid_requests() -> None:
    with pytest.raises(InvalidRequest, match="overlap=30 must be smaller than chunk_size=20"):
        BACKEND(engine="sam3.1", chunk_size=20, overlap=30, predictor_factory=lambda **_: None)
    with pytest.raises(InvalidRequest, match="engine"):
        BACKEND(engine="sam4", predictor_factory=lambda **_: None)


def test_plan_chunks_covers_every_frame_once() -> None:
    for n, size, overlap in [(1, 10, 2), (10, 10, 2), (11, 10, 2), (600, 100, 24), (3000, 200, 24)]:
        chunks = plan_chunks(n, size, overlap)
        emitted = [p for c in chunks for p in range(c.emit_from, c.stop)]
        assert emitted == list(range(n))
        assert all(len(c) <= size for c in chunks)
        assert all(b.start == a.stop - overlap for a, b in zip(chunks, chunks[1:]))


def test_match_tracks_follows_masks_not_ids() -> None:
    def obj(x0: int, concept: str = "ball") -> StoredObject:
        m = np.zeros((20, 40), bool)
        m[5:15, x0:x0 + 10] = True
        return StoredObject(mask_ops.encode_rle(m), 0.9, concept)

    previous = {0: {1: obj(0), 2: obj(25)}, 1: {1: obj(1), 2: obj(24)}}
    current = {0: {0: obj(25), 1: obj(0)}, 1: {0: obj(24), 1: obj(1)}}
    assert match_tracks(previous, current, 0.5) == {0: 2, 1: 1}
    other_concept = {0: {0: obj(25, "box")}, 1: {0: obj(24, "box")}}
    assert match_tracks(previous, other_concept, 0.5) == {}


def test_match_tracks_honours_its_iou_threshold() -> None:
    """Two 10x10 squares 4 px apart on both overlap frames: summed IoU = 60/140 = 0.43.
    They are the same track at a threshold of 0.4 and different tracks at 0.5 (the
    default); a third, disjoint object never matches at any threshold."""
    def square(x0: int) -> StoredObject:
        m = np.zeros((20, 60), bool)
        m[4:14, x0:x0 + 10] = True
        return StoredObject(mask_ops.encode_rle(m), 0.9, "ball")

    previous = {10: {5: square(10), 8: square(45)}, 11: {5: square(11), 8: square(45)}}
    current = {10: {2: square(14), 3: square(30)}, 11: {2: square(15), 3: square(30)}}
    assert match_tracks(previous, current, 0.4) == {2: 5}
    assert match_tracks(previous, current, 0.42) == {2: 5}
    assert match_tracks(previous, current, 0.43) == {}
    assert match_tracks(previous, current, 0.5) == {}


def test_the_backend_stitches_chunks_with_its_configured_iou() -> None:
    """The backend hands its ``stitch_iou`` setting to the matcher. (End to end the fake
    segmenter draws identical masks on the overlap, IoU 1.0, so this goes through the
    backend's stitching step with the 0.43-IoU pair of the test above.)"""
    def square(x0: int) -> StoredObject:
        m = np.zeros((20, 60), bool)
        m[4:14, x0:x0 + 10] = True
        return StoredObject(mask_ops.encode_rle(m), 0.9, "ball")

    chunk = plan_chunks(40, 12, 2)[1]  # positions 10-21, emitted from 12: overlap 10, 11
    tail = {10: {5: square(10)}, 11: {5: square(11)}}
    results = {10: {("t", 2): square(14)}, 11: {("t", 2): square(15)}, 12: {("t", 2): square(16)}}
    mapped = {}
    for stitch_iou in (0.4, 0.5):
        with fake_backend(ContractFakePredictor(), stitch_iou=stitch_iou) as backend:
            mapped[stitch_iou] = backend._stitch(chunk, tail, results)
    assert mapped == {0.4: {2: 5}, 0.5: {}}


def test_request_keys_are_filtered_to_the_installed_signature() -> None:
    class OldPredictor:
        def add_prompt(self, session_id, frame_idx, text=None, points=None, point_labels=None, obj_id=None):
            ...

    request = {"type": "add_prompt", "session_id": "s", "frame_index": 0, "points": [[0.1, 0.2]],
               "point_labels": [1], "obj_id": 3, "rel_coordinates": True, "output_prob_thresh": 0.5}
    assert _filter_request(OldPredictor(), request) == {
        "type": "add_prompt", "session_id": "s", "frame_index": 0, "points": [[0.1, 0.2]], "point_labels": [1], "obj_id": 3}


def test_importing_the_local_backend_loads_no_torch() -> None:
    code = ("import sys\nimport sam_backend.backends.local, sam_backend.backends.local.fake_predictor\n"
            "from sam_backend.backends import available_backends\n"
            "assert 'local' in available_backends()\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


# ---- what the real predictor refuses, the fake refuses (issue 12) ------------------------


def test_builder_gets_only_the_arguments_the_real_builders_take() -> None:
    """build_sam3_predictor passes **kwargs down to builders without **kwargs: load_from_HF and
    device (which the multiplex builder and Sam3VideoPredictor.__init__ reject) must not go."""
    from sam_backend.backends.local.config import LocalConfig

    for version in ("sam3.1", "sam3"):
        fake = ContractFakePredictor(version=version)
        module = fake_sam3_module(fake)
        with pytest.raises(TypeError, match="load_from_HF"):  # the fake is as strict as upstream
            module.build_sam3_predictor(checkpoint_path=str(checkpoint_dir() / "sam3.pt"), version=version,
                                        use_fa3=False, load_from_HF=False)
        config = LocalConfig(engine=version, checkpoint=checkpoint_dir(), device="cpu")
        assert build_predictor(config, resolve_checkpoint(config), 5, module) is fake
        (built,) = fake.builds
        assert built["checkpoint_path"].endswith("sam3.1_multiplex.pt" if version == "sam3.1" else "sam3.pt")
        if version == "sam3.1":  # flash-attn 3 is not installed here: use_fa3 must be off, not ImportError
            assert built["use_fa3"] is False and built["max_num_objects"] == 5


def test_sam31_session_starts_despite_upstream_issue_544(small_video) -> None:
    """SAM 3.1's start_session always forwards offload_state_to_cpu; its model's init_state
    does not take it. The engine wraps the model's init_state; unwrapped, the fake fails."""
    from PIL import Image

    bare = ContractFakePredictor(version="sam3.1")
    with pytest.raises(TypeError, match="offload_state_to_cpu"):
        bare.handle_request({"type": "start_session", "resource_path": [Image.new("RGB", (8, 8))]})
    path, _ = small_video
    fake = ContractFakePredictor(version="sam3.1")
    with fake_backend(fake, chunk_size=48, overlap=4, offload=True) as backend:
        results = list(backend.segment(source(path), SegmentRequest.build(prompt="red ball")))
    assert any(fr.objects for fr in results) and fake.sessions_started == 1


def test_tracker_only_session_cannot_propagate_without_a_start_frame() -> None:
    from PIL import Image

    sam3 = ContractFakePredictor(version="sam3")  # SAM 3's request API only refines a detector pass
    sid = sam3.handle_request({"type": "start_session", "resource_path": [Image.new("RGB", (16, 12))]})["session_id"]
    with pytest.raises(AssertionError, match="No cached outputs found"):
        sam3.handle_request({"type": "add_prompt", "session_id": sid, "frame_index": 0, "points": [[0.5, 0.5]],
                             "point_labels": [1], "obj_id": 1})
    fake = patch_init_state(ContractFakePredictor(version="sam3.1"))  # the #544 workaround, as the engine does
    session = fake.handle_request({"type": "start_session", "resource_path": [Image.new("RGB", (16, 12))] * 3})
    sid = session["session_id"]
    fake.handle_request({"type": "add_prompt", "session_id": sid, "frame_index": 1, "points": [[0.5, 0.5]],
                         "point_labels": [1], "obj_id": 1})
    with pytest.raises(RuntimeError, match="No prompts are received"):
        list(fake.handle_stream_request({"type": "propagate_in_video", "session_id": sid}))
    frames = [item["frame_index"] for item in fake.handle_stream_request(
        {"type": "propagate_in_video", "session_id": sid, "start_frame_index": 1})]
    assert frames == [1, 2, 0]


@pytest.mark.parametrize("version", ["sam3", "sam3.1"])
def test_detection_threshold_drops_low_scores_in_both_versions(small_video, version: str) -> None:
    """SAM 3 ignores output_prob_thresh (the fake too): the engine applies the threshold."""
    path, _ = small_video
    counts = {}
    for threshold in (0.3, 0.5):
        fake = ContractFakePredictor(version=version, text_score=0.4)
        with fake_backend(fake, chunk_size=48, overlap=4) as backend:
            results = list(backend.segment(source(path), SegmentRequest.build(prompt="red ball",
                                                                              detection_threshold=threshold)))
        counts[threshold] = sum(len(fr.objects) for fr in results)
    assert counts[0.3] > 0 and counts[0.5] == 0, counts


def test_threads_share_one_predictor_and_take_turns(small_video) -> None:
    import threading

    path, _ = small_video
    fake = ContractFakePredictor()
    errors: list[BaseException] = []
    with fake_backend(fake, chunk_size=20, overlap=6) as backend:
        def one() -> None:
            try:
                list(backend.segment(source(path), SegmentRequest.build(prompt="red ball")))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert len(fake.builds) == 1  # one model for the device, not one per thread
    assert fake.most_live_sessions == 1 and fake.sessions_started == 4 * 3


def test_carried_objects_come_from_the_overlap_frame_where_they_are_most_visible() -> None:
    from sam_backend.backends.local.backend import _seeds
    from sam_backend.backends.local.chunking import Chunk

    def stored(area: int) -> StoredObject:
        m = np.zeros((10, 10), bool)
        m.flat[:area] = True
        return StoredObject(mask_ops.encode_rle(m), 1.0, None)

    # Object 3 is hidden on the chunk's first frame (20) and largest on 22; text objects stay out.
    tail = {21: {3: stored(4)}, 22: {3: stored(9), 4: StoredObject(stored(5).rle, 0.9, "ball")}, 23: {3: stored(2)}}
    (seed,) = _seeds(tail, Chunk(index=1, start=20, stop=40, emit_from=24))
    assert (seed.obj_id, seed.frame, int(seed.mask.sum())) == (3, 2, 9)
