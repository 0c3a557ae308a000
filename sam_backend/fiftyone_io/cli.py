"""``sam31-video``: the command line.

- ``demo``: run the demo;
- ``segment DATASET --prompt ...``: label a dataset (Ctrl-C cancels every request in
  flight and writes nothing partial; a second Ctrl-C quits at once, leaving the requests
  running and journaled for ``resume``). The estimate is printed before anything is
  sent; ``--max-usd`` refuses a run estimated above it, ``--dry-run`` stops after the
  checks and the estimate;
- ``resume [DATASET]``: finish the newest unfinished run without paying twice;
- ``status [DATASET]``: runs in the journal and requests still open at fal;
- ``fal-check [--yes]``: check fal's RLE layout and object semantics with your key (a
  few cents, shown first; without FAL_KEY it runs on the emulator);
- ``redecode RUN``: decode a run's journaled fal results into its field again, with no
  new request (after fal-check stored another layout, or a decoder fix).

Exit codes: 0 done; 1 some videos failed, or the run stopped after it had sent requests
(they are named, with the run to resume); 2 refused before anything was sent or written;
130 cancelled.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from ..cost import dollars
from ..errors import Cancelled, InvalidRequest, SamError, listed, shorten
from ..types import FrameRange, describe_validation_error


def _frames(text: str) -> FrameRange:
    """``START:STOP[:STEP]`` (0-based, STOP exclusive, either end may be empty)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError("frames must look like START:STOP or START:STOP:STEP, e.g. 0:300 or 100::2")
    try:
        start = int(parts[0]) if parts[0] else 0
        stop = int(parts[1]) if parts[1] else None
        step = int(parts[2]) if len(parts) == 3 and parts[2] else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad frame range {shorten(text)}: START, STOP and STEP must be whole numbers, "
                                         "e.g. 0:300 or 100::2") from None
    try:
        return FrameRange(start=start, stop=stop, step=step)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(f"bad frame range {shorten(text)}: {'; '.join(describe_validation_error(exc))}") from None


def _show(p: Any) -> None:
    finished = p.done + p.failed
    message = f"queue position {p.backend.queue_position}" if p.backend.queue_position is not None else p.backend.message
    print(f"[{finished}/{p.sample_count} finished] video {p.sample_index + 1}: {p.backend.stage} {message}", file=sys.stderr)


class _SayProgress:
    """Show sam_backend's info lines (the cost estimate, said before anything is sent) and
    warnings on stderr while a command runs, as bare messages."""

    def __enter__(self) -> _SayProgress:
        self._logger = logging.getLogger("sam_backend")
        self._handler = logging.StreamHandler(sys.stderr)
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._level = self._logger.level
        self._logger.addHandler(self._handler)
        self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._level)


class _Interrupts:
    """First Ctrl-C: cancel the run (requests in flight are cancelled at fal). Second:
    quit now (requests keep running and stay journaled for ``resume``)."""

    def __init__(self) -> None:
        from ..backends.base import CancelToken

        self.token = CancelToken()
        self._previous: Any = None

    def __enter__(self) -> _Interrupts:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        print("\ncancelling: stopping every request in flight (Ctrl-C again to quit at once; "
              "'sam31-video resume' picks up what is left)", file=sys.stderr)
        self.token.cancel()
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _print_report(report: Any, field: str, *, show_run: bool = True, stored_only: bool = False) -> int:
    billed = f", {report.billed_units:g} billed units" if report.billed_units is not None else ""
    if report.reused_units:
        billed += f" ({report.reused_units:g} more from stored results, no new charge)"
    new = None if report.estimated_usd is None else max(0.0, report.estimated_usd - report.stored_usd)
    cost = f", estimated {dollars(new)}" if new is not None else ""
    if new is not None and report.stored_usd:
        cost += f" (+{dollars(report.stored_usd)} already paid)"
    if stored_only:  # the estimate is what a new run would cost; this one sent nothing
        billed, cost = "", ", no charge (stored results, nothing sent)"
    run = f" (run {report.run_id})" if report.run_id and show_run else ""
    if report.records and all(r.backend == "emulator" for r in report.records.values()):
        billed, cost = "", ", free (offline emulator" + (f"; fal would charge about {dollars(new)})"
                                                          if new is not None else ")")
    print(f"{len(report.done)}/{report.samples} videos, {report.frames} frames, {sum(report.tracks.values())} tracks "
          f"-> frames.{field}{cost}{billed} ({report.seconds:.1f} s){run}")
    for sample_id, message in report.failed.items():
        print(f"FAILED {sample_id}: {message}", file=sys.stderr)
    return 1 if report.failed else 0


def _print_dry_run(report: Any, backend: str) -> int:
    if report.estimated_usd is None:
        cost = "no fee (local)" if backend == "local" else "cost unknown (no price for its endpoint)"
    else:
        cost = f"estimated {dollars(report.estimated_usd)} on fal" + (
            f" ({dollars(report.stored_usd)} of it already paid: results in the journal)" if report.stored_usd else "") + (
            " (the emulator charges nothing)" if backend == "emulator" else "")
    skipped = f", {len(report.failed)} unreadable" if report.failed else ""
    print(f"dry run: {report.samples - len(report.failed)} video(s), {report.planned_frames} frames{skipped}: {cost}. "
          "Checked; nothing was sent or written")
    for sample_id, message in report.failed.items():
        print(f"UNREADABLE {sample_id}: {message}", file=sys.stderr)
    return 0


def _segment(args: argparse.Namespace) -> int:

    from .segment import segment_videos

    dataset = load_dataset(args.dataset)
    backend_options: dict[str, Any] = {}
    if args.endpoint:
        backend_options["endpoint"] = args.endpoint
    if args.webhook_url:
        backend_options["webhook_url"] = args.webhook_url
    if args.journal:
        backend_options["journal_path"] = args.journal
    if args.text_mode:
        backend_options["text_mode"] = args.text_mode
    with _Interrupts() as interrupts, _SayProgress():
        report = segment_videos(dataset, prompt=args.prompt, label_field=args.field, backend=args.backend,
                                detection_threshold=args.threshold, max_num_objects=args.max_objects,
                                concurrency=args.concurrency, frames=args.frames, url_field=args.url_field,
                                prompt_fields=args.prompt_field or [], backend_options=backend_options,
                                overwrite=args.overwrite, skip_failures=not args.stop_on_failure, progress=_show,
                                cancel=interrupts.token, max_usd=args.max_usd, dry_run=args.dry_run)
    if report.dry_run:
        return _print_dry_run(report, args.backend)
    # Without --journal the emulator keeps its journal in memory: no run to resume or redecode.
    return _print_report(report, args.field, show_run=args.backend != "emulator" or bool(args.journal))


def load_dataset(name: str) -> Any:
    """The dataset, or an InvalidRequest naming it and the datasets there are."""
    import fiftyone as fo

    if not fo.dataset_exists(name):
        names = fo.list_datasets()
        listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        raise InvalidRequest(f"no FiftyOne dataset named {shorten(name)} (datasets here: {listed or 'none'})")
    return fo.load_dataset(name)


def _resume(args: argparse.Namespace) -> int:
    from .runs import resume

    with _Interrupts() as interrupts, _SayProgress():
        report = resume(args.dataset, run_id=args.run, label_field=args.field, journal_path=args.journal,
                        resubmit_uncertain=args.resubmit_uncertain, progress=_show, cancel=interrupts.token)
    return _print_report(report, report.label_field)


def _redecode(args: argparse.Namespace) -> int:
    from .runs import redecode

    report = redecode(run_id=args.run, journal_path=args.journal)
    return _print_report(report, report.label_field, stored_only=True)


def _fal_check(args: argparse.Namespace) -> int:
    import os
    import tempfile
    from pathlib import Path

    from ..backends.fal import FalBackend
    from ..backends.fal.rle import layouts_path, save_layouts
    from ..backends.fal.selfcheck import estimate, run_check

    real = bool(os.environ.get("FAL_KEY") or (os.environ.get("FAL_KEY_ID") and os.environ.get("FAL_KEY_SECRET")))
    workdir = Path(args.out or tempfile.mkdtemp(prefix="sam31-fal-check-"))
    if real:
        backend: Any = FalBackend.from_env(os.environ, **({"journal_path": args.journal} if args.journal else {}))
        usd, detail = estimate(backend)
        print(f"fal-check on fal (FAL_KEY is set): {detail}, about {dollars(usd or 0)}")
        if not args.yes:
            print("nothing was sent: run again with --yes to spend it")
            backend.close()
            return 0
    else:
        from ..backends.emulator import BACKEND as emulator

        print("FAL_KEY is not set: checking against the offline emulator (no charge); nothing is stored")
        backend = emulator()
    with backend:
        report = run_check(backend, workdir)
    print(report)
    if real and report.winners:
        path = layouts_path(os.environ)
        save_layouts(path, report.winners)
        print(f"stored the measured layouts in {path}; segment/resume/redecode use them from now on")
    return 1 if any(r.error for r in report.rows) else 0


def _status(args: argparse.Namespace) -> int:
    from .runs import status

    print(status(args.dataset, journal_path=args.journal))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sam31-video")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="segment a generated video into a FiftyOne dataset", add_help=False)
    sub.add_parser("export", help="export tracks to COCO, YOLO, MOT/MOTS or YouTube-VIS", add_help=False)
    sub.add_parser("import", help="import COCO or YouTube-VIS tracks into frame labels", add_help=False)
    seg = sub.add_parser("segment", help="segment every video of a FiftyOne dataset")
    seg.add_argument("dataset")
    seg.add_argument("--prompt", default="", help="comma-separated concepts, e.g. 'person, dog'")
    seg.add_argument("--prompt-field", action="append", default=None, metavar="FIELD",
                     help="frame field whose boxes/clicks (Detections, Keypoints, Polylines) are prompts; repeatable")
    seg.add_argument("--field", default="sam", help="frame field the tracks are written to (default 'sam'); "
                     "a field of an earlier run is replaced on the processed frames")
    seg.add_argument("--overwrite", action="store_true",
                     help="replace labels in --field that sam31-video did not write (e.g. ground truth)")
    seg.add_argument("--backend", default="fal", help="fal (default; needs FAL_KEY), emulator (offline, no cost) or local")
    seg.add_argument("--threshold", type=float, default=0.5,
                     help="detection threshold in [0, 1]; fal's endpoints take 0.01 and up (default 0.5)")
    seg.add_argument("--max-objects", type=int, default=16,
                     help="at most this many objects per text concept, and objects named by clicks and boxes (default 16)")
    seg.add_argument("--concurrency", type=int, default=None, help="videos in flight at once (default 8)")
    seg.add_argument("--stop-on-failure", action="store_true",
                     help="refuse the run when a video cannot be read, and stop at the first video that fails "
                          "(default: report it and label the others)")
    seg.add_argument("--frames", type=_frames, default=None, help="only these frames, START:STOP[:STEP] (0-based)")
    seg.add_argument("--url-field", default=None, help="sample field with a public video URL to use instead of uploading")
    seg.add_argument("--endpoint", default=None, help="fal endpoint id (default fal-ai/sam-3-1/video-rle)")
    seg.add_argument("--webhook-url", default=None, help="passed to fal as fal_webhook on every submit")
    seg.add_argument("--journal", default=None, help="request journal file (default in ~/.local/state/sam31-video)")
    seg.add_argument("--text-mode", choices=["instances", "union"], default=None,
                     help="instances (default): a track per instance via SAM 3's objects endpoint; "
                          "union: one track per concept on SAM 3.1")
    seg.add_argument("--max-usd", type=float, default=None, metavar="USD",
                     help="refuse the run, before anything is sent, if its fal estimate is above USD")
    seg.add_argument("--dry-run", action="store_true",
                     help="check the dataset, videos and prompts and print the estimate; send and write nothing")
    res = sub.add_parser("resume", help="finish an unfinished run without paying twice")
    res.add_argument("dataset", nargs="?")
    res.add_argument("--run", default=None, help="run id (default: the newest unfinished run)")
    res.add_argument("--field", default=None)
    res.add_argument("--journal", default=None)
    res.add_argument("--resubmit-uncertain", action="store_true",
                     help="also resubmit samples whose earlier submit may have reached fal (may bill twice)")
    chk = sub.add_parser("fal-check", help="measure fal's RLE layout and object semantics (a few cents, with --yes)")
    chk.add_argument("--yes", action="store_true", help="spend the estimated cost on fal")
    chk.add_argument("--out", default=None, help="folder for the raw payloads (default: a new temp folder)")
    chk.add_argument("--journal", default=None)
    red = sub.add_parser("redecode", help="decode a run's stored fal results into its field again (no new request)")
    red.add_argument("run", help="run id (see sam31-video status)")
    red.add_argument("--journal", default=None)
    st = sub.add_parser("status", help="runs in the journal and requests still open at fal")
    st.add_argument("dataset", nargs="?")
    st.add_argument("--journal", default=None)
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command == "demo":
            from .demo import main as demo_main

            return demo_main(rest)
        if args.command in ("export", "import"):
            from .export.cli import main as export_main

            return export_main([args.command, *rest])
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command == "segment":
            if args.concurrency is None:
                from .options import DEFAULT_CONCURRENCY

                args.concurrency = DEFAULT_CONCURRENCY
            return _segment(args)
        if args.command == "resume":
            return _resume(args)
        if args.command == "redecode":
            return _redecode(args)
        if args.command == "fal-check":
            return _fal_check(args)
        return _status(args)
    except Cancelled as exc:
        message = str(exc)
        print(message if message.startswith("cancelled") else f"cancelled: {message}", file=sys.stderr)
        return 130
    except SamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        # Without --journal the emulator keeps its journal in memory: nothing to resume.
        resumable = getattr(args, "backend", "fal") != "emulator" or bool(getattr(args, "journal", None))
        return _stopped_midway(exc.report, resumable) if exc.report is not None else 2


def _stopped_midway(report: Any, resumable: bool) -> int:
    """Exit code 2 means nothing was sent or written; a run stopped after it sent requests
    or wrote videos says what is paid and how to finish it, and exits 1."""
    sent = report.sent_request_ids
    if not sent and not report.done:
        return 2
    print(f"the run stopped midway: {len(report.done)} of {report.samples} video(s) written", file=sys.stderr)
    if sent:
        where = (f"journaled in run {report.run_id}: once the cause is fixed, 'sam31-video resume' takes them "
                 "without paying for them again" if report.run_id and resumable
                 else "journaled in memory only (offline emulator without --journal): nothing to resume")
        print(f"{len(sent)} fal request(s) were sent before it stopped ({listed(sent)}), {where}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
