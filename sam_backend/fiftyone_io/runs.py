"""Runs recorded in the fal journal: what is pending (``status``), finishing a run that
stopped without paying twice (``resume``), and decoding a run's stored results again with
no new request (``redecode``)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fiftyone as fo

from ..backends.base import Backend, CancelToken
from ..errors import InvalidRequest, listed
from .options import SampleProgress, SegmentOptions, SegmentReport
from .segment import environ_with_secrets, segment_collection



@dataclasses.dataclass(frozen=True)
class RunStatus:
    """What the journal knows: runs (newest first) and requests still open at fal."""

    journal: str
    runs: list[Any]  # journal.RunInfo
    open_requests: list[Any]  # journal.Entry in submitting / uncertain / submitted states

    def __str__(self) -> str:
        lines = [f"journal: {self.journal}"]
        if not self.runs:
            lines.append("no runs recorded")
        for run in self.runs:
            counts = run.counts()
            lines.append(
                f"run {run.run_id}  {run.state.value:<9} dataset={run.dataset} field={run.label_field} "
                f"done={counts['done']} failed={counts['failed']} pending={counts['pending']} "
                f"started {time.strftime('%Y-%m-%d %H:%M', time.localtime(run.created_at))}"
            )
        if self.open_requests:
            lines.append("requests still open at fal:")
            for entry in self.open_requests:
                age = time.time() - entry.updated_at
                lines.append(f"  #{entry.id} {entry.state.value:<10} {entry.work_key} {entry.endpoint} "
                             f"request {entry.request_id or '-'} ({age:.0f} s ago){': ' + entry.error if entry.error else ''}")
        return "\n".join(lines)


def _open_journal(journal_path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None):  # -> Journal
    from ..backends.fal.config import default_journal_path
    from ..backends.fal.journal import Journal

    path = Path(journal_path) if journal_path is not None else default_journal_path(environ or os.environ)
    if not path.exists():
        raise InvalidRequest(f"no journal at {path}: nothing was ever submitted with it (pass journal_path=..., "
                             "CLI: --journal; the emulator keeps its journal in memory unless given one)")
    return Journal(path)


def status(dataset: str | fo.Dataset | None = None, *, journal_path: str | os.PathLike[str] | None = None,
           backend: Backend | None = None) -> RunStatus:
    """Runs recorded in the fal journal (all, or ``dataset``'s) and the requests still open
    at fal. ``backend`` (a fal backend instance) reads its own journal; otherwise the
    journal at ``journal_path`` (default: the user's state directory)."""
    name = dataset.name if isinstance(dataset, fo.Dataset) else dataset
    journal = getattr(backend, "journal", None) if backend is not None else _open_journal(journal_path, None)
    if journal is None:
        raise InvalidRequest(f"backend {getattr(backend, 'name', backend)!r} keeps no journal")
    from ..backends.fal.journal import OPEN_STATES

    try:
        runs = journal.runs(dataset=name)
        prefix = f"{name}/" if name else None
        entries = journal.entries(states=OPEN_STATES, work_key_prefix=prefix)
        return RunStatus(journal.location, runs, entries)
    finally:
        if backend is None:
            journal.close()


def resume(
    dataset: str | fo.Dataset | None = None,
    *,
    run_id: str | None = None,
    label_field: str | None = None,
    backend: Backend | None = None,
    secrets: Mapping[str, str] | None = None,
    journal_path: str | os.PathLike[str] | None = None,
    resubmit_uncertain: bool = False,
    progress: Callable[[SampleProgress], None] | None = None,
    cancel: CancelToken | None = None,
) -> SegmentReport:
    """Finish a run that stopped (crash, kill, Ctrl-C, failures): the newest unfinished run
    of ``dataset`` (and ``label_field``), or ``run_id``. Requests fal already has are polled
    (never submitted again), results already fetched are written, and only samples never
    submitted are submitted. Samples already written are left alone.

    The run's options come from the journal; ``backend`` (an instance with that journal)
    or ``journal_path`` say which journal. ``resubmit_uncertain`` also resubmits samples
    whose earlier submit may or may not have reached fal (possibly paying twice).
    """
    name = dataset.name if isinstance(dataset, fo.Dataset) else dataset
    journal = getattr(backend, "journal", None) if backend is not None else _open_journal(journal_path, environ_with_secrets(secrets))
    if journal is None:
        raise InvalidRequest(f"backend {getattr(backend, 'name', backend)!r} keeps no journal: nothing to resume")
    from ..backends.fal.journal import RunState

    try:
        if run_id is not None:
            run = _journal_run(journal, run_id)
        else:
            runs = [r for r in journal.runs(dataset=name, states=[RunState.RUNNING, RunState.FAILED, RunState.CANCELLED])
                    if label_field is None or r.label_field == label_field]
            if not runs:
                raise InvalidRequest(f"no unfinished run{' of ' + name if name else ''} in {journal.location}")
            run = runs[0]
        newer = superseded(journal, run)
        location = str(journal.path) if journal.path is not None else None
    finally:
        if backend is None:
            journal.close()
    pending = [s for s in run.pending() if s not in newer]
    if newer and not pending:
        raise InvalidRequest(
            f"nothing to resume: every unfinished video of run {run.run_id} ({len(newer)}) has had its "
            f"'{run.label_field}' labels written since by a newer run ({_runs_named(newer)}); resuming would "
            "replace them with this older run's results. To redo those videos, segment them again")
    opts = SegmentOptions.build(**run.spec["options"])
    if backend is None:
        backend_options = dict(opts.backend_options)
        if location is not None:
            backend_options["journal_path"] = location
        if resubmit_uncertain:
            backend_options["resubmit_uncertain"] = True
        opts = opts.model_copy(update={"backend_options": backend_options})
    if not pending:
        return SegmentReport(label_field=run.label_field, run_id=run.run_id)
    samples = fo.load_dataset(run.dataset).select(pending, ordered=True)
    config = getattr(backend, "config", None)
    if backend is not None and resubmit_uncertain and (config is None or not hasattr(config, "resubmit_uncertain")):
        raise InvalidRequest("resubmit_uncertain needs a fal backend")
    if backend is not None and resubmit_uncertain:
        backend.config = config.model_copy(update={"resubmit_uncertain": True})  # type: ignore[attr-defined]
    try:
        report = segment_collection(samples, opts, backend=backend, secrets=secrets, progress=progress, cancel=cancel,
                                    run_id=run.run_id)
    finally:
        if backend is not None and resubmit_uncertain:
            backend.config = config  # type: ignore[attr-defined]
    if newer:
        report.warnings.append(
            f"left out {len(newer)} unfinished video(s) of run {run.run_id} whose '{run.label_field}' labels a newer "
            f"run wrote since ({_runs_named(newer)}): resuming them would replace newer labels with older results")
    return report


def superseded(journal: Any, run: Any) -> dict[str, str]:
    """The unfinished videos of ``run`` whose field a later run has written since: sample
    id -> that run (its id, or "a run without a journal"). Read from the journal (a later
    run of the same dataset and field that finished the video) and from the field's
    per-video record (``written_at``, which also covers the emulator and local backends)."""
    from ..backends.fal.journal import SampleState

    pending = set(run.pending())
    if not pending:
        return {}
    out: dict[str, str] = {}
    for other in journal.runs(dataset=run.dataset):
        if other.run_id == run.run_id or other.label_field != run.label_field or other.created_at <= run.created_at:
            continue
        for sid, state in other.samples.items():
            if sid in pending and state is SampleState.DONE:
                out.setdefault(sid, other.run_id)
    if fo.dataset_exists(run.dataset):
        field = fo.load_dataset(run.dataset).get_field(f"frames.{run.label_field}")
        records = (((field.info or {}) if field is not None else {}).get("sam31_video") or {}).get("samples") or {}
        for sid in pending - set(out):
            record = records.get(sid) or {}
            writes = [record, *record.get("refines", [])]
            later = [w for w in writes if w.get("run_id") != run.run_id and (w.get("written_at") or 0) > run.created_at]
            if later:
                out[sid] = later[-1].get("run_id") or "a run without a journal"
    return out


def _runs_named(newer: dict[str, str]) -> str:
    names = sorted(set(newer.values()))
    return listed([n if n.startswith("a run") else f"run {n}" for n in names], limit=3)


def redecode(
    *,
    run_id: str,
    backend: Backend | None = None,
    journal_path: str | os.PathLike[str] | None = None,
    progress: Callable[[SampleProgress], None] | None = None,
) -> SegmentReport:
    """Decode the fal results journaled for run ``run_id`` into its field again, every
    sample of it, with no upload and no submit: the repair after a decoding failure (e.g.
    once ``fal-check`` stored the RLE layout fal really uses). A sample without stored
    results fails with a message; nothing is ever sent to fal."""
    journal = getattr(backend, "journal", None) if backend is not None else _open_journal(journal_path, None)
    if journal is None:
        raise InvalidRequest(f"backend {getattr(backend, 'name', backend)!r} keeps no journal: nothing to redecode")
    try:
        run = _journal_run(journal, run_id)
        location = str(journal.path) if journal.path is not None else None
    finally:
        if backend is None:
            journal.close()
    opts = SegmentOptions.build(**run.spec["options"])
    samples = fo.load_dataset(run.dataset).select(list(run.samples), ordered=True)
    if backend is None:
        from ..backends.fal import FalBackend, FalConfig

        # No key is needed: a stored-only backend sends nothing. A placeholder satisfies FalConfig.
        environ = {**os.environ}
        environ.setdefault("FAL_KEY", "redecode:offline")
        options = {k: v for k, v in opts.backend_options.items() if k in FalConfig.model_fields}
        if location is not None:
            options["journal_path"] = location
        owned = FalBackend.from_env(environ, **options)
        owned.stored_only = True
        try:
            return segment_collection(samples, opts, backend=owned, secrets=None, progress=progress, cancel=None, run_id=run.run_id)
        finally:
            owned.close()
    previous = getattr(backend, "stored_only", None)
    if previous is None:
        raise InvalidRequest(f"backend {backend.name!r} has no stored results to redecode")
    backend.stored_only = True  # type: ignore[attr-defined]
    try:
        return segment_collection(samples, opts, backend=backend, secrets=None, progress=progress, cancel=None, run_id=run.run_id)
    finally:
        backend.stored_only = previous  # type: ignore[attr-defined]


def _journal_run(journal: Any, run_id: str) -> Any:
    try:
        return journal.run(run_id)
    except KeyError:
        raise InvalidRequest(f"no run {run_id!r} in {journal.location} (`status` lists its runs)") from None


__all__ = ["RunStatus", "redecode", "resume", "status"]
