"""The request journal: what was submitted to fal, so nothing is paid for twice.

A local SQLite database (stdlib ``sqlite3``, WAL mode, one connection per journal guarded
by a lock, every write committed at once) with four tables:

- ``requests``: one row per submit attempt, keyed by the work key ("dataset/sample/field")
  and a hash of everything that determines the output (endpoint, request, video content,
  frame range). A row is written *before* the submit (state ``submitting``), gets fal's
  request id and URLs as soon as fal answers (``submitted``), and the result itself right
  after completion (``completed``: fal's raw bytes as they arrived, zlib-compressed,
  written and read back as streams so no result is ever held whole; older journals hold
  compressed JSON of the parsed result, still read), before anything is written to a
  dataset; ``written`` once the labels are in. A crash at any point leaves a row that says
  what to do next: poll it, write it, or (for ``submitting``/``uncertain``, where fal may
  or may not have the request) ask the user, because resending could bill twice.
- ``uploads``: content hash -> CDN URL and until when fal keeps it, so a video is uploaded
  once across runs.
- ``runs`` / ``run_samples``: which samples a job covers and how far each got, so a job can
  be resumed (``resume``) and inspected (``status``) without its original arguments.
- ``webhook_deliveries``: request ids of webhook deliveries already handled (fal retries
  deliveries, receivers must deduplicate).

Nothing secret is stored: request bodies hold video URLs and prompts, never the key.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import queue
import sqlite3
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ...owners import current_owner, owner_alive
from .client import RequestHandle

SCHEMA_VERSION = 1
# Stored results of requests whose labels were written are dropped after this long (a
# rerun of such an old job submits again); rows themselves stay, they are small.
RESULT_RETENTION_S = 30 * 24 * 3600
# Another process may hold the write lock briefly (two runs on one journal); wait this
# long before failing rather than erroring at once.
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    work_key TEXT,
    request_hash TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    state TEXT NOT NULL,
    request_id TEXT,
    status_url TEXT,
    response_url TEXT,
    cancel_url TEXT,
    payload TEXT NOT NULL,
    webhook_url TEXT,
    frame_indices TEXT,
    result BLOB,
    billable_units REAL,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS requests_by_work ON requests (work_key, request_hash);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests (state);
CREATE INDEX IF NOT EXISTS requests_by_request_id ON requests (request_id);
CREATE TABLE IF NOT EXISTS uploads (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    url TEXT NOT NULL,
    uploaded_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    label_field TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS run_samples (
    run_id TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (run_id, sample_id)
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    request_id TEXT PRIMARY KEY,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS result_chunks (
    entry_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (entry_id, seq)
);
"""


class RequestState(str, enum.Enum):
    SUBMITTING = "submitting"  # intent written, submit in flight (or the process died during it)
    UNCERTAIN = "uncertain"  # the submit failed in a way that does not prove fal refused it
    SUBMITTED = "submitted"  # fal accepted it: poll it, never submit it again
    COMPLETED = "completed"  # the result is stored here
    WRITTEN = "written"  # ... and its labels were written
    FAILED = "failed"  # fal ran it and failed it
    REJECTED = "rejected"  # fal provably refused the submit: nothing was billed
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # completed at fal, but the result was gone before it was fetched
    ABANDONED = "abandoned"  # an uncertain entry the user chose to resubmit


OPEN_STATES = frozenset({RequestState.SUBMITTING, RequestState.UNCERTAIN, RequestState.SUBMITTED})
HAS_RESULT = frozenset({RequestState.COMPLETED, RequestState.WRITTEN})


class RunState(str, enum.Enum):
    RUNNING = "running"  # or the process died: resume it
    DONE = "done"
    FAILED = "failed"  # finished, some samples failed
    CANCELLED = "cancelled"


class SampleState(str, enum.Enum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One journaled submit attempt (see the module doc for states)."""

    id: int
    work_key: str | None
    request_hash: str
    endpoint: str
    state: RequestState
    request_id: str | None
    status_url: str | None
    response_url: str | None
    cancel_url: str | None
    payload: dict[str, Any]
    webhook_url: str | None
    frame_indices: list[int] | None
    billable_units: float | None
    error: str | None
    created_at: float
    updated_at: float
    has_result: bool
    owner: str | None = None  # "host:pid" of the process that claimed the submit

    def owner_alive(self, *, lease_s: float = 600.0) -> bool:
        """Whether the process that claimed this submit may still be sending it: alive on
        this host, or (another host) heard from within ``lease_s``."""
        alive = owner_alive(self.owner)
        return time.time() - self.updated_at < lease_s if alive is None else alive

    def handle(self) -> RequestHandle:
        if not (self.request_id and self.status_url and self.response_url and self.cancel_url):
            raise ValueError(f"journal entry {self.id} has no request id yet (state {self.state.value})")
        return RequestHandle(self.endpoint, self.request_id, self.status_url, self.response_url, self.cancel_url)

    def describe(self) -> str:
        rid = f", fal request {self.request_id}" if self.request_id else ""
        return f"journal entry #{self.id} ({self.work_key or 'no work key'}, {self.endpoint}{rid}, {self.state.value})"


@dataclasses.dataclass(frozen=True)
class RunInfo:
    run_id: str
    dataset: str
    label_field: str
    spec: dict[str, Any]
    state: RunState
    created_at: float
    updated_at: float
    samples: dict[str, SampleState]  # sample id -> state, in the run's order
    errors: dict[str, str]

    def pending(self) -> list[str]:
        return [s for s, st in self.samples.items() if st is not SampleState.DONE]

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in SampleState}
        for st in self.samples.values():
            out[st.value] += 1
        return out


def owner_id() -> str:
    """Who claims a submit ("host:pid"): a second process sharing the journal waits for it while it lives."""
    return current_owner()


# A stored result in the streamed format: ``result`` holds this, then the attachments
# (_pack'ed dict); fal's raw bytes are one zlib stream cut into ``result_chunks`` rows (rows
# of a few hundred KB keep SQLite's memory flat; one big blob went through its page cache).
RAW_MAGIC = b"SAMRAW2\n"
# Compressed bytes read from a stored result per step (and per lock hold).
READ_CHUNK_BYTES = 256 * 1024


class ResultSpool:
    """fal's raw result bytes compressed into a temporary file as they arrive, to be
    stored by :meth:`Journal.completed_raw` (never all in memory)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="sam31-result-")
        self._zip = zlib.compressobj(1)  # level 1: RLE digits still shrink ~3x, at ~10x level 6's speed
        self.raw_bytes = 0
        self._done = False

    def write(self, chunk: bytes) -> None:
        self.raw_bytes += len(chunk)
        self._file.write(self._zip.compress(chunk))

    def finish(self) -> int:
        """Flush the compressor; the compressed size."""
        if not self._done:
            self._file.write(self._zip.flush())
            self._done = True
        return self._file.tell()

    def compressed(self) -> Iterator[bytes]:
        self.finish()
        self._file.seek(0)
        while block := self._file.read(READ_CHUNK_BYTES):
            yield block

    def chunks(self) -> Iterator[bytes]:
        """The raw bytes again (e.g. to look at the result before storing it)."""
        return _inflate(self.compressed())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Raw bytes per piece when a stored result is inflated. Bounded on the output side: RLE
# text compresses 3-20x, so 256 KB of compressed input could be 5 MB of text, and a
# video's requests are read side by side, each a few pieces ahead (a 16-object union run
# held whole results in memory that way).
INFLATE_PIECE_BYTES = 64 * 1024


def _inflate(blocks: Iterable[bytes]) -> Iterator[bytes]:
    unzip = zlib.decompressobj()
    for block in blocks:
        data = block
        while True:
            piece = unzip.decompress(data, INFLATE_PIECE_BYTES)
            if piece:
                yield piece
            data = unzip.unconsumed_tail
            if not data and len(piece) < INFLATE_PIECE_BYTES:
                break  # input used up and nothing held back
    tail = unzip.flush()
    if tail:
        yield tail


def _prefetched(blocks: Iterator[bytes], depth: int = 4) -> Iterator[bytes]:
    """``blocks`` read (blob reads, zlib: both release the GIL) on a thread of their own, a
    few blocks ahead of the consumer, which meanwhile parses and decodes on another core."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: tuple[str, Any]) -> bool:
        """Queue ``item`` unless the consumer has left (then False): a plain put would
        wait forever on a full queue nobody reads any more."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for block in blocks:
                if not offer(("data", block)):
                    return
            offer(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            offer(("error", exc))

    thread = threading.Thread(target=produce, name="sam31-result-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


@dataclasses.dataclass
class StoredResult:
    """A journaled result: its attachments (small, parsed) and ``chunks()``, fal's raw
    bytes read from the journal piece by piece (each call starts over)."""

    attachments: dict[str, Any]
    chunks: Callable[[], Iterator[bytes]]


def _pack(obj: Any) -> bytes:
    return zlib.compress(json.dumps(obj, separators=(",", ":")).encode(), 3)


def _unpack(blob: bytes) -> Any:
    return json.loads(zlib.decompress(blob))


class Journal:
    """The journal at ``path`` (created on first use), or a private in-memory one when
    ``path`` is None (nothing survives the process: for tests and one-off runs)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(self.path) if self.path is not None else ":memory:",
            check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
        )
        self._db.row_factory = sqlite3.Row
        with self._lock:
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL survives a killed process (only power loss can drop the last commits).
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._db.executescript(_SCHEMA)
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(requests)")}
            if "owner" not in columns:  # a journal written before claims existed
                self._db.execute("ALTER TABLE requests ADD COLUMN owner TEXT")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        if self.path is not None:
            self.prune()

    @property
    def location(self) -> str:
        return str(self.path) if self.path is not None else "an in-memory journal (lost when the process ends)"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> tuple[int, int | None]:
        """Run one statement: (rows changed, last row id)."""
        with self._lock:
            cur = self._db.execute(sql, tuple(params))
            return cur.rowcount, cur.lastrowid

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = self._query(sql, params)
        return rows[0] if rows else None

    # -- requests ---------------------------------------------------------------------

    def begin(self, *, work_key: str | None, request_hash: str, endpoint: str, payload: dict[str, Any],
              webhook_url: str | None = None, frame_indices: list[int] | None = None) -> Entry:
        """Record the intent to submit, before the submit is sent."""
        now = time.time()
        _, entry_id = self._execute(
            "INSERT INTO requests (work_key, request_hash, endpoint, state, payload, webhook_url, frame_indices,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (work_key, request_hash, endpoint, RequestState.SUBMITTING.value, json.dumps(payload), webhook_url,
             json.dumps(frame_indices) if frame_indices is not None else None, now, now),
        )
        assert entry_id is not None
        return self.get(entry_id)

    def claim(self, *, work_key: str | None, request_hash: str, endpoint: str, payload: dict[str, Any],
              webhook_url: str | None = None) -> tuple[Entry, bool]:
        """Atomically (across processes sharing this file): the newest entry for this unit
        of work and request when it is in flight or has a result, else a new ``submitting``
        entry owned by this process. True when the caller now owns the submit."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # takes the write lock: no other claim in between
            try:
                row = None
                if work_key is not None:
                    row = self._db.execute(
                        f"SELECT {_ENTRY_COLUMNS} FROM requests WHERE work_key = ? AND request_hash = ? "
                        "ORDER BY id DESC LIMIT 1", (work_key, request_hash)).fetchone()
                if row is not None and (RequestState(row["state"]) in OPEN_STATES
                                        or (RequestState(row["state"]) in HAS_RESULT and row["has_result"])):
                    self._db.execute("COMMIT")
                    return _entry(row), False
                cur = self._db.execute(
                    "INSERT INTO requests (work_key, request_hash, endpoint, state, payload, webhook_url, created_at,"
                    " updated_at, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (work_key, request_hash, endpoint, RequestState.SUBMITTING.value, json.dumps(payload), webhook_url,
                     now, now, owner_id()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        assert cur.lastrowid is not None
        return self.get(cur.lastrowid), True

    def submitted(self, entry_id: int, handle: RequestHandle) -> Entry:
        """fal accepted the submit: record its id and URLs (before waiting on it)."""
        self._update(entry_id, state=RequestState.SUBMITTED, endpoint=handle.endpoint, request_id=handle.request_id,
                     status_url=handle.status_url, response_url=handle.response_url, cancel_url=handle.cancel_url)
        return self.get(entry_id)

    def set_endpoint(self, entry_id: int, endpoint: str) -> None:
        self._update(entry_id, endpoint=endpoint)

    def completed(self, entry_id: int, result: dict[str, Any], billable_units: float | None) -> Entry:
        """Store the fetched result (and any mask files it pointed to)."""
        self._update(entry_id, state=RequestState.COMPLETED, result=_pack(result), billable_units=billable_units, error=None)
        return self.get(entry_id)

    def completed_raw(self, entry_id: int, spool: ResultSpool, attachments: dict[str, Any],
                      billable_units: float | None) -> Entry:
        """Store a streamed result: copied from ``spool`` piece by piece, all in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM result_chunks WHERE entry_id = ?", (entry_id,))
                for seq, block in enumerate(spool.compressed()):
                    self._db.execute("INSERT INTO result_chunks (entry_id, seq, data) VALUES (?, ?, ?)",
                                     (entry_id, seq, block))
                self._db.execute(
                    "UPDATE requests SET result = ?, state = ?, billable_units = ?, error = NULL, updated_at = ? "
                    "WHERE id = ?", (RAW_MAGIC + _pack(attachments), RequestState.COMPLETED.value, billable_units,
                                     time.time(), entry_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(entry_id)

    def open_result(self, entry_id: int) -> StoredResult:
        """The stored result of ``entry_id`` as a stream (either storage format)."""
        row = self._one("SELECT result FROM requests WHERE id = ?", (entry_id,))
        if row is None or row["result"] is None:
            raise ValueError(f"journal entry {entry_id} has no stored result")
        head = bytes(row["result"])
        if not head.startswith(RAW_MAGIC):  # a journal from before streaming: small enough to parse whole
            stored = _unpack(head)
            raw = json.dumps(stored.get("payload")).encode()
            return StoredResult(dict(stored.get("attachments") or {}), lambda: iter((raw,)))
        attachments = _unpack(head[len(RAW_MAGIC):])
        return StoredResult(attachments, lambda: _prefetched(_inflate(self._chunk_rows(entry_id))))

    def _chunk_rows(self, entry_id: int) -> Iterator[bytes]:
        """The compressed pieces of a stored result, one query (and lock hold) each."""
        seq = 0
        while True:
            row = self._one("SELECT data FROM result_chunks WHERE entry_id = ? AND seq = ?", (entry_id, seq))
            if row is None:
                return
            yield bytes(row["data"])
            seq += 1

    def mark(self, entry_id: int, state: RequestState, error: str | None = None) -> None:
        self._update(entry_id, state=state, error=error)

    def written(self, entry_id: int) -> None:
        self._update(entry_id, state=RequestState.WRITTEN)

    def release(self, entry_id: int) -> Entry:
        """Let an uncertain (or stuck submitting) entry be submitted again: the user
        accepts that fal may have taken the first submit and bill both."""
        entry = self.get(entry_id)
        if entry.state not in (RequestState.UNCERTAIN, RequestState.SUBMITTING):
            raise ValueError(f"{entry.describe()} is not uncertain; only uncertain entries can be released")
        self._update(entry_id, state=RequestState.ABANDONED)
        return self.get(entry_id)

    def prune(self, older_than_s: float = RESULT_RETENTION_S, *, now: float | None = None) -> int:
        """Drop the stored results of written entries last touched more than
        ``older_than_s`` ago (and expired upload records); returns how many results."""
        cutoff = (time.time() if now is None else now) - older_than_s
        changed, _ = self._execute(
            "UPDATE requests SET result = NULL WHERE state = ? AND result IS NOT NULL AND updated_at < ?",
            (RequestState.WRITTEN.value, cutoff),
        )
        # pieces of results pruned above, or orphaned by a crash between their insert and commit
        self._execute("DELETE FROM result_chunks WHERE entry_id NOT IN "
                      "(SELECT id FROM requests WHERE result IS NOT NULL)")
        self._execute("DELETE FROM uploads WHERE expires_at < ?", (time.time() if now is None else now,))
        return changed

    def result(self, entry_id: int) -> dict[str, Any]:
        """The stored result parsed whole (``{"payload", "attachments"}``): for tools and
        small results; the backend reads :meth:`open_result` as a stream."""
        row = self._one("SELECT result FROM requests WHERE id = ?", (entry_id,))
        if row is None or row["result"] is None:
            raise ValueError(f"journal entry {entry_id} has no stored result")
        data = bytes(row["result"])
        if not data.startswith(RAW_MAGIC):
            return _unpack(data)
        stored = self.open_result(entry_id)
        return {"payload": json.loads(b"".join(stored.chunks())), "attachments": stored.attachments}

    def get(self, entry_id: int) -> Entry:
        row = self._one(f"SELECT {_ENTRY_COLUMNS} FROM requests WHERE id = ?", (entry_id,))
        if row is None:
            raise KeyError(f"no journal entry {entry_id}")
        return _entry(row)

    def latest(self, work_key: str, request_hash: str) -> Entry | None:
        """The newest attempt for this unit of work and request, if any."""
        row = self._one(
            f"SELECT {_ENTRY_COLUMNS} FROM requests WHERE work_key = ? AND request_hash = ? ORDER BY id DESC LIMIT 1",
            (work_key, request_hash),
        )
        return _entry(row) if row is not None else None

    def entries(self, *, states: Iterable[RequestState] | None = None, work_keys: Iterable[str] | None = None,
                work_key_prefix: str | None = None) -> list[Entry]:
        sql, params = f"SELECT {_ENTRY_COLUMNS} FROM requests WHERE 1=1", []
        if states is not None:
            values = [RequestState(s).value for s in states]
            sql += f" AND state IN ({','.join('?' * len(values))})"
            params += values
        if work_keys is not None:
            keys = list(work_keys)
            sql += f" AND work_key IN ({','.join('?' * len(keys))})"
            params += keys
        if work_key_prefix is not None:
            sql += " AND substr(work_key, 1, ?) = ?"
            params += [len(work_key_prefix), work_key_prefix]
        return [_entry(r) for r in self._query(sql + " ORDER BY id", params)]

    def _update(self, entry_id: int, **fields: Any) -> None:
        fields = {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in fields.items()}
        fields["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)
        changed, _ = self._execute(f"UPDATE requests SET {sets} WHERE id = ?", [*fields.values(), entry_id])
        if changed != 1:
            raise KeyError(f"no journal entry {entry_id}")

    # -- uploads ----------------------------------------------------------------------

    def cached_upload(self, sha256: str, size: int, *, now: float | None = None) -> str | None:
        """The URL a file with this content was uploaded to, while fal still keeps it."""
        row = self._one("SELECT url, size, expires_at FROM uploads WHERE sha256 = ?", (sha256,))
        if row is None or row["size"] != size or row["expires_at"] <= (time.time() if now is None else now):
            return None
        return str(row["url"])

    def record_upload(self, sha256: str, size: int, url: str, expires_at: float) -> None:
        self._execute(
            "INSERT OR REPLACE INTO uploads (sha256, size, url, uploaded_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            (sha256, size, url, time.time(), expires_at),
        )

    def forget_upload(self, sha256: str) -> None:
        self._execute("DELETE FROM uploads WHERE sha256 = ?", (sha256,))

    # -- runs -------------------------------------------------------------------------

    def begin_run(self, *, dataset: str, label_field: str, sample_ids: list[str], spec: dict[str, Any]) -> str:
        run_id = uuid.uuid4().hex[:12]
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT INTO runs (run_id, dataset, label_field, spec, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (run_id, dataset, label_field, json.dumps(spec), RunState.RUNNING.value, now, now),
                )
                self._db.executemany(
                    "INSERT INTO run_samples (run_id, sample_id, position, state) VALUES (?, ?, ?, ?)",
                    [(run_id, sid, i, SampleState.PENDING.value) for i, sid in enumerate(sample_ids)],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return run_id

    def set_run_state(self, run_id: str, state: RunState) -> None:
        self._execute("UPDATE runs SET state = ?, updated_at = ? WHERE run_id = ?", (state.value, time.time(), run_id))

    def set_sample_state(self, run_id: str, sample_id: str, state: SampleState, error: str | None = None) -> None:
        self._execute("UPDATE run_samples SET state = ?, error = ? WHERE run_id = ? AND sample_id = ?",
                      (state.value, error, run_id, sample_id))
        self._execute("UPDATE runs SET updated_at = ? WHERE run_id = ?", (time.time(), run_id))

    def run(self, run_id: str) -> RunInfo:
        row = self._one("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if row is None:
            raise KeyError(f"no run {run_id!r} in {self.location}")
        samples = self._query("SELECT sample_id, state, error FROM run_samples WHERE run_id = ? ORDER BY position",
                              (run_id,))
        return RunInfo(
            run_id=row["run_id"], dataset=row["dataset"], label_field=row["label_field"], spec=json.loads(row["spec"]),
            state=RunState(row["state"]), created_at=row["created_at"], updated_at=row["updated_at"],
            samples={s["sample_id"]: SampleState(s["state"]) for s in samples},
            errors={s["sample_id"]: s["error"] for s in samples if s["error"]},
        )

    def runs(self, *, dataset: str | None = None, states: Iterable[RunState] | None = None) -> list[RunInfo]:
        """Runs, newest first."""
        sql, params = "SELECT run_id FROM runs WHERE 1=1", []
        if dataset is not None:
            sql += " AND dataset = ?"
            params.append(dataset)
        if states is not None:
            values = [RunState(s).value for s in states]
            sql += f" AND state IN ({','.join('?' * len(values))})"
            params += values
        ids = [r["run_id"] for r in self._query(sql + " ORDER BY created_at DESC, rowid DESC", params)]
        return [self.run(i) for i in ids]

    # -- webhooks ---------------------------------------------------------------------

    def first_delivery(self, request_id: str) -> bool:
        """True the first time a webhook for ``request_id`` is seen, False for repeats."""
        changed, _ = self._execute("INSERT OR IGNORE INTO webhook_deliveries (request_id, received_at) VALUES (?, ?)",
                                   (request_id, time.time()))
        return changed == 1


_ENTRY_COLUMNS = (
    "id, work_key, request_hash, endpoint, state, request_id, status_url, response_url, cancel_url, payload,"
    " webhook_url, frame_indices, billable_units, error, created_at, updated_at, result IS NOT NULL AS has_result, owner"
)


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(
        id=row["id"], work_key=row["work_key"], request_hash=row["request_hash"], endpoint=row["endpoint"],
        state=RequestState(row["state"]), request_id=row["request_id"], status_url=row["status_url"],
        response_url=row["response_url"], cancel_url=row["cancel_url"], payload=json.loads(row["payload"]),
        webhook_url=row["webhook_url"],
        frame_indices=json.loads(row["frame_indices"]) if row["frame_indices"] is not None else None,
        billable_units=row["billable_units"], error=row["error"], created_at=row["created_at"],
        updated_at=row["updated_at"], has_result=bool(row["has_result"]), owner=row["owner"],
    )
