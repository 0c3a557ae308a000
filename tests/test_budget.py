"""A cost cap and a dry run: ``max_usd`` refuses a run whose whole estimate (every video,
only the frames sent) is above it, and ``dry_run`` checks and estimates without sending or
writing anything. Checked against the real fal backend on the loopback emulator, the
real CLI, and the operator's sharded path; prices are the endpoint table's (SAM 3's
objects endpoint: $0.005 per started block of 16 frames, assumed)."""

from __future__ import annotations

import uuid
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService

from sam_backend.backends.base import CostEstimate
from sam_backend.backends.fal import FalBackend, FalConfig
from sam_backend.cost import check_budget, dollars
from sam_backend.emulator import EmulatorServer
from sam_backend.errors import InvalidRequest, OverBudget
from sam_backend.fiftyone_io import segment_videos
from sam_backend.fiftyone_io.cli import main
from sam_backend.types import FrameRange

PROMPT = "red ball, blue box, green ball"
PER_VIDEO = 3 * 6 * 0.005  # the scene: 3 concepts x 6 blocks of 16 frames (96 frames)


def calls(emulator: EmulatorServer) -> int:
    return sum(emulator.stats.calls_by_route.values())


def test_a_run_estimated_above_max_usd_is_refused_before_any_call(make_dataset, scene_video,
                                                                  fal_backend: FalBackend, emulator: EmulatorServer) -> None:
    ds = make_dataset(scene_video[0], scene_video[0])
    before = calls(emulator)
    # each video alone is within the cap; the two together are not
    with pytest.raises(OverBudget) as info:
        segment_videos(ds, prompt=PROMPT, label_field="sam", backend=fal_backend, max_usd=1.5 * PER_VIDEO)
    message = str(info.value)
    assert "estimated at $0.18 " in message and "max_usd=$0.135." in message  # half-cents shown, not rounded
    assert "2 video(s), 192 frames" in message and "Nothing was sent" in message
    assert calls(emulator) == before
    assert not ds.has_frame_field("sam")
    # only the frames sent count: 32 frames are 2 blocks a request
    report = segment_videos(ds, prompt=PROMPT, label_field="sam", backend=fal_backend, max_usd=1.5 * PER_VIDEO,
                            frames=FrameRange(start=0, stop=32))
    assert report.failed == {} and len(report.done) == 2
    assert report.estimated_usd == pytest.approx(2 * 3 * 2 * 0.005) and report.planned_frames == 64


def test_a_dry_run_checks_and_estimates_but_sends_and_writes_nothing(make_dataset, scene_video,
                                                                     fal_backend: FalBackend,
                                                                     emulator: EmulatorServer) -> None:
    ds = make_dataset(scene_video[0], scene_video[0])
    before = calls(emulator)
    report = segment_videos(ds, prompt=PROMPT, label_field="sam", backend=fal_backend, dry_run=True)
    assert report.dry_run and report.done == [] and report.failed == {}
    assert report.estimated_usd == pytest.approx(2 * PER_VIDEO) and report.planned_frames == 192
    assert calls(emulator) == before
    ds.reload()
    assert not ds.has_frame_field("sam") and ds.first().metadata is None  # not even FiftyOne's metadata
    seed = segment_videos(ds, prompt="red ball", backend="emulator", dry_run=True,
                          backend_options={"endpoint": "fal-ai/sam-3-1/video", "text_mode": "union"})
    assert any("returns only a rendered video, no masks: each video is billed and gets no labels" in w
               for w in seed.warnings), seed.warnings  # said before paying, not after
    with pytest.raises(InvalidRequest, match="outside the frame"):  # the checks of a real run, all of them
        segment_videos(ds, box_prompts=[{"x_min": 300, "y_min": 10, "x_max": 330, "y_max": 40}], backend=fal_backend,
                       dry_run=True)


def test_the_cap_counts_only_what_is_billed() -> None:
    fal = [CostEstimate(backend="fal", frames=96, usd=0.04), CostEstimate(backend="fal", frames=48, usd=0.03)]
    check_budget(fal, 0.07)
    with pytest.raises(OverBudget, match=r"\$0\.07 \(2 video\(s\), 144 frames.*above max_usd=\$0\.069\."):
        check_budget(fal, 0.069)
    with pytest.raises(OverBudget, match=r"\$0\.07 \(.*above max_usd=\$0\.05\."):
        check_budget(fal, 0.05)
    check_budget([CostEstimate(backend="local", frames=500, usd=None, billed=False)], 0.0)  # no money involved
    unpriced = [CostEstimate(backend="fal", frames=96, usd=None, detail="no price known for fal-ai/new")]
    with pytest.raises(OverBudget, match="cannot be kept: no price known for fal-ai/new"):
        check_budget(unpriced, 100.0)
    check_budget(unpriced, None)  # no cap asked for: the run is the caller's call
    # fal prices in half-cents: a $0.045 estimate must not read $0.04 (a cap set from it would be refused)
    assert [dollars(x) for x in (0.135 - 0.09, 0.015, 0.06, 12.3)] == ["$0.045", "$0.015", "$0.06", "$12.30"]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_states_the_estimate_before_sending_and_honours_the_cap(make_dataset, small_video, tmp_path: Path,
                                                                     emulator: EmulatorServer,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_dataset(small_video[0], small_video[0])
    base = ["segment", ds.name, "--prompt", "red ball, blue box", "--backend", "emulator"]
    estimate = 2 * 2 * 3 * 0.005  # 2 videos x 2 concepts x 3 blocks (48 frames)
    rc, out, err = run_cli([*base, "--dry-run"], capsys)
    assert rc == 0, err
    assert f"dry run: 2 video(s), 96 frames: estimated {dollars(estimate)} on fal" in out
    assert "nothing was sent or written" in out
    assert not fo.load_dataset(ds.name).has_frame_field("sam")
    rc, out, err = run_cli([*base, "--max-usd", "0.05"], capsys)
    assert rc == 2 and "above max_usd=$0.05" in err.splitlines()[-1], err
    assert not fo.load_dataset(ds.name).has_frame_field("sam")
    rc, out, err = run_cli([*base, "--max-usd", "0.07"], capsys)
    assert rc == 0, err
    lines = err.splitlines()
    said = next(i for i, line in enumerate(lines) if line.startswith(f"estimated cost: {dollars(estimate)}"))
    progress = [i for i, line in enumerate(lines) if line.startswith("[")]
    assert progress and said < progress[0]  # said before the first upload
    assert "emulator charges nothing" in lines[said]
    # run again with a journal: the second run takes every result from it, and says so
    journal = ["--journal", str(tmp_path / "j.sqlite"), "--field", "again"]
    assert run_cli([*base, *journal], capsys)[0] == 0
    rc, out, err = run_cli([*base, *journal], capsys)
    assert rc == 0 and f"{dollars(estimate)} of it is already paid" in err
    assert "fal would charge about $0.00" in out, out


def test_sharded_runs_check_the_cap_on_the_whole_run_before_queueing(make_dataset, small_video) -> None:
    ds = make_dataset(*[small_video[0]] * 3, persistent=True)
    # one shard's videos are within $0.02; the three videos ($0.045) are not
    with pytest.raises(Exception, match=r"above max_usd=\$0\.02"):
        foo.get_operator("@sam31/video/segment_video")(ds.view(), "red ball", backend="emulator", label_field="capped",
                                                       shards=3, max_usd=0.02)
    assert DelegatedOperationService().get_queued_operations(operator="@sam31/video/segment_video",
                                                             dataset_name=ds.name) == []
    assert not fo.load_dataset(ds.name).has_frame_field("capped")


def test_the_demo_run_again_on_fal_takes_its_paid_results(tmp_path: Path, emulator: EmulatorServer,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's fal requests are journaled per sample: a rerun (after a kill, or to look
    again) keeps its sample and pays nothing; another prompt is a new request."""
    from sam_backend.fiftyone_io import demo

    real = demo.segment_videos
    journal = tmp_path / "journal.sqlite"

    def on_the_emulator(samples, **kwargs):  # the demo's own call, with fal's hosts moved to loopback
        assert kwargs.pop("backend") == "fal"
        config = FalConfig(key=emulator.key, queue_url=emulator.queue_url, rest_url=emulator.rest_url,
                           cdn_url=emulator.cdn_url, poll_initial_s=0.05, journal_path=journal)
        with FalBackend(config) as backend:
            return real(samples, backend=backend, **kwargs)

    monkeypatch.setenv("FAL_KEY", "a1b2c3d4-id:s3cr3t-value")
    monkeypatch.setattr(demo, "segment_videos", on_the_emulator)
    name = f"sam31-demo-{uuid.uuid4().hex[:6]}"
    argv = ["demo", "--frames", "20", "--dataset", name, "--out", str(tmp_path)]
    try:
        submits = len(emulator.stats.submits)
        assert main(argv) == 0
        assert len(emulator.stats.submits) - submits == 3  # 3 concepts
        first = fo.load_dataset(name).first()
        assert main(argv) == 0
        assert len(emulator.stats.submits) - submits == 3  # nothing new
        again = fo.load_dataset(name).first()
        assert again.id == first.id and len(fo.load_dataset(name)) == 1
        assert {d.label for f in again.frames.values() for d in f["sam"].detections} == {"red ball", "blue box",
                                                                                            "green ball"}
        assert main([*argv, "--prompt", "red ball, purple star"]) == 0  # one concept is new
        assert len(emulator.stats.submits) - submits == 4
        assert main([*argv[:2], "36", *argv[3:]]) == 0  # another length: FiftyOne's metadata follows the new file
        again = fo.load_dataset(name).first()
        assert again.metadata.total_frame_count == 36 and len(again.frames) == 36
        out = capsys.readouterr().out
        assert "s3cr3t" not in out
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_concepts_reordered_or_dropped_take_their_paid_results(make_dataset, small_video, emulator: EmulatorServer,
                                                               fal_backend: FalBackend,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_dataset(small_video[0])
    submits = len(emulator.stats.submits)
    segment_videos(ds, prompt="red ball, blue box", label_field="sam", backend=fal_backend)
    assert len(emulator.stats.submits) - submits == 2
    for prompt, concepts in (("blue box, red ball", 2), ("blue box", 1)):  # same requests, other places in the plan
        report = segment_videos(ds, prompt=prompt, label_field="sam", backend=fal_backend)
        assert report.failed == {} and len(emulator.stats.submits) - submits == 2, prompt
        assert report.billed_units == 0 and report.reused_units == concepts * 48
    labels = {d.label for f in ds.first().frames.values() for d in f["sam"].detections}
    assert labels == {"blue box"}


def test_requests_journaled_by_the_older_positional_hash_are_not_paid_again(make_dataset, small_video,
                                                                              emulator: EmulatorServer,
                                                                              fal_backend: FalBackend,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Journals written before the position left the request hash still name paid
    requests: a rerun (or a resume across the upgrade) finds them under their old hash."""
    from sam_backend.backends.fal import backend as fal_module

    ds = make_dataset(small_video[0])
    current = fal_module.request_hash
    monkeypatch.setattr(fal_module, "request_hash",
                        lambda p, identity, frames, with_position=False: current(p, identity, frames, with_position=True))
    submits = len(emulator.stats.submits)
    segment_videos(ds, prompt="red ball, blue box", label_field="sam", backend=fal_backend)
    monkeypatch.setattr(fal_module, "request_hash", current)
    report = segment_videos(ds, prompt="red ball, blue box", label_field="sam", backend=fal_backend)
    assert report.failed == {} and len(emulator.stats.submits) - submits == 2
    assert report.reused_units == 2 * 48


def test_a_locked_account_after_the_submits_exits_1_naming_the_paid_requests_and_resume_finishes(
        make_dataset, small_video, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """fal answers 403 (account locked / out of balance) once the jobs are queued: exit code
    2 means "nothing sent", so this run exits 1, names the requests it sent and the run to
    resume; after the account is fixed, resume polls them and submits nothing."""
    import os

    from sam_backend.emulator import EmulatorConfig, FaultPlan, FaultRule
    from sam_backend.emulator.faults import http_error

    ds = make_dataset(small_video[0], small_video[0])
    refused: set[str] = set()
    plan = FaultPlan(FaultRule("status", http_error(403, body={"detail": "User is locked. Reason: Exhausted balance"})))

    def locked(call):  # noqa: ANN001, ANN202 - the emulator's fault hook
        if call.route == "status":
            refused.add(call.request_id)
        return plan(call)

    with EmulatorServer(EmulatorConfig(faults=locked)) as emu:
        monkeypatch.setenv("FAL_KEY", emu.key)
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        hosts = dict(queue_url=emu.queue_url, rest_url=emu.rest_url, cdn_url=emu.cdn_url, poll_initial_s=0.02,
                     poll_max_s=0.2)
        monkeypatch.setattr(FalBackend, "from_env", classmethod(
            lambda cls, environ=None, **kw: cls(FalConfig.from_env(environ or os.environ, **{**hosts, **kw}))))
        rc, out, err = run_cli(["segment", ds.name, "--prompt", "red ball", "--concurrency", "1"], capsys)
        lines = err.splitlines()
        assert rc == 1, err
        assert any("locked or out of balance" in line for line in lines)
        sent = [line for line in lines if "fal request(s) were sent before it stopped" in line]
        assert len(sent) == 1 and "'sam31-video resume'" in sent[0], err
        assert len(emu.stats.submits) == 1  # the first video's; the second never started
        assert len(refused) == 1 and refused.pop() in sent[0]  # the request fal took, then refused to report on
        assert "0 of 2 video(s) written" in err
        emu.set_faults(None)  # the account is topped up
        rc, out, err = run_cli(["resume", ds.name], capsys)
        assert rc == 0, err
        assert len(emu.stats.submits) == 2  # the paid request polled, only the unstarted video submitted
    ds.reload()
    assert all(s.frames[1].has_field("sam") for s in ds)


def test_the_cap_counts_only_what_the_journal_does_not_hold(make_dataset, scene_video, small_video,
                                                            fal_backend: FalBackend, emulator: EmulatorServer) -> None:
    """A rerun or resume takes stored results with no new charge: the estimate says how much
    of it they are and the cap counts only the rest."""
    ds = make_dataset(scene_video[0], small_video[0])
    scene_only = ds.select(ds.first().id)
    segment_videos(scene_only, prompt=PROMPT, label_field="sam", backend=fal_backend)  # the scene's 3 paid
    submits = len(emulator.stats.submits)
    small = 3 * 3 * 0.005  # the small clip: 3 concepts x 3 blocks (48 frames)
    with pytest.raises(OverBudget, match=r"estimated at \$0\.045 \(2 video\(s\), 144 frames; \$0\.09 of the "
                                         r"\$0\.135 estimate is already paid"):
        segment_videos(ds, prompt=PROMPT, label_field="sam", backend=fal_backend, max_usd=small - 0.01)
    report = segment_videos(ds, prompt=PROMPT, label_field="sam", backend=fal_backend, max_usd=small)
    assert report.failed == {} and len(report.done) == 2
    assert report.estimated_usd == pytest.approx(PER_VIDEO + small) and report.stored_usd == pytest.approx(PER_VIDEO)
    assert len(emulator.stats.submits) - submits == 3  # only the small clip's
    # another field is other work: nothing stored there
    report = segment_videos(ds, prompt=PROMPT, label_field="other", backend=fal_backend, dry_run=True)
    assert report.stored_usd == 0.0
