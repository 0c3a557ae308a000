"""Scale-out on FiftyOne's own engine: a sharded run queued as delegated operations and
run by two real `fiftyone delegated launch` workers. One worker is killed mid-run; its
shard is re-queued (`fiftyone delegated fail` + `rerun`) and resumes: every video is
labelled, and written exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import fiftyone.core.odm as foo_odm
import fiftyone.operators as foo
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionRunState

from sam_backend.fiftyone_io.runner import RUN_MARKS_COLLECTION

URI = "@sam31/video/segment_video"
FIFTYONE = str(Path(sys.executable).parent / "fiftyone")


def _worker() -> subprocess.Popen:
    return subprocess.Popen([FIFTYONE, "delegated", "launch"], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_two_workers_one_killed_every_video_written_once(make_dataset, small_video) -> None:
    ds = make_dataset(*[small_video[0]] * 4, persistent=True)
    service = DelegatedOperationService()
    foo.get_operator(URI)(ds.view(), "red ball", backend="emulator", label_field="sam", shards=2,
                          concurrency=1, emulator_service_s=2.5)
    ops = service.get_queued_operations(operator=URI, dataset_name=ds.name)
    assert len(ops) == 2
    run_key = ops[0].context.request_params["params"]["run_key"]
    marks = foo_odm.get_db_conn()[RUN_MARKS_COLLECTION]

    def state(op_id):
        return service.get(op_id).run_state

    workers = [_worker(), _worker()]
    try:
        # both shards running, and the first video of the run written: kill one worker now
        _wait(lambda: all(state(op.id) == ExecutionRunState.RUNNING for op in ops), 90, "both shards to start")
        _wait(lambda: marks.count_documents({"run_key": run_key}) >= 1, 90, "a first video to be written")
        victim = workers[0]
        _kill(victim)
        # the other worker finishes its own shard; the killed one's stays RUNNING forever
        _wait(lambda: any(state(op.id) == ExecutionRunState.COMPLETED for op in ops), 120, "the surviving shard")
        stuck = next(op for op in ops if state(op.id) == ExecutionRunState.RUNNING)
        subprocess.run([FIFTYONE, "delegated", "fail", str(stuck.id)], check=True, env=dict(os.environ),
                       stdout=subprocess.DEVNULL)
        rerun = subprocess.run([FIFTYONE, "delegated", "rerun", str(stuck.id)], check=True, env=dict(os.environ),
                               capture_output=True, text=True)
        assert "rerun operation" in rerun.stdout
        _wait(lambda: marks.count_documents({"run_key": run_key}) == 4, 120, "the re-queued shard to resume")
        _wait(lambda: not service.get_running_operations(operator=URI, dataset_name=ds.name), 60, "workers to idle")
    finally:
        for proc in workers:
            _kill(proc)
    writes = {m["sample_id"]: m["writes"] for m in marks.find({"run_key": run_key})}
    assert writes == {sid: 1 for sid in ds.values("id")}
    ds = fo.load_dataset(ds.name)
    for sample in ds:
        labels = {d.label for f in sample.frames.values() for d in f["sam"].detections}
        assert labels == {"red ball"}
