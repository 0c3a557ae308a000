"""Every benchmark of the client's own work, each figure beside its baseline measured in the same run.

    python bench/run.py [--quick] [--out-dir .] [--repeats 3] [--skip e2e_baseline,concurrency,...]

Writes ``BENCHMARKS.md`` (a table) and ``bench/results.json`` (every run's raw numbers)
into ``--out-dir``. Each figure is the median of ``--repeats`` runs with its min..max.
Baselines: FiftyOne's own write and export paths, raw MongoDB inserts, and the client as it
was before issue 15 (commit ``BASELINE_COMMIT``, unpacked with ``git archive`` into a
temporary folder and run in its own processes with ``PYTHONPATH`` pointing there).
``--quick`` runs the same machinery on tiny sizes (smoke test; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # this tree's sam_backend, not an installed copy
sys.path.insert(0, str(HERE))

from _bench_db import drop_own_database  # noqa: E402  (before fiftyone: names this run's database)

os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")

BASELINE_COMMIT = "a3769f5"  # main just before issue 15
PY = sys.executable


# --------------------------------------------------------------------------- figures


class Table:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, section: str, name: str, unit: str, runs: list[float], *, baseline: str | None = None,
            baseline_runs: list[float] | None = None, higher_is_better: bool = True, note: str = "") -> dict[str, Any]:
        row: dict[str, Any] = {"section": section, "name": name, "unit": unit, **_summary(runs), "note": note,
                               "higher_is_better": higher_is_better}
        if baseline is not None and baseline_runs:
            row["baseline"] = {"name": baseline, **_summary(baseline_runs)}
            b, v = row["baseline"]["median"], row["median"]
            row["ratio"] = (v / b if higher_is_better else b / v) if v and b else None
        self.rows.append(row)
        ratio = f" = {row['ratio']:.2f}x {baseline}" if row.get("ratio") else ""
        print(f"  {section} | {name}: {row['median']:.4g} {unit}{ratio}", flush=True)
        return row


def _summary(runs: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}


def repeat(n: int, fn: Callable[[], float]) -> list[float]:
    return [fn() for _ in range(n)]


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    mem = ""
    with contextlib.suppress(OSError):
        mem = next((line.split(":", 1)[1].strip() for line in open("/proc/meminfo") if line.startswith("MemTotal")), "")
    import numpy

    versions = {"python": platform.python_version(), "numpy": numpy.__version__}
    with contextlib.suppress(Exception):
        import fiftyone

        versions["fiftyone"] = fiftyone.__version__
    return {"cpu": model, "cores": os.cpu_count(), "memory": mem, "os": platform.platform(),
            "load_average_at_start": os.getloadavg(), "versions": versions,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def file_create_us(folder: Path, count: int = 2000) -> float:
    """Microseconds to create and write one 400-byte file in ``folder`` (what a mask PNG
    costs the filesystem): the mask_path figures move with it."""
    probe = folder / "probe"
    probe.mkdir()
    data = b"x" * 400
    t = time.perf_counter()
    for i in range(count):
        fd = os.open(probe / f"{i:06d}.png", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.close(fd)
    return 1e6 * (time.perf_counter() - t) / count


# --------------------------------------------------------------------------- data


def moving_blobs(frames: int, objects: int, width: int = 640, height: int = 360, seed: int = 0):
    """FrameResults of blob-shaped masks (held as crops) moving across the frame."""
    import numpy as np
    from _e2e import blob_templates

    from sam_backend.types import FrameResult, TrackedObject

    rng = np.random.default_rng(seed + 1)
    templates = blob_templates(objects, seed)
    starts = rng.uniform([0, 0], [width - 130, height - 130], size=(objects, 2))
    velocity = rng.uniform(-2, 2, size=(objects, 2))
    out = []
    for f in range(frames):
        objs = []
        for k, t in enumerate(templates):
            h, w = t.shape
            x0, y0 = ((starts[k] + velocity[k] * f) % [width - w, height - h]).astype(int)
            objs.append(TrackedObject.from_crop(k + 1, f"blob {k % 4}", 0.9, t, (int(x0), int(y0), int(x0) + w,
                                                                              int(y0) + h), (height, width)))
        out.append(FrameResult(f, objs))
    return out


# --------------------------------------------------------------------------- writer


def bench_writer(table: Table, frames: int, objects: int, repeats: int, *, naive: bool, mask_root: Path) -> None:
    import fiftyone as fo
    import fiftyone.core.odm as foo
    from bson import ObjectId

    from sam_backend.fiftyone_io.labels import to_detections
    from sam_backend.fiftyone_io.writer import FrameLabelWriter, WritePolicy, detection_doc
    from sam_backend.types import VideoInfo

    results = moving_blobs(frames, objects)
    info = VideoInfo(width=640, height=360, frame_count=frames, fps=30.0, duration=frames / 30)
    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath="/bench/first.mp4"))  # makes it a video dataset (with a frames collection)
    frames_coll = foo.get_db_conn()[ds._frame_collection_name]
    section = f"writer, {frames} frames x {objects} objects (640x360)"
    tmp = Path(tempfile.mkdtemp(prefix=f"masks-{frames}-", dir=mask_root))

    def new_sample() -> str:
        return ds.add_sample(fo.Sample(filepath=f"/bench/{ObjectId()}.mp4"))

    def writer(policy: WritePolicy = WritePolicy()) -> float:
        sid = new_sample()
        w = FrameLabelWriter(ds, "fast")
        t = time.perf_counter()
        w.write_sample(sid, iter(results), info, policy)
        return frames / (time.perf_counter() - t)

    def docs_for(sid: str) -> list[dict[str, Any]]:
        return [{"_id": ObjectId(), "_sample_id": ObjectId(sid), "_dataset_id": ds._doc.id,
                 "frame_number": r.frame_index + 1,
                 "raw": {"_cls": "Detections", "detections": [detection_doc(o, 640, 360) for o in r.objects]}}
                for r in results]

    def serialise_and_insert() -> float:
        sid = new_sample()
        t = time.perf_counter()
        frames_coll.insert_many(docs_for(sid), ordered=False)
        return frames / (time.perf_counter() - t)

    def raw_insert() -> float:
        docs = docs_for(new_sample())
        t = time.perf_counter()
        frames_coll.insert_many(docs, ordered=False)
        return frames / (time.perf_counter() - t)

    def naive_path() -> float:
        sample = ds[new_sample()]
        t = time.perf_counter()
        for r in results:
            sample.frames[r.frame_index + 1]["naive"] = to_detections(r, 640, 360)
        sample.save()
        return frames / (time.perf_counter() - t)

    def set_values() -> float:
        sid = new_sample()
        view = ds.select(sid)
        values = [{r.frame_index + 1: to_detections(r, 640, 360) for r in results}]
        t = time.perf_counter()
        view.set_values("frames.sv", values)
        return frames / (time.perf_counter() - t)

    try:
        fast = repeat(repeats, writer)
        ser = repeat(repeats, serialise_and_insert)
        raw = repeat(repeats, raw_insert)
        paths = repeat(repeats, lambda: writer(WritePolicy(mask_dir=tmp)))
        table.add(section, "writer (staged + $merge), inline masks", "frames/s", fast,
                  baseline="serialise + raw insert", baseline_runs=ser,
                  note="target: writer >= 0.8x serialise + raw insert (staging + publish <= 1.25x)")
        table.add(section, "serialise + raw insert (no staging, not all-or-nothing)", "frames/s", ser,
                  baseline="raw insert of ready documents", baseline_runs=raw)
        table.add(section, "writer, mask_path (PNG files)", "frames/s", paths, baseline="writer, inline masks",
                  baseline_runs=fast, note="target >= 0.5x inline")
        if naive:
            table.add(section, "writer (staged + $merge), inline masks", "frames/s", fast,
                      baseline="naive FiftyOne path (sample.frames[n][f] = ...; save)",
                      baseline_runs=repeat(repeats, naive_path))
            try:
                sv = repeat(repeats, set_values)
                table.add(section, "writer (staged + $merge), inline masks", "frames/s", fast,
                          baseline="FiftyOne set_values", baseline_runs=sv)
            except Exception as exc:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
                print(f"  set_values baseline failed: {exc!r}"[:300])
    finally:
        ds.delete()


# --------------------------------------------------------------------------- end to end


@contextlib.contextmanager
def canned_server(frames: int, objects: int, shape: str = "objects") -> Iterator[str]:
    proc = subprocess.Popen([PY, str(HERE / "_e2e.py"), "serve", "--frames", str(frames), "--objects", str(objects),
                             "--shape", shape],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the canned emulator did not start")
        yield line.strip()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def client_run(urls: str, frames: int, objects: int, src: Path, shape: str = "objects") -> dict[str, Any]:
    out = subprocess.run([PY, str(HERE / "_e2e.py"), "client", "--frames", str(frames), "--objects", str(objects),
                          "--shape", shape, "--urls", urls], capture_output=True, text=True, cwd=src,
                         env={**os.environ, "PYTHONPATH": str(src)}, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"client run failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(lines[-1])


@contextlib.contextmanager
def baseline_tree() -> Iterator[Path | None]:
    with tempfile.TemporaryDirectory(prefix="sam31-baseline-") as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE_COMMIT], capture_output=True)
        if archive.returncode != 0:
            print(f"  no baseline tree: git archive {BASELINE_COMMIT} failed: {archive.stderr.decode()[:200]}")
            yield None
            return
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        yield Path(tmp)


def growth_ratio_row(table: Table, section: str, growth: dict[int, list[float]], note: str) -> None:
    """Peak RSS growth at the longest video over the shortest (medians of their rows)."""
    lo, hi = min(growth), max(growth)
    table.add(section, f"peak RSS growth {hi} frames / {lo} frames", "x",
              [statistics.median(growth[hi]) / max(statistics.median(growth[lo]), 1e-9)], higher_is_better=False,
              note=note)


def client_speed_rows(table: Table, section: str, frames: int, runs: list[dict[str, Any]],
                      base_runs: list[dict[str, Any]], *, stage: bool = False, note: str = "") -> None:
    """Client frames/s and CPU per frame of end-to-end runs, beside the baseline client's;
    with ``stage``, also frames/s from the first result byte (when every run stamped it)."""
    bname = f"before issue 15 ({BASELINE_COMMIT})" if base_runs else None
    table.add(section, f"client frames/s, {frames} frames", "frames/s", [frames / r["wall_s"] for r in runs],
              baseline=bname, baseline_runs=[frames / r["wall_s"] for r in base_runs], note=note)
    if stage and all(r.get("stage_s") for r in runs + base_runs):
        table.add(section, f"client stage from result fetch to done, {frames} frames", "frames/s",
                  [frames / r["stage_s"] for r in runs], baseline=bname,
                  baseline_runs=[frames / r["stage_s"] for r in base_runs],
                  note="; ".join(filter(None, ["the issue's figure: from the first result byte the emulator sends", note])))
    table.add(section, f"client CPU per frame, {frames} frames", "ms", [1000 * r["cpu_s"] / frames for r in runs],
              baseline=bname, baseline_runs=[1000 * r["cpu_s"] / frames for r in base_runs], higher_is_better=False)


def bench_e2e(table: Table, sizes: list[int], objects: int, repeats: int, *, e2e_frames: int,
              baseline: Path | None, baseline_rss_sizes: list[int]) -> None:
    section = f"end to end: fal backend -> journal -> decode -> writer -> MongoDB, {objects} objects (640x360)"
    rss_section = "client peak RSS over its post-import baseline (own process)"
    growth: dict[int, list[float]] = {}
    for frames in sizes:
        with canned_server(frames, objects) as urls:
            runs = [client_run(urls, frames, objects, REPO) for _ in range(repeats)]
            growth[frames] = [r["rss_growth_mb"] for r in runs]
            base_runs = []
            if baseline is not None and frames == e2e_frames:
                base_runs = [client_run(urls, frames, objects, baseline) for _ in range(repeats)]
            elif baseline is not None and frames in baseline_rss_sizes:
                base_runs = [client_run(urls, frames, objects, baseline) for _ in range(repeats)]
        bname = f"before issue 15 ({BASELINE_COMMIT})"
        if frames == e2e_frames:
            client_speed_rows(table, section, frames, runs, base_runs, stage=True, note="target >= 10x")
        table.add(rss_section, f"peak RSS growth, {frames} frames", "MB", growth[frames],
                  baseline=bname if base_runs else None, baseline_runs=[r["rss_growth_mb"] for r in base_runs],
                  higher_is_better=False)
    if len(sizes) >= 2:
        growth_ratio_row(table, rss_section, growth, "target < 1.3 (medians of the rows above)")
    bench_e2e_union(table, sizes, objects, repeats, e2e_frames=e2e_frames, baseline=baseline)


def bench_e2e_union(table: Table, sizes: list[int], objects: int, repeats: int, *, e2e_frames: int,
                    baseline: Path | None) -> None:
    """The seed endpoint's shape: one box prompt per object, so one union-RLE request per
    object (fal-ai/sam-3-1/video-rle), read side by side."""
    section = (f"end to end, {objects} box-prompted objects: {objects} union-RLE answers read side by side "
               "(fal-ai/sam-3-1/video-rle)")
    growth: dict[int, list[float]] = {}
    for frames in sorted({min(sizes), e2e_frames, max(sizes)}):
        with canned_server(frames, objects, "union") as urls:
            runs = [client_run(urls, frames, objects, REPO, "union") for _ in range(repeats)]
            base_runs = ([client_run(urls, frames, objects, baseline, "union") for _ in range(repeats)]
                         if baseline is not None and frames == e2e_frames else [])
        growth[frames] = [r["rss_growth_mb"] for r in runs]
        if frames == e2e_frames:
            client_speed_rows(table, section, frames, runs, base_runs)
        table.add(section, f"peak RSS growth, {frames} frames", "MB", growth[frames], higher_is_better=False)
    if len(growth) >= 2:
        growth_ratio_row(table, section, growth,
                         "bounded: each answer is read a few 64 KB pieces ahead; short answers fit whole")


# --------------------------------------------------------------------------- exports


def _old_polygons(baseline: Path | None):
    if baseline is None:
        return None
    spec = importlib.util.spec_from_file_location("sam31_old_polygons",
                                                  baseline / "sam_backend/fiftyone_io/export/polygons.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def speckled_blobs(frames: int, objects: int, width: int = 1280, height: int = 720, seed: int = 0,
                   speckle: float = 0.003, scale: int = 3):
    """Blob masks at ``scale`` times the templates' size with speckle holes (at 3x and the
    default ``speckle``, what real SAM masks at 720p look like to a polygon tracer: a big
    outline and about a hundred small holes; at 0.03, noisy masks with about a thousand;
    at 5x and 0.05, ~4,000 holes over 320x400 pixels)."""
    import numpy as np
    from _e2e import blob_templates

    from sam_backend.types import FrameResult, TrackedObject

    rng = np.random.default_rng(seed)
    big = [np.kron(t, np.ones((scale, scale), bool)) for t in blob_templates(objects, seed)]
    out = []
    for f in range(frames):
        objs = []
        for k, t in enumerate(big):
            crop = t & ~(rng.random(t.shape) < speckle)
            x0, y0 = (100 + 380 * k + f) % (width - t.shape[1]), (80 + 2 * f) % (height - t.shape[0])
            objs.append(TrackedObject.from_crop(k + 1, "thing" if k % 2 else "other", 0.9, crop,
                                                (x0, y0, x0 + t.shape[1], y0 + t.shape[0]), (height, width)))
        out.append(FrameResult(f, objs))
    return out


_OLD_EXPORT = """
import json, sys, time
import fiftyone as fo
from sam_backend.fiftyone_io.export import export_tracks
name, fmt, kw, out, repeats = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5])
ds, runs = fo.load_dataset(name), []
for i in range(repeats):
    t = time.perf_counter()
    export_tracks(ds, "sam", fmt, f"{out}_{i}", **kw)
    runs.append(time.perf_counter() - t)
print(json.dumps(runs))
"""


def _old_export_runs(baseline: Path, dataset: str, fmt: str, kw: dict[str, Any], out: Path, repeats: int) -> list[float]:
    """The exporter at the baseline commit, in its own process on the same dataset (run
    from the baseline tree, so ``sam_backend`` is the old one)."""
    proc = subprocess.run([PY, "-c", _OLD_EXPORT, dataset, fmt, json.dumps(kw), str(out), str(repeats)],
                          capture_output=True, text=True, timeout=3600, cwd=baseline,
                          env={**os.environ, "PYTHONPATH": str(baseline)})
    if proc.returncode != 0:
        print(f"  baseline export failed: {proc.stderr[-1500:]}")
        return []
    return json.loads(proc.stdout.strip().splitlines()[-1])


# The issue measured 490 frames x 3 objects: COCO polygons 382 s and YOLO-seg 175 s against
# 20 s for COCO RLE, i.e. ~250 ms and ~105 ms of tracing per mask. 5x blobs with 5% speckle
# cost the tracers before issue 15 about that much (heavier than the 720p sets above).
ISSUE_WEIGHT = {"speckle": 0.05, "scale": 5, "width": 1920, "height": 1080}


def bench_exports(table: Table, frames: int, objects: int, repeats: int, baseline: Path | None, *,
                  heavy_frames: int) -> None:
    import fiftyone as fo
    import numpy as np

    from sam_backend.fiftyone_io.export import export_tracks
    from sam_backend.fiftyone_io.export import polygons as new_poly
    from sam_backend.fiftyone_io.writer import FrameLabelWriter
    from sam_backend.video import encode_rgb_frames, probe

    old = _old_polygons(baseline)
    sets = [(frames, "speckled blobs", {"speckle": 0.003}),
            (frames, "noisy blobs, ~1,000 holes per mask", {"speckle": 0.03}),
            (heavy_frames, "large noisy blobs, ~4,000 holes per mask: the issue's cost per mask", ISSUE_WEIGHT)]
    for n, (count, kind, shape) in enumerate(sets):
        width, height = shape.get("width", 1280), shape.get("height", 720)
        section = f"exports, {count} frames x {objects} objects ({width}x{height}, {kind})"
        tmp = Path(tempfile.mkdtemp(prefix="sam31-bench-export-"))
        data = speckled_blobs(count, objects, **shape)
        ds = fo.Dataset()
        ds.persistent = True  # the baseline exporter reads it from another process
        try:
            video = tmp / "v.mp4"
            encode_rgb_frames((np.zeros((height, width, 3), np.uint8) for _ in range(count)), video, width=width,
                              height=height, fps=25)
            ds.add_sample(fo.Sample(filepath=str(video)))
            FrameLabelWriter(ds, "sam").write_sample(ds.first().id, iter(data), probe(video))

            def timed(fmt: str, **kw: Any) -> Callable[[], float]:
                def run() -> float:
                    out = tmp / f"out_{fmt}_{time.monotonic_ns()}"
                    t = time.perf_counter()
                    export_tracks(ds, "sam", fmt, out, **kw)
                    seconds = time.perf_counter() - t
                    shutil.rmtree(out, ignore_errors=True)
                    return seconds
                return run

            formats = [("COCO, RLE masks", "coco", {}), ("COCO, polygons", "coco", {"coco_masks": "polygons"}),
                       ("YOLO-seg", "yolo-seg", {}), ("MOTS", "mots", {}), ("YouTube-VIS", "ytvis", {})]
            if n == 0:
                frames_view = ds.to_frames(sample_frames=True, output_dir=str(tmp / "fo_frames"))

                def fiftyone_coco() -> float:
                    out = tmp / f"fo_coco_{time.monotonic_ns()}"
                    t = time.perf_counter()
                    frames_view.export(export_dir=str(out), dataset_type=fo.types.COCODetectionDataset,
                                       label_field="sam")
                    seconds = time.perf_counter() - t
                    shutil.rmtree(out, ignore_errors=True)
                    return seconds

                fo_runs = repeat(repeats, fiftyone_coco)
                for name, fmt, kw in formats:
                    table.add(section, f"export {name}", "s", repeat(repeats, timed(fmt, **kw)),
                              baseline="FiftyOne's COCODetectionDataset export of the same frames",
                              baseline_runs=fo_runs, higher_is_better=False,
                              note="FiftyOne's time excludes extracting the frames (done once before)")
            if baseline is not None or n > 0:  # (without a baseline the rows above have these)
                for name, fmt, kw in formats[1:3]:
                    old_runs = [] if baseline is None else _old_export_runs(
                        baseline, ds.name, fmt, kw, tmp / f"old_{fmt}_{len(kw)}", repeats)
                    table.add(section, f"export {name}", "s", repeat(repeats, timed(fmt, **kw)),
                              baseline=f"the exporter before issue 15 ({BASELINE_COMMIT}), same data" if old_runs else None,
                              baseline_runs=old_runs, higher_is_better=False,
                              note="the whole export: reading, frames, tracing, files")
            if old is not None:
                objs = [o for r in data for o in r.objects][:15 if n == 2 else None]  # (old tracer: ~0.3 s each)
                for fn in ("coco_polygons", "yolo_polygon"):
                    def per_mask(call: Callable[[Any], Any]) -> float:
                        t = time.perf_counter()
                        for o in objs:
                            call(o)
                        return 1000 * (time.perf_counter() - t) / len(objs)
                    new_fn, old_fn = getattr(new_poly, fn), getattr(old, fn)
                    table.add(section, f"polygon tracing ({fn}) per mask", "ms",
                              repeat(repeats, lambda: per_mask(lambda o: new_fn(o.mask, box=o.box))),
                              baseline=f"the same function before issue 15 ({BASELINE_COMMIT})",
                              baseline_runs=repeat(repeats, lambda: per_mask(lambda o: old_fn(o.mask))),
                              higher_is_better=False, note="as each exporter calls it (ours passes the box)")
        finally:
            ds.delete()
            shutil.rmtree(tmp, ignore_errors=True)


def bench_local_memory(table: Table, sizes: tuple[int, int], repeats: int) -> None:
    from bench_local_memory import measure_sizes

    section = "local backend: peak RSS over the RSS before segmenting (own process, contract fake predictor)"
    runs = measure_sizes(sizes, repeats, chunk_size=100, overlap=24, width=320, height=240)
    growth = {n: [r["growth_mb"] for r in rs] for n, rs in runs.items()}
    for n in sizes:
        table.add(section, f"peak RSS growth, {n} frames (chunks of 100, overlap 24, 320x240)", "MB", growth[n],
                  higher_is_better=False)
    growth_ratio_row(table, section, growth, "target < 1.3 (medians of the rows above)")


# --------------------------------------------------------------------------- fal concurrency, emulator


def bench_concurrency(table: Table, videos: int, service_time: float) -> None:
    out = subprocess.run([PY, str(HERE / "bench_fal_concurrency.py"), "--videos", str(videos), "--service-time",
                          str(service_time)], capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    walls = {int(c): float(s) for c, s in re.findall(r"concurrency\s+(\d+):\s+([\d.]+) s wall", out.stdout)}
    if len(walls) < 2:
        print(f"  concurrency bench failed: {out.stdout[-500:]} {out.stderr[-1500:]}")
        return
    one, many = walls[1], walls[max(walls)]
    table.add(f"fal concurrency ({videos} videos, {service_time:g} s emulated service time)",
              f"concurrency {max(walls)}: videos/s", "videos/s", [videos / many], baseline="concurrency 1",
              baseline_runs=[videos / one], note="one run each (each is already a loop over all videos)")


def bench_emulator(table: Table, frames: int, repeats: int) -> None:
    import base64

    import httpx

    from sam_backend import synthetic
    from sam_backend.emulator import EmulatorConfig, EmulatorServer

    tmp = Path(tempfile.mkdtemp(prefix="sam31-bench-emu-"))
    video = tmp / "clip.mp4"
    synthetic.write_video(synthetic.default_scene(frame_count=frames, width=1280, height=720), video)
    url = "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode()

    def run(emu: EmulatorServer, apply_mask: bool) -> float:
        headers = {"Authorization": f"Key {emu.key}"}
        body = {"video_url": url, "prompt": "red ball", "apply_mask": apply_mask}
        with httpx.Client(timeout=600) as http:
            t = time.perf_counter()
            sub = http.post(f"{emu.queue_url}/fal-ai/sam-3-1/video-rle", json=body, headers=headers).json()
            while http.get(sub["status_url"], headers=headers).json()["status"] != "COMPLETED":
                time.sleep(0.02)
            result = http.get(sub["response_url"], headers=headers)
            seconds = time.perf_counter() - t
        assert result.status_code == 200 and ("video" in result.json()) == apply_mask, result.text[:200]
        return 1000 * seconds / frames

    section = f"emulator, fal-ai/sam-3-1/video-rle on {frames} frames of 1280x720"
    with EmulatorServer(EmulatorConfig(queue_time_s=0.0)) as emu:
        rle_only = repeat(repeats, lambda: run(emu, False))
        overlay = repeat(repeats, lambda: run(emu, True))
    table.add(section, "time per frame, RLE only (the default: apply_mask=false)", "ms", rle_only,
              baseline="apply_mask=true (renders the overlay video)", baseline_runs=overlay, higher_is_better=False)


# --------------------------------------------------------------------------- report


def markdown(table: Table, info: dict[str, Any], args: argparse.Namespace, seconds: float) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `scripts/bench.sh` (`python bench/run.py{' --quick' if args.quick else ''}`) on {info['date']}, "
        f"in {seconds / 60:.1f} min. Raw numbers: `bench/results.json`.",
        "",
        f"Machine: {info['cpu']} ({info['cores']} cores), {info['memory']} RAM, {info['os']}; "
        f"load average at start {', '.join(f'{v:.2f}' for v in info['load_average_at_start'])} "
        "(the machine is shared: absolute numbers are noisy, ratios against a baseline from the same run less so). "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ". "
        f"Creating one 400-byte file in the temporary folder took {info['file_create_us']:.0f} us at the start "
        "(the mask_path figures depend on it; on this project's journal-less ext4 it grows more than tenfold for minutes after "
        "many files were deleted).",
        "",
        f"Each figure: median of {args.repeats} runs [min..max], its baseline measured in the same run, and the ratio "
        "(how many times better than the baseline: speed, or less time / memory). End-to-end baseline: the client "
        f"at commit {BASELINE_COMMIT} (before issue 15), unpacked with `git archive` and run in its own processes "
        "against the same canned emulator answer (`bench/_e2e.py`).",
        "",
    ]
    section = None
    for row in table.rows:
        if row["section"] != section:
            section = row["section"]
            lines += ["", f"## {section}", "", "| figure | value [min..max] | baseline | baseline value [min..max] | ratio | note |",
                      "|---|---|---|---|---|---|"]
        b = row.get("baseline")
        ratio = f"**{row['ratio']:.2f}x**" if row.get("ratio") else ""
        lines.append(f"| {row['name']} | {_fmt(row)} {row['unit']} | {b['name'] if b else ''} | "
                     f"{_fmt(b) + ' ' + row['unit'] if b else ''} | {ratio} | {row['note']} |")
    return "\n".join(lines) + "\n"


def _fmt(r: dict[str, Any]) -> str:
    return f"{r['median']:.4g} [{r['min']:.4g}..{r['max']:.4g}]"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the machinery")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out-dir", default=str(REPO))
    parser.add_argument("--skip", default="", help="comma-separated: writer,e2e,e2e_baseline,exports,local,concurrency,emulator")
    args, _ = parser.parse_known_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    args.repeats = args.repeats or 3
    q = args.quick
    sizes = [20, 60] if q else [300, 3000, 10000]
    table = Table()
    info = machine()
    start = time.perf_counter()
    # Mask files are deleted when the whole run ends, not after each section: on an ext4
    # without a journal (this project's VMs), creating a file in the next 1-6 minutes scans
    # past every recently deleted inode (the kernel's recently_deleted() check in
    # find_inode_bit): after one section deleted its mask files, writing a mask file took
    # ~0.4 ms of kernel time instead of ~0.025 ms.
    mask_root = Path(tempfile.mkdtemp(prefix="sam31-bench-masks-"))
    info["file_create_us"] = file_create_us(mask_root)
    try:
        with (baseline_tree() if "e2e_baseline" not in skip else contextlib.nullcontext(None)) as base:
            if "writer" not in skip:
                for frames in ([20] if q else [300, 3000]):
                    print(f"writer {frames}", flush=True)
                    bench_writer(table, frames, 16, args.repeats, naive=frames <= 300, mask_root=mask_root)
            if "e2e" not in skip:
                print("end to end", flush=True)
                bench_e2e(table, sizes, 16, args.repeats, e2e_frames=sizes[1] if len(sizes) > 1 else sizes[0],
                          baseline=base, baseline_rss_sizes=sizes[:2])
            if "exports" not in skip:
                print("exports", flush=True)
                bench_exports(table, 6 if q else 60, 3, args.repeats, base, heavy_frames=1 if q else 20)
            if "local" not in skip:
                print("local backend memory", flush=True)
                bench_local_memory(table, (150, 300) if q else (300, 3000), args.repeats)
            if "emulator" not in skip:
                print("emulator", flush=True)
                bench_emulator(table, 12 if q else 48, args.repeats)
            if "concurrency" not in skip:
                print("concurrency", flush=True)
                bench_concurrency(table, 4 if q else 16, 0.3 if q else 1.0)
    finally:
        drop_own_database()
        shutil.rmtree(mask_root, ignore_errors=True)
    seconds = time.perf_counter() - start
    out = Path(args.out_dir)
    doc = {"machine": info, "quick": q, "repeats": args.repeats, "seconds": seconds, "baseline_commit": BASELINE_COMMIT,
           "figures": table.rows}
    (out / "bench").mkdir(parents=True, exist_ok=True)
    (out / "bench" / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "BENCHMARKS.md").write_text(markdown(table, info, args, seconds))
    print(f"wrote {out / 'BENCHMARKS.md'} and {out / 'bench' / 'results.json'} in {seconds:.0f} s")
    return doc


if __name__ == "__main__":
    main()
