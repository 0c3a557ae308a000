"""``segmentation_runs``: see what fal runs were interrupted, and resume one without paying
twice (requests fal already has are polled, stored results are written, only videos never
submitted are submitted). Thin: it calls fiftyone_io.status / resume."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from sam_backend.errors import SamError
from sam_backend.fiftyone_io import resume, status

from .run_progress import run_with_progress, summary

UNFINISHED = ("running", "failed", "cancelled")


def _status(ctx: Any) -> Any:
    return status(ctx.dataset, journal_path=ctx.params.get("journal_path") or None)


class SegmentationRuns(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="segmentation_runs",
            label="SAM 3.1 runs: status and resume",
            description="Runs recorded in the fal request journal; resume an interrupted one",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        inputs.str("journal_path", label="Journal file", description="Default: ~/.local/state/sam31-video/fal-journal.sqlite3")
        try:
            found = _status(ctx)
        except SamError as exc:
            inputs.view("no_journal", types.Notice(label=str(exc)))
            return types.Property(inputs, view=types.View(label="SAM 3.1 runs"))
        inputs.view("status", types.Notice(label=str(found)))
        unfinished = [r for r in found.runs if r.state.value in UNFINISHED]
        if not unfinished:
            inputs.view("nothing", types.Notice(label="Nothing to resume for this dataset"))
        else:
            choices = types.Dropdown()
            for run in unfinished:
                counts = run.counts()
                choices.add_choice(run.run_id, label=f"{run.run_id} ({run.state.value}, field {run.label_field}, "
                                                     f"{counts['pending'] + counts['failed']} to finish)")
            inputs.enum("run_id", choices.values(), default=unfinished[0].run_id, view=choices, label="Resume run")
            inputs.bool("resubmit_uncertain", default=False, label="Also resubmit videos whose submit may have reached fal",
                        description="Only if you accept a possible double charge for them")
        return types.Property(inputs, view=types.View(label="SAM 3.1 runs"))

    def execute(self, ctx: Any) -> Iterator[Any]:
        if not ctx.params.get("run_id"):
            yield ctx.trigger("notify", {"message": "SAM 3.1: nothing to resume", "variant": "info"})
            return
        key = ctx.secret("FAL_KEY")
        report = yield from run_with_progress(ctx, lambda progress, cancel: resume(
            ctx.dataset, run_id=ctx.params["run_id"], journal_path=ctx.params.get("journal_path") or None,
            secrets={"FAL_KEY": key} if key else None, resubmit_uncertain=bool(ctx.params.get("resubmit_uncertain")),
            progress=progress, cancel=cancel))
        yield ctx.trigger("reload_dataset")
        yield ctx.trigger("notify", {"message": "resumed: " + summary(report), "variant": "warning" if report.failed else "success"})

    def __call__(self, sample_collection: Any, run_id: str, *, journal_path: str | None = None,
                 resubmit_uncertain: bool = False, delegate: bool = False) -> Any:
        params = {"run_id": run_id, "journal_path": journal_path, "resubmit_uncertain": resubmit_uncertain}
        return foo.execute_operator(self.uri, {"view": sample_collection.view(), "params": params},
                                    request_delegation=delegate)
