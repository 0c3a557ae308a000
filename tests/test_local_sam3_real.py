"""The Meta engine driven through Meta's real ``sam3`` code (the PyPI package, SAM 3) on CPU.

The PyPI ``sam3`` pins numpy<2.4 and needs torchvision, which clash with this project's
environment, so scripts/setup.sh installs it in a second virtualenv (``$VIRTUAL_ENV/sam3-venv``)
and ``test_real_sam3_suite`` runs this same file there in a subprocess; inside that venv the
tests below run directly. On CI a missing sam3 venv is a failure, not a skip.

What is real: the builder (``build_sam3_video_predictor`` -> ``Sam3VideoPredictorMultiGPU``
-> ``Sam3VideoPredictor.__init__`` -> ``build_sam3_video_model``, every module built at full
size), the request dispatcher, sessions, the frame loaders (PIL list and JPEG folder), text
prompting, the tracker API (click and box encoding, mask inputs, consolidation, processing
order, non-overlap constraints, resizing to video size, hole filling) and output
post-processing. What stands in (tests/test_local_sam3_standins.py): the
CUDA calls (mapped to CPU), the weights (``load_state_dict``; nothing can be downloaded),
and the network forwards: the detector-and-tracker step of a text session
(``_det_track_one_frame``) and, in the tracker, the image encoder (``_get_image_feature``),
the SAM heads with memory attention (``track_step``) and the memory encoder
(``_encode_new_memory``). The stand-ins see by colour, like the contract fake.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_SAM3_VENV = importlib.util.find_spec("sam3") is not None and importlib.util.find_spec("torchvision") is not None


def sam3_python() -> Path | None:
    """The sam3 test venv's python (made by scripts/setup.sh), if present."""
    for base in (Path(sys.prefix), ROOT / ".venv"):
        candidate = base / "sam3-venv" / "bin" / "python"
        if candidate.is_file():
            return candidate
    return None


CHILD = "SAM31_REAL_SAM3_SUITE_CHILD"  # set by run_suite for the run in the sam3 venv


def run_suite(python: Path, *, timeout: float = 1500) -> str:
    """Run this file with ``python`` (the sam3 venv's); its pytest output, or a test failure.
    A python that cannot import sam3 and torchvision fails at once, before the run: this file
    would otherwise not see the sam3 venv there and start itself again in it, until the timeout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "USE_PERFLIB": "0", CHILD: "1"}
    env.pop("VIRTUAL_ENV", None)
    check = subprocess.run([str(python), "-c", "import sam3, torchvision"], capture_output=True, text=True, cwd=ROOT,
                           env=env, timeout=600, check=False)
    if check.returncode != 0:
        pytest.fail(f"the sam3 test venv's python {python} cannot import sam3 and torchvision (re-run "
                    f"'. scripts/setup.sh' to reinstall them):\n{check.stderr[-1500:]}")
    # Its own process group (unless this is already a child run), killed whole on timeout.
    proc = subprocess.Popen([str(python), "-m", "pytest", str(Path(__file__)), "-q", "--noconftest", "-p",
                             "no:cacheprovider", "-x"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env, start_new_session=not os.environ.get(CHILD))
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        if not os.environ.get(CHILD):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"the real-sam3 suite did not finish in {timeout:.0f} s:\n{stdout[-3000:]}{stderr[-1000:]}")
    tail = stdout[-6000:] + stderr[-2000:]
    if proc.returncode != 0:
        pytest.fail(tail)
    summary = stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, tail
    return stdout


if not IN_SAM3_VENV and os.environ.get(CHILD):
    def test_sam3_imports_in_its_venv() -> None:
        """Run by run_suite in a venv without sam3 (or torchvision): fail, never start again."""
        pytest.fail(f"{sys.executable} was run as the sam3 test venv but cannot find sam3 and torchvision")

elif not IN_SAM3_VENV:
    def test_real_sam3_suite() -> None:
        """Runs this file in the sam3 venv; every test there must pass, none may skip."""
        python = sam3_python()
        if python is None:
            message = "the sam3 test venv is missing: run '. scripts/setup.sh' (it makes $VIRTUAL_ENV/sam3-venv)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        run_suite(python)

    def test_suite_fails_at_once_when_its_venv_cannot_import_sam3(tmp_path: Path) -> None:
        """A sam3 venv whose python has pytest but no sam3: the suite fails within seconds,
        saying so. The venv holds a ``sam3-venv`` link to itself, so this file run there finds
        it again as the sam3 venv (as ``$VIRTUAL_ENV/sam3-venv`` finds itself when the venv is
        broken) and, without the checks, would start itself in it again and again."""
        import sysconfig
        import time

        venv = tmp_path / "broken"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        python = venv / "bin" / "python"
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        paths = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))  # pytest, numpy; no sam3
        Path(purelib, "outer.pth").write_text("\n".join(paths) + "\n")
        (venv / "sam3-venv").symlink_to(venv)
        began = time.monotonic()
        with pytest.raises(pytest.fail.Exception) as failure:
            run_suite(python, timeout=60)
        assert "cannot import sam3" in str(failure.value) or "cannot find sam3" in str(failure.value), failure.value
        assert time.monotonic() - began < 45


if IN_SAM3_VENV:
    from test_local_sam3_standins import BACKEND_OPTIONS, make_backend, run_request, write_scene  # noqa: E402

    @pytest.fixture(scope="module")
    def backend(tmp_path_factory: pytest.TempPathFactory):
        with make_backend(tmp_path_factory.mktemp("ckpt")) as backend:
            yield backend

    @pytest.fixture(scope="module")
    def scene(tmp_path_factory: pytest.TempPathFactory):
        return write_scene(tmp_path_factory.mktemp("video") / "scene.mp4", frames=48)

    def test_builder_runs_and_predictor_is_the_real_one(backend) -> None:
        from sam3.model.sam3_video_predictor import Sam3VideoPredictor

        predictor = backend.engine._shared(BACKEND_OPTIONS["max_num_objects"]).predictor
        assert isinstance(predictor, Sam3VideoPredictor)
        assert sum(p.numel() for p in predictor.model.parameters()) > 5e8  # the full-size network was built

    def test_text_prompt_through_real_sessions(backend, scene) -> None:
        path, gt = scene
        results = run_request(backend, path, prompt="red ball, blue box")
        assert [fr.frame_index for fr in results] == list(range(48))
        ids = _best_ids(results, gt, ["red ball", "blue box"])
        assert all(len(v) == 1 for v in ids.values()), ids
        labels = {o.track_id: o.label for fr in results for o in fr.objects}
        assert labels[next(iter(ids["red ball"]))] == "red ball"

    def test_points_and_boxes_through_the_real_tracker(backend, scene) -> None:
        path, gt = scene
        x, y = _click(gt, "red ball", 6)  # far from the diagonal: a click with x and y swapped lands on nothing
        bx0, by0, bx1, by1 = _box(gt.mask("blue box", 30))
        results = run_request(backend, path, point_prompts=[
            {"x": x, "y": y, "label": 1, "object_id": 5, "frame_index": 6}],
            box_prompts=[{"x_min": bx0, "y_min": by0, "x_max": bx1, "y_max": by1, "object_id": 7, "frame_index": 30}])
        ids = _best_ids(results, gt, ["red ball", "blue box"])
        assert set(ids["red ball"]) == {5}  # found (>= 95% of frames) both ways from frame 6
        assert set(ids["blue box"]) == {7}

    def test_garbage_point_coordinates_fail(backend, scene) -> None:
        """A click on the background must not find the red ball (the prompt matters)."""
        path, gt = scene
        results = run_request(backend, path, point_prompts=[{"x": 2, "y": 2, "label": 1, "object_id": 5,
                                                             "frame_index": 20}])
        assert not any(o.track_id == 5 and _iou(o.mask, gt.mask("red ball", fr.frame_index)) > 0.5
                       for fr in results for o in fr.objects if gt.mask("red ball", fr.frame_index) is not None)

    def test_threshold_drops_text_objects_sam3_would_keep(backend, scene) -> None:
        """SAM 3's predictor ignores output_prob_thresh (the stand-in detector scores 0.9)."""
        path, _ = scene
        kept = run_request(backend, path, prompt="red ball", detection_threshold=0.5)
        dropped = run_request(backend, path, prompt="red ball", detection_threshold=0.95)
        assert any(fr.objects for fr in kept) and not any(fr.objects for fr in dropped)

    def test_two_samples_at_once_share_one_model(backend, scene) -> None:
        import threading

        from test_local_sam3_standins import LOADED, cpu_mode

        path, gt = scene
        backend.engine._shared(BACKEND_OPTIONS["max_num_objects"])  # built (once) before the samples start
        builds = len(LOADED)
        outcomes: list = []

        def one() -> None:
            try:
                with cpu_mode():  # no CUDA here: each thread maps it to the CPU itself
                    outcomes.append(run_request(backend, path, prompt="blue box"))
            except BaseException as exc:  # noqa: BLE001 - asserted below
                outcomes.append(exc)

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(LOADED) == builds  # no second model built
        for results in outcomes:
            assert not isinstance(results, BaseException), results
            assert len(_best_ids(results, gt, ["blue box"])["blue box"]) == 1

    def test_600_frames_in_chunks_keep_one_id_per_object(backend, tmp_path: Path) -> None:
        path, gt = write_scene(tmp_path / "long.mp4", frames=600)
        results = run_request(backend, path, prompt="green ball, blue box", chunk_size=100, overlap=24)
        assert [fr.frame_index for fr in results] == list(range(600))
        ids = _best_ids(results, gt, ["green ball", "blue box"])
        assert all(len(v) == 1 for v in ids.values()), ids
        assert len({next(iter(v)) for v in ids.values()}) == 2

    @pytest.fixture
    def tracker_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
        """Every prompt the real tracker (``Sam3TrackerPredictor``) receives, in order, with the
        frame folder of its session (one folder per chunk): kind ("mask" or "points_or_box")
        and the call's arguments."""
        import inspect

        from sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor

        calls: list[dict] = []
        folders: dict[int, str] = {}

        def spy(name: str, kind: str | None):
            original = getattr(Sam3TrackerPredictor, name)
            signature = inspect.signature(original)

            def wrapper(self, *args, **kwargs):
                bound = signature.bind(self, *args, **kwargs)
                bound.apply_defaults()
                arguments = dict(bound.arguments)
                out = original(self, *args, **kwargs)
                if kind is None:
                    folders[id(out)] = str(arguments["video_path"])
                else:
                    calls.append({"kind": kind, "folder": folders[id(arguments["inference_state"])], **arguments})
                return out

            monkeypatch.setattr(Sam3TrackerPredictor, name, wrapper)

        spy("init_state", None)
        spy("add_new_mask", "mask")
        spy("add_new_points_or_box", "points_or_box")
        return calls

    @pytest.fixture(scope="module")
    def hiding_scene(tmp_path_factory: pytest.TempPathFactory):
        """Two balls that pass behind a tall blue box (drawn on top) and come out again: hidden
        on frames 13-15 and 27-29, fully seen on 21 and from 35 on. With chunks of 24 frames
        overlapping by 10, each later chunk starts on a frame where both balls are hidden."""
        from sam_backend import synthetic

        def there_and_back(y: float, x0: float, dx: float) -> tuple[tuple[int, float, float], ...]:
            return ((0, x0, y), (14, 80, y), (21, 80 + dx, y), (28, 80, y), (35, 80 - dx, y), (47, x0, y))

        scene = synthetic.Scene(160, 120, 48, "25", (
            synthetic.ShapeSpec("red ball", "red", "circle", 8, 8, there_and_back(95, 40, 21)),
            synthetic.ShapeSpec("green ball", "green", "circle", 8, 8, there_and_back(28, 120, -21)),
            synthetic.ShapeSpec("blue box", "blue", "rect", 12, 50, ((0, 80, 60), (47, 80, 60)), z=5),
        ))
        path = tmp_path_factory.mktemp("hiding") / "hiding.mp4"
        return path, synthetic.write_video(scene, path)

    def test_clicks_and_boxes_carried_across_chunks_as_masks(backend, hiding_scene, tracker_calls) -> None:
        """Three chunks; the click and box objects are carried into the next chunk as MASK
        prompts (``add_new_mask``), each from the overlap frame where the previous chunk saw
        most of it (the chunk's first frame shows neither ball), equal to its mask there."""
        from sam_backend.backends.local.chunking import plan_chunks

        path, gt = hiding_scene
        x, y = _click(gt, "red ball", 3)
        bx0, by0, bx1, by1 = _box(gt.mask("green ball", 3))
        results = run_request(backend, path, chunk_size=24, overlap=10, point_prompts=[
            {"x": x, "y": y, "label": 1, "object_id": 3, "frame_index": 3}],
            box_prompts=[{"x_min": bx0, "y_min": by0, "x_max": bx1, "y_max": by1, "object_id": 4, "frame_index": 3}])
        plan = plan_chunks(48, 24, 10)
        assert [(c.start, c.emit_from) for c in plan] == [(0, 0), (14, 24), (28, 38)]
        folders = list(dict.fromkeys(call["folder"] for call in tracker_calls))
        by_chunk = [[c for c in tracker_calls if c["folder"] == f] for f in folders]
        summary = [[(c["kind"], int(c["frame_idx"]), c["obj_id"]) for c in calls] for calls in by_chunk]
        assert len(folders) == 3, f"prompts reached the tracker in {len(folders)} of 3 chunks: {summary}"
        # Chunk 0: the user's click and box, as given.
        assert sorted((c["kind"], c["frame_idx"], c["obj_id"]) for c in by_chunk[0]) == [
            ("points_or_box", 3, 3), ("points_or_box", 3, 4)]
        click = next(c for c in by_chunk[0] if c["obj_id"] == 3)
        (px, py), = np.asarray(click["points"], dtype=float) * [160, 120]  # relative -> pixels
        assert gt.mask("red ball", 3)[int(py), int(px)], (px, py, x, y)  # the click lands on the red ball
        # Later chunks: one mask per object, nothing else.
        masks = {fr.frame_index: {o.track_id: o.mask for o in fr.objects} for fr in results}
        for chunk, calls in zip(plan[1:], by_chunk[1:]):
            assert sorted((c["kind"], c["obj_id"]) for c in calls) == [("mask", 3), ("mask", 4)], summary
            for call in calls:
                oid, name = call["obj_id"], {3: "red ball", 4: "green ball"}[call["obj_id"]]
                first = gt.mask(name, chunk.start)
                assert first is None or first.sum() < 10  # the scene: hidden on the chunk's first frame
                overlap = range(chunk.start, chunk.emit_from)  # emitted by the previous chunk
                areas = {f: int(masks[f][oid].sum()) if oid in masks[f] else 0 for f in overlap}
                frame = chunk.start + int(call["frame_idx"])
                assert frame in overlap and areas[frame] == max(areas.values()), (oid, frame, areas)
                assert np.array_equal(np.asarray(call["mask"].cpu(), dtype=bool), masks[frame][oid]), (oid, frame)
        ids = _best_ids(results, gt, ["red ball", "green ball"])
        assert set(ids["red ball"]) == {3}
        assert set(ids["green ball"]) == {4}

    def _click(gt, name: str, frame: int) -> tuple[int, int]:
        """A pixel inside the object, asserted far from the frame's diagonal (relative x and y
        apart), so a click read with x and y swapped falls off the object."""
        ys, xs = np.nonzero(gt.mask(name, frame))
        x, y = int(np.median(xs)), int(np.median(ys))
        w, h = gt.scene.width, gt.scene.height
        assert abs(x / w - y / h) > 0.25 and not gt.mask(name, frame)[min(int(x * h / w), h - 1), min(int(y * w / h), w - 1)]
        return x, y

    def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
        ys, xs = np.nonzero(mask)
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1

    def _iou(a: np.ndarray, b: np.ndarray | None) -> float:
        if b is None:
            return 0.0
        union = np.logical_or(a, b).sum()
        return float(np.logical_and(a, b).sum() / union) if union else 0.0

    def _best_ids(results, gt, names) -> dict[str, dict[int, int]]:
        """Per ground-truth object: how often each track id was its best match (IoU > 0.5).
        The object must be matched on at least 95% of the frames where it shows 30 pixels or
        more: the stand-ins see frames resampled 160x120 -> 1008x1008 -> back (the model's
        input size), and a ball half hidden behind another can drop to a sliver there."""
        from collections import Counter

        found: dict[str, Counter] = {n: Counter() for n in names}
        for fr in results:
            for name in names:
                truth = gt.mask(name, fr.frame_index)
                if truth is None or truth.sum() < 30:
                    continue
                best = max(fr.objects, key=lambda o: _iou(o.mask, truth), default=None)
                if best is not None and _iou(best.mask, truth) > 0.5:
                    found[name][best.track_id] += 1
        for name in names:
            assert sum(found[name].values()) >= 0.95 * _visible(gt, name), (name, dict(found[name]), _visible(gt, name))
        return {n: dict(c) for n, c in found.items()}

    def _visible(gt, name: str) -> int:
        return sum(1 for f in gt.frames_visible(name) if gt.mask(name, f).sum() >= 30)
