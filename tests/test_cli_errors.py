"""The ``segment`` command's answers to bad input: one line naming the bad value, exit
code 2, nothing written and nothing sent; an unreadable video among good ones is reported
and skipped (exit code 1) while the others are labelled. Real MongoDB, real ffmpeg, the
emulator backend over loopback HTTP."""

from __future__ import annotations

import uuid
from pathlib import Path

import fiftyone as fo
import pytest

from sam_backend import synthetic
from sam_backend.fiftyone_io.cli import main

Clip = tuple[Path, synthetic.GroundTruth]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, the last line of stderr, and all of stdout (argparse exits via SystemExit)."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    return rc, lines[-1] if lines else "", out


@pytest.fixture
def dataset(make_dataset, small_video: Clip) -> fo.Dataset:
    ds = make_dataset(small_video[0])
    ds.add_sample_field("note", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
    ds.add_frame_field("clicks", fo.EmbeddedDocumentField, embedded_doc_type=fo.Keypoints)
    return ds


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *named: str) -> str:
    rc, line, _ = run(argv, capsys)
    assert rc == 2, line
    for value in named:
        assert value in line, (value, line)
    assert len(line) < 400, line
    return line


def test_missing_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    name = f"no-such-{uuid.uuid4().hex[:6]}"
    refused(["segment", name, "--prompt", "ball", "--backend", "emulator"], capsys, repr(name), "no FiftyOne dataset")


def test_output_field_that_cannot_hold_tracks(dataset: fo.Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["segment", dataset.name, "--prompt", "red ball", "--backend", "emulator"]
    refused([*base, "--field", "note"], capsys, "'note'", "sample-level field")
    refused([*base, "--field", "clicks"], capsys, "frames.clicks", "Keypoints")
    assert not dataset.has_frame_field("sam")


def test_frame_ranges(dataset: fo.Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["segment", dataset.name, "--prompt", "red ball", "--backend", "emulator"]
    line = refused([*base, "--frames", "7:3"], capsys, "'7:3'", "empty")
    assert "pydantic" not in line and "type=" not in line
    refused([*base, "--frames", "x:3"], capsys, "'x:3'", "whole numbers")
    refused([*base, "--frames", "0:10:0"], capsys, "'0:10:0'", "step")


def test_huge_prompts_are_refused_without_echo_or_writes(dataset: fo.Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["segment", dataset.name, "--backend", "emulator"]
    refused([*base, "--prompt", "x" * 120_000], capsys, "120,000 characters", "too long")
    one_concept = "red ball, " + "y" * 300
    refused([*base, "--prompt", one_concept], capsys, "concept 'yyy", "300 characters")
    # 9 MB once wrote its labels and then failed storing the run's description
    refused([*base, "--prompt", "z" * 9_000_000], capsys, "9,000,000 characters")
    assert not dataset.has_frame_field("sam")


def test_prompt_field_that_does_not_exist(dataset: fo.Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    refused(["segment", dataset.name, "--prompt-field", "boxez", "--backend", "emulator"], capsys,
            "'boxez'", "clicks")


def test_empty_dataset(make_dataset, capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_dataset()
    refused(["segment", ds.name, "--prompt", "ball", "--backend", "emulator"], capsys, repr(ds.name), "no samples")


def test_unreadable_video_is_reported_and_skipped(make_dataset, small_video: Clip, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "broken clip.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    ds = make_dataset(small_video[0], junk)
    rc, line, out = run(["segment", ds.name, "--prompt", "red ball", "--backend", "emulator"], capsys)
    assert rc == 1  # the run went on; one video failed
    bad_id = ds.match({"filepath": str(junk)}).first().id
    assert line.startswith(f"FAILED {bad_id}: cannot read video {junk}") and "\n" not in line
    assert "1/2 videos" in out
    good = ds.match({"filepath": str(small_video[0])}).first()
    assert sum(len(f.sam.detections) for f in good.frames.values() if f.sam is not None) > 0
    # the emulator is free: no "estimated $" as if fal had been paid
    assert "free (offline emulator; fal would charge about $" in out and "estimated $" not in out
    refused(["segment", ds.name, "--prompt", "red ball", "--backend", "emulator", "--field", "strict",
             "--stop-on-failure"], capsys, "cannot read video", str(junk))
    assert not ds.has_frame_field("strict")  # refused before anything was sent


def test_repeated_concept_is_refused_before_anything_is_billed(dataset: fo.Dataset,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # fal would bill both requests and the two identical tracks would land in the field
    refused(["segment", dataset.name, "--prompt", "red ball, blue box, Red Ball", "--backend", "emulator"], capsys,
            "same concept twice", "'red ball' and 'Red Ball'")
    assert not dataset.has_frame_field("sam")


def test_bad_backend_and_backend_options_are_one_line(dataset: fo.Dataset, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["segment", dataset.name, "--prompt", "red ball"]
    refused([*base, "--backend", "bogus"], capsys, "unknown backend 'bogus'", "emulator, fal, local")
    secret = "a1b2c3d4-id:s3cr3t-value-never-printed"
    monkeypatch.setenv("FAL_KEY", secret)
    line = refused([*base, "--backend", "fal", "--endpoint", "fal-ai/nope"], capsys, "endpoint='fal-ai/nope'",
                   "fal-ai/sam-3-1/video-rle")
    assert "s3cr3t" not in line
    assert not dataset.has_frame_field("sam")


def test_export_to_a_folder_that_cannot_be_made(dataset: fo.Dataset, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    main(["segment", dataset.name, "--prompt", "red ball", "--backend", "emulator"])
    capsys.readouterr()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    refused(["export", dataset.name, "--field", "sam", "--format", "mot", "--out", str(blocker / "x")], capsys,
            f"{blocker} is a file")
    assert blocker.read_text() == "not a folder"
    refused(["export", dataset.name, "--field", "sam", "--format", "mot", "--out", "/proc/sam31-nope/x"], capsys,
            "cannot write the export to /proc/sam31-nope/x")  # procfs refuses new folders, even to root


def test_demo_never_replaces_a_dataset_it_did_not_make(make_dataset, small_video: Clip, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    name = f"sam31-demo-{uuid.uuid4().hex[:6]}"
    mine = make_dataset(small_video[0], name=name)
    mine.tag_samples("precious")
    refused(["demo", "--frames", "6", "--dataset", name, "--out", str(tmp_path)], capsys,
            repr(name), "not made by the demo")
    assert fo.load_dataset(name).count_sample_tags() == {"precious": 1}
    assert not (tmp_path / "shapes.mp4").exists()  # stopped before any work
    refused(["demo", "--frames", "0", "--dataset", f"{name}-x", "--out", str(tmp_path)], capsys, "at least 1")
    mine.delete()
    # A demo from before the mark: one shapes.mp4 with its ground truth. It is the demo's own.
    old_demo = make_dataset(small_video[0], name=name)
    sample = old_demo.first()
    sample.filepath = str(tmp_path / "shapes.mp4")  # what the demo generates
    sample.save()
    old_demo.add_frame_field("ground_truth", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    try:
        for _ in range(2):  # its own dataset from an earlier run is replaced
            rc, _, out = run(["demo", "--frames", "6", "--dataset", name, "--out", str(tmp_path)], capsys)
            assert rc == 0 and "offline fal emulator" in out
            assert len(fo.load_dataset(name)) == 1
        # its ground truth is the user's to keep: a run into it must ask (it counted as ours)
        refused(["segment", name, "--prompt", "red ball", "--backend", "emulator", "--field", "ground_truth"], capsys,
                "frames.ground_truth already holds labels on 6 frames", "--overwrite")
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_labels_sam31_did_not_write_are_replaced_only_when_asked(dataset: fo.Dataset, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    sample = dataset.first()
    for number in (3, 5):  # hand-made ground truth on two frames
        sample.frames[number]["gt"] = fo.Detections(detections=[fo.Detection(label="hand", bounding_box=[0.1, 0.1, 0.2, 0.2])])
    sample.save()
    base = ["segment", dataset.name, "--prompt", "red ball", "--backend", "emulator", "--field", "gt"]
    refused(base, capsys, "frames.gt already holds labels on 2 frames", "--overwrite")
    # A view that hides those frames still segments (and would replace) the whole video
    from sam_backend.fiftyone_io import segment_videos
    from sam_backend.errors import InvalidRequest

    hidden = dataset.match_frames(fo.ViewField("frame_number") > 4)  # hides frame 3
    with pytest.raises(InvalidRequest, match="frames.gt already holds labels on 2 frames"):
        segment_videos(hidden, prompt="red ball", label_field="gt", backend="emulator")
    assert dataset.count("frames.gt.detections") == 2 and dataset.distinct("frames.gt.detections.label") == ["hand"]
    rc, _, _ = run([*base, "--overwrite"], capsys)
    assert rc == 0 and dataset.distinct("frames.gt.detections.label") == ["red ball"]
    rc, _, _ = run(base, capsys)  # written by sam31-video now: a rerun replaces its own labels
    assert rc == 0
    # A field the plugin made is its own from the first write, before the run describes it.
    rc, _, _ = run(["segment", dataset.name, "--prompt", "red ball", "--backend", "emulator", "--field", "new"], capsys)
    assert rc == 0 and dataset.get_field("frames.new").info
    main(["export", dataset.name, "--field", "new", "--format", "coco", "--out", str(tmp_path / "coco")])
    sample.frames[4]["hand2"] = fo.Detections(detections=[fo.Detection(label="hand", bounding_box=[0.1, 0.1, 0.2, 0.2])])
    sample.save()
    capsys.readouterr()
    imported = ["import", dataset.name, str(tmp_path / "coco"), "--field", "hand2"]
    refused(imported, capsys, "frames.hand2 already holds labels on 1 frame ", "--overwrite")
    assert dataset.distinct("frames.hand2.detections.label") == ["hand"]
    rc, _, _ = run([*imported, "--overwrite"], capsys)
    assert rc == 0 and dataset.distinct("frames.hand2.detections.label") == ["red ball"]
    # The emulator's per-object answers carry no score: the round trip keeps "none", not 1.0.
    source = dataset.values("frames.new.detections.confidence", unwind=True)
    back = dataset.values("frames.hand2.detections.confidence", unwind=True)
    assert len(source) == len(back) > 0 and set(source) == set(back) == {None}
    from sam_backend.fiftyone_io import import_tracks

    import_tracks(dataset, tmp_path / "coco", "hand2", default_score=0.25)
    assert set(dataset.values("frames.hand2.detections.confidence", unwind=True)) == {0.25}


def test_emulator_runs_name_a_run_id_only_when_it_can_be_found_again(dataset: fo.Dataset, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    base = ["segment", dataset.name, "--prompt", "red ball", "--backend", "emulator"]
    rc, _, out = run(base, capsys)
    assert rc == 0 and "(run " not in out  # its journal was in memory: status/redecode could not find it
    journal = tmp_path / "journal.sqlite3"
    rc, _, out = run([*base, "--journal", str(journal)], capsys)
    run_id = out.rsplit("(run ", 1)[1].split(")")[0]
    rc, _, listed = run(["status", dataset.name, "--journal", str(journal)], capsys)
    assert rc == 0 and run_id in listed


def test_demo_on_fal_states_the_cost_before_it_sends_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from sam_backend.errors import InvalidRequest
    from sam_backend.fiftyone_io import demo

    monkeypatch.setenv("FAL_KEY", "a1b2c3d4-id:s3cr3t-value")
    sent = []

    def no_network(*args, **kwargs):  # where the demo would call fal
        sent.append(kwargs.get("backend"))
        raise InvalidRequest("stopped before fal")

    monkeypatch.setattr(demo, "segment_videos", no_network)
    name = f"sam31-demo-{uuid.uuid4().hex[:6]}"
    try:
        rc, line, out = run(["demo", "--frames", "32", "--dataset", name, "--out", str(tmp_path)], capsys)
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
    assert rc == 2 and "stopped before fal" in line and sent == ["fal"]
    first = out.splitlines()[0]
    assert first.startswith("FAL_KEY is set: calling the real fal API") and "about $0.03: 3 request(s) x 32 frames" in first
    assert "s3cr3t" not in out


def test_inputs_refused_before_the_first_video_not_after(dataset: fo.Dataset, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Each of these used to pass the checks and then fail every video (exit 1, after an
    estimate and, for the field name, after paying for each video)."""
    base = ["segment", dataset.name, "--prompt", "red ball", "--backend", "emulator"]
    refused([*base, "--field", "x$"], capsys, "Invalid field name: 'x$'", "cannot contain '$'")
    line = refused([*base, "--threshold", "0.005"], capsys, "detection_threshold=0.005", "minimum 0.01")
    refused([*base, "--url-field", "nosuch"], capsys, "url_field 'nosuch' is not a sample field")
    assert dataset.get_frame_field_schema().keys() == {"id", "frame_number", "created_at", "last_modified_at", "clicks"}
    assert "estimated" not in capsys.readouterr().out + line
    journal = str(tmp_path / "j.sqlite3")
    main([*base, "--journal", journal])  # a journal with one run in it
    capsys.readouterr()
    refused(["resume", "--run", "nosuch", "--journal", journal], capsys, "no run 'nosuch' in", "`status` lists")
    refused(["redecode", "nosuch", "--journal", journal], capsys, "no run 'nosuch' in")
