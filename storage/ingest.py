"""Spool -> store, exactly once, with bad records quarantined instead of lost.

A segment is known by a hash of its bytes (`content_digest`): one already in `ingest_log` is
skipped, so ingesting the same bytes twice (or a segment moved back into the spool) changes nothing.
Segments are ingested in batches, one transaction per batch, and all per-record work happens in
DuckDB. Two input formats: the SDK's Arrow IPC segments (`*.arrow`), which Python only opens
(zero-copy) and checks against the schema, and JSON lines (`*.jsonl`, other writers, ATIF
converted), which Python only splits into lines (numpy finds the newlines; the lines become one
zero-copy Arrow string column over the segment's bytes) and checks for UTF-8 in one call per
segment. A file that is not a readable Arrow segment is quarantined whole, with its bytes.
Parsing, validation, the quarantine reasons and the inserts are the named SQL steps of
`storage/sql/ingest.sql`; `ingest_batch` runs them in order, top to bottom. Stored data is never
changed by a later record: a start, step or outcome that conflicts with a stored one (or with an
earlier one in the same batch) goes to quarantine with a reason naming what it conflicts with;
an identical copy changes nothing.
`ingest_segments` can open the store once per batch (`Writer`), so readers wait for one batch at
most, not a whole ingest. On the shared store (DuckLake, `storage/lake.py`) several ingest workers
run at once: each batch first claims its segments (`storage.store.claimed`), has no primary keys
to lean on (duplicates are always looked for), and runs again when a concurrent commit conflicts. How records map to tables is in `agents/sdk.py`'s docstring and
there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import xxhash

from storage import lake
from storage.spool import (
    REJECTED_SUFFIX,
    SCHEMA,
    SEGMENT_SUFFIX,
    SEGMENT_SUFFIXES,
    SegmentError,
    move_published,
    published_segments,
    read_published,
    read_segment,
    remove_stale_tmp,
)
from storage.store import StoreError, claimed, has_keys, sql_blocks

MAX_RECORD_BYTES = 1 << 20   # a record larger than this is quarantined as oversized
BATCH_BYTES = 64 << 20       # segments per transaction: bounded memory, few commits
INGESTED_DIR = "ingested"    # where ingested segments go, so the next scan is cheap
_ARROW_MAGIC = b"ARROW1"     # how an Arrow IPC file starts


@dataclasses.dataclass
class IngestReport:
    segments: int = 0        # segments (files) ingested now
    skipped: int = 0         # segments already in the store (same bytes)
    trajectories: int = 0    # new trajectories
    steps: int = 0           # new steps
    quarantined: int = 0     # records sent to quarantine
    held: int = 0            # segments another ingest worker was ingesting (the shared store): its own
    seconds: float = 0.0

    def __iadd__(self, other: IngestReport) -> IngestReport:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        return self


@dataclasses.dataclass
class Segment:
    """One unit of input: the bytes to ingest and where they came from."""

    source: str
    data: bytes | pa.Buffer  # a Buffer: an Arrow segment mapped from its file
    format: str = "grokloop"  # grokloop (JSONL records) | arrow (the SDK's segments) | atif
    # Identity: the input's bytes. For a converted file (ATIF) that is the original file's bytes.
    digest: str = ""
    # (line_no, raw bytes, reason) rejected before SQL: lines that are not UTF-8, ATIF that
    # cannot be mapped, an Arrow file that cannot be read (line_no None: the whole file).
    rejected: list[tuple[int | None, bytes, str]] = dataclasses.field(default_factory=list)
    # An Arrow segment's records, read and checked when the segment is made (so the spool reader
    # does it on every core, beside the hash); None if the file is not a readable segment.
    rows: pa.Table | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        self.digest = self.digest or content_digest(self.data)
        if self.format == "arrow" and self.rows is None:
            try:
                self.rows = read_segment(self.data, self.source)
            except SegmentError as err:
                self.rejected.append((None, bytes(self.data), str(err)))


def content_digest(data: bytes | pa.Buffer) -> str:
    """A segment's identity: the xxh3-128 hash of its bytes, as hex. Not a cryptographic hash (the
    spool's writers are not adversaries; among 2**32 segments, the chance that any two collide is
    about 2**-65), and 15 times sha256's speed: sha256 was a tenth of a large batch's ingest."""
    return xxhash.xxh3_128_hexdigest(data)


_SQL = sql_blocks("ingest.sql")  # the named steps, run by `ingest_batch`
_LINES_SCHEMA = pa.schema([("seg", pa.int32()), ("line_no", pa.int32()), ("line", pa.large_string())])
_ROWS_SCHEMA = pa.schema([("seg", pa.int32()), ("line_no", pa.int32()), *SCHEMA])
# The Arrow records' tables, by record type (None: a type missing or unknown).
_ROW_TABLES = {"trajectory": "raw_starts", "step": "raw_steps", "outcome": "raw_outcomes", None: "raw_other"}


def ingest_batch(con: duckdb.DuckDBPyConnection, batch: list[Segment], max_record_bytes: int
                 ) -> IngestReport:
    """One batch of new segments into the store, in one transaction: the named steps of
    `storage/sql/ingest.sql`, in order. Any error rolls the whole batch back (nothing stored).
    On the shared store (DuckLake) other ingest workers commit meanwhile: a batch whose commit
    conflicts with theirs runs again on a fresh snapshot (`lake.retry_conflicts`)."""
    if has_keys(con):
        return _ingest_batch(con, batch, max_record_bytes, shared=False)
    return lake.retry_conflicts(lambda: _ingest_batch(con, batch, max_record_bytes, shared=True),
                                f"ingest of {len(batch)} segment(s)")


def _ingest_batch(con: duckdb.DuckDBPyConnection, batch: list[Segment], max_record_bytes: int,
                  *, shared: bool) -> IngestReport:
    start = time.perf_counter()
    report = IngestReport(segments=len(batch))

    def run(step: str, **params) -> int:
        rows = con.execute(_SQL[step], params or None).fetchall()  # drained: leaves the connection free
        return rows[0][0] if rows else 0  # an insert's row count

    con.execute("BEGIN")
    try:
        has_lines = _stage(con, batch)                  # the raw_* inputs
        run("checked_lines")                            # empty
        if has_lines:  # planning the JSONL check takes 30 ms of CPU, lines or not (a 1,000-step batch: 80)
            run("json_macros")
            run("check_lines", max_bytes=max_record_bytes)  # JSONL: parse, type, reason
        n_bad = run("check_arrow", max_bytes=max_record_bytes)  # Arrow: the rows with a reason
        run("arrow_records")                            # Arrow columns as the checked columns
        if has_lines or n_bad:
            run("checked")                              # every record by type, with its reason
        else:  # the usual batch: a sixth less SQL time for 1,000 steps (ingest.sql)
            run("checked_arrow_only")
        run("duplicates")                               # the same key twice in the batch
        run("stored_conflicts")                         # a key already stored, with other content
        run("outcomes")                                 # which outcome completes which trajectory
        new_keys = run("insert_agents") + run("insert_tasks")
        if shared and new_keys:  # DuckLake has no keys: batches that add agents or tasks conflict
            lake.serialize_new_keys(con)
        report.trajectories = run("insert_trajectories")
        run("complete_trajectories")                    # outcomes for trajectories stored earlier
        report.steps = run("insert_steps")
        report.quarantined = run("quarantine")
        run("record_segments")                          # ingest_log: exactly once by digest
        run("cleanup")
        con.execute("COMMIT").fetchall()
    except BaseException as err:
        with contextlib.suppress(duckdb.TransactionException):  # a failed COMMIT ended it already
            con.execute("ROLLBACK").fetchall()
        if not isinstance(err, duckdb.Error):
            raise
        sources = ", ".join(s.source for s in batch[:3]) + (" ..." if len(batch) > 3 else "")
        raise StoreError(f"ingest of {len(batch)} segment(s) ({sources}) failed and was rolled "
                         f"back; nothing was stored: {err}") from err
    finally:
        for name in ("raw_lines", *_ROW_TABLES.values()):
            con.unregister(name)
    report.seconds = time.perf_counter() - start
    return report


def _stage(con: duckdb.DuckDBPyConnection, batch: list[Segment]) -> bool:
    """The batch as the SQL steps' inputs (`storage/sql/ingest.sql` lists them); whether it has
    any JSONL lines."""
    lines, rows, bad, n_records = [], [], [], []
    for seg_id, segment in enumerate(batch):
        rejected = list(segment.rejected)
        if segment.format == "arrow":
            table = _segment_rows(seg_id, segment)
            if table is not None:
                rows.append(table)
        else:
            table, not_utf8 = _segment_lines(seg_id, segment)
            lines.append(table)
            rejected += not_utf8
        n_records.append(0 if table is None else table.num_rows)
        bad += [(seg_id, n, raw, reason) for n, raw, reason in rejected]
    con.register("raw_lines", pa.concat_tables(lines) if lines else _empty(_LINES_SCHEMA))
    for name, table in _by_type(rows).items():
        con.register(name, table)
    # The two small inputs go in as query parameters: `pa.array` of Python values would import
    # pandas (a fifth of a second) in a process that has not yet.
    seg, line_no, raw, reason = zip(*bad, strict=True) if bad else ([], [], [], [])
    con.execute("""CREATE OR REPLACE TEMP TABLE raw_bad AS SELECT unnest($seg::INTEGER[]) AS seg,
                   unnest($line_no::INTEGER[]) AS line_no, unnest($raw::BLOB[]) AS raw,
                   unnest($reason::VARCHAR[]) AS reason""",
                {"seg": list(seg), "line_no": list(line_no), "raw": list(raw), "reason": list(reason)})
    con.execute("""CREATE OR REPLACE TEMP TABLE raw_segs AS
                   SELECT unnest(range(len($hash::VARCHAR[])))::INTEGER AS seg, unnest($hash::VARCHAR[])
                   AS segment_hash, unnest($source::VARCHAR[]) AS source, unnest($format::VARCHAR[]) AS format,
                   unnest($n_records::INTEGER[]) AS n_records""",
                {"hash": [s.digest for s in batch], "source": [s.source for s in batch],
                 "format": [s.format for s in batch], "n_records": n_records})
    return bool(lines)


def _segment_lines(seg_id: int, segment: Segment) -> tuple[pa.Table, list[tuple[int, bytes, str]]]:
    """A JSONL segment's non-blank lines as (seg, line_no, line), and the lines that are not UTF-8."""
    lines, line_no = split_lines(segment.data)
    bad = []
    try:
        lines.validate(full=True)  # UTF-8 check of the whole segment in one C call
    except pa.ArrowInvalid:
        lines, line_no, bad = _utf8_lines(segment.data)
    table = pa.table({
        "seg": _arrow(np.full(len(lines), seg_id, np.int32)),
        "line_no": _arrow(line_no),
        "line": lines,
    })
    return table, bad


def _segment_rows(seg_id: int, segment: Segment) -> pa.Table | None:
    """An Arrow segment's records with (seg, line_no) in front; None for an unreadable file."""
    table = segment.rows
    if table is None:
        return None
    n = table.num_rows
    table = table.add_column(0, "line_no", _arrow(np.arange(1, n + 1, dtype=np.int32)))
    return table.add_column(0, "seg", _arrow(np.full(n, seg_id, np.int32)))


def _by_type(tables: list[pa.Table]) -> dict[str, pa.Table]:
    """The Arrow records as one table per record type, by `_ROW_TABLES` name, zero-copy. The SDK
    writes one record batch per type, so a batch usually moves whole; one that mixes types (another
    writer's) is cut into runs of one type."""
    parts: dict[str | None, list[pa.RecordBatch]] = {t: [] for t in _ROW_TABLES}
    for table in tables:
        for batch in table.to_batches():
            rtype = _batch_type(batch.column("type"))
            if rtype is not None:
                parts[rtype].append(batch)
                continue
            start = 0
            for value, run in itertools.groupby(batch.column("type").to_pylist()):
                n = len(list(run))
                parts[value if value in _ROW_TABLES else None].append(batch.slice(start, n))
                start += n
    return {_ROW_TABLES[t]: pa.Table.from_batches(b, _ROWS_SCHEMA) if b else _empty(_ROWS_SCHEMA)
            for t, b in parts.items()}


def _batch_type(types: pa.StringArray) -> str | None:
    """The record type of every row, when all rows have the same known one: every value as long as
    the first and their bytes the first's repeated. (Numpy over the buffers, not pyarrow.compute:
    its first call costs a quarter of a second of CPU, which a small `grokloop ingest` would pay.)"""
    if not len(types) or types.null_count or types[0].as_py() not in _ROW_TABLES:
        return None
    first = types[0].as_py().encode()
    offsets = np.frombuffer(types.buffers()[1], np.int32)[types.offset:types.offset + len(types) + 1]
    data = types.buffers()[2].to_pybytes()[offsets[0]:offsets[-1]]
    same = (np.diff(offsets) == len(first)).all() and data == first * len(types)
    return first.decode() if same else None


def _arrow(values: np.ndarray) -> pa.Array:
    """A numpy array as Arrow, zero-copy. (`pa.array(ndarray)` would import pandas first: a fifth
    of a second on the first call, billed to the ingest.)"""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _empty(schema: pa.Schema) -> pa.Table:
    """No rows, in one chunk: DuckDB registers a table with no chunks at all (`empty_table()`)
    by way of pandas, which it imports first."""
    return pa.Table.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


def split_lines(data: bytes) -> tuple[pa.Array, np.ndarray]:
    """The non-blank lines of `data` (each with its newline) as an Arrow string array, and their
    1-based line numbers. Zero-copy: the array's offsets point into `data`."""
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1
    if data and not data.endswith(b"\n"):
        ends = np.append(ends, len(data))
    offsets = np.concatenate(([0], ends)).astype(np.int64)
    lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(data))
    line_no = np.arange(1, len(ends) + 1, dtype=np.int32)
    blank = np.diff(offsets) <= 1
    if blank.any():
        keep = np.flatnonzero(~blank)
        lines, line_no = lines.take(_arrow(keep)), line_no[keep]
    return lines, line_no


def _utf8_lines(data: bytes) -> tuple[pa.Array, np.ndarray, list[tuple[int, bytes, str]]]:
    """The slow path for a segment with bytes that are not UTF-8: line by line."""
    good, numbers, bad = [], [], []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw:
            continue
        try:
            good.append(raw.decode("utf-8") + "\n")
            numbers.append(number)
        except UnicodeDecodeError as err:
            bad.append((number, raw, f"not UTF-8: {err.reason} at byte {err.start}"))
    return pa.array(good, pa.large_string()), np.array(numbers, np.int32), bad


def _already_ingested(con: duckdb.DuckDBPyConnection, digests: list[str]) -> set[str]:
    rows = con.execute(
        "SELECT segment_hash FROM ingest_log WHERE segment_hash IN (SELECT unnest(?::VARCHAR[]))",
        [digests],
    ).fetchall()
    return {r[0] for r in rows}


# Where ingest writes: a connection, or a function that opens one (e.g. `lambda:
# open_store(timeout=60)`), called once per batch so the store's write lock is held one batch at
# a time and readers get in between (storage/store.py says why).
Writer = duckdb.DuckDBPyConnection | Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


def _writing(con: Writer) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
    return contextlib.nullcontext(con) if isinstance(con, duckdb.DuckDBPyConnection) else con()


def ingest_segments(
    con: Writer,
    segments: Iterable[Segment],
    *,
    max_record_bytes: int = MAX_RECORD_BYTES,
    batch_bytes: int = BATCH_BYTES,
    on_batch: Callable[[list[Segment], IngestReport], None] | None = None,
) -> IngestReport:
    """Ingest segments not yet in the store, one transaction per batch of about `batch_bytes`.

    `on_batch(segments, report)` is called after each batch commits, and also for segments
    skipped as already ingested (with an empty report), e.g. to move them or show progress."""
    if max_record_bytes <= 0:
        raise ValueError(f"max_record_bytes must be positive, got {max_record_bytes}")
    total = IngestReport()
    start = time.perf_counter()
    batch: list[Segment] = []
    seen: set[str] = set()
    refused: set[str] = set()  # the shared store: producers another worker was ingesting

    def flush() -> None:
        nonlocal batch
        if not batch:
            return
        with _writing(con) as writer, claimed(writer, [(s.digest, s.source) for s in batch], refused) as mine:
            total.held += sum(s.digest not in mine for s in batch)  # left to the worker holding them
            batch = [s for s in batch if s.digest in mine]
            known = _already_ingested(writer, [s.digest for s in batch])
            fresh = [s for s in batch if s.digest not in known]
            report = ingest_batch(writer, fresh, max_record_bytes) if fresh else None
        skipped = [s for s in batch if s.digest in known]
        total.skipped += len(skipped)
        if skipped and on_batch:
            on_batch(skipped, IngestReport(skipped=len(skipped)))
        if fresh:
            total.__iadd__(dataclasses.replace(report, seconds=0.0))
            if on_batch:
                on_batch(fresh, report)
        batch = []

    size = 0
    for segment in segments:
        if segment.digest in seen:  # the same bytes twice in one call
            total.skipped += 1
            if on_batch:
                on_batch([segment], IngestReport(skipped=1))
            continue
        seen.add(segment.digest)
        batch.append(segment)
        size += len(segment.data)
        if size >= batch_bytes:
            flush()
            size = 0
    flush()
    total.seconds = time.perf_counter() - start
    return total


def rejected_segment(source: str, data: bytes) -> Segment:
    """A `.rejected` file (agents/spool.py: a reason line, then the bytes that did not decode) as a
    segment whose only record is those bytes, quarantined with that reason."""
    reason, _, raw = data.partition(b"\n")
    reason = reason.decode("utf-8", errors="replace") or "rejected"
    return Segment(source=source, data=b"", format="rejected", digest=content_digest(data),
                   rejected=[(None, raw, reason)])


def _read_segment_file(path: Path | str) -> Segment | None:
    name = str(path).rsplit("/", 1)[-1]
    arrow = name.endswith(SEGMENT_SUFFIX)
    try:
        # An Arrow segment is mapped, not copied: the hash, the parse and DuckDB's scan all read
        # the mapped bytes (zero-copy); a copy into fresh memory would cost more than the hash.
        # A segment on object storage (a URL) is read whole.
        data = read_published(path) if arrow or isinstance(path, str) else path.read_bytes()
    except FileNotFoundError:
        return None  # another ingest moved it away meanwhile
    if name.endswith(REJECTED_SUFFIX):
        return rejected_segment(name, data)
    return Segment(source=name, data=data, format="arrow" if arrow else "grokloop")


def _read_spool(paths: list[Path] | list[str], chunk: int = 16) -> Iterable[Segment]:
    """The segments in order, read, hashed and parsed a few at a time on every core (parsing an
    Arrow segment lets go of the GIL)."""
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for start in range(0, len(paths), chunk):
            yield from filter(None, pool.map(_read_segment_file, paths[start:start + chunk]))


def ingest_spool(
    con: Writer,
    spool: Path | str | None = None,
    *,
    max_record_bytes: int = MAX_RECORD_BYTES,
    batch_bytes: int = BATCH_BYTES,
    on_batch: Callable[[list[Segment], IngestReport], None] | None = None,
) -> IngestReport:
    """Ingest every published spool segment not yet in the store, then move them to
    `spool/ingested/`. Half-written `.tmp` files are left alone while their writer may be at work;
    stale ones (old, writer gone: `agents.spool.remove_stale_tmp`) are removed. The spool may be
    a URL (`s3://bucket/prefix/spool`): its objects are listed and read the same way."""
    from storage.home import spool_location

    spool = spool_location(spool)
    remove_stale_tmp(spool)
    by_name = {str(p).rsplit("/", 1)[-1]: p for p in published_segments(spool)}

    def move(segments: list[Segment], report: IngestReport) -> None:
        for segment in segments:
            with contextlib.suppress(FileNotFoundError):  # another ingest worker moved it first
                move_published(by_name[segment.source], INGESTED_DIR)
        if on_batch:
            on_batch(segments, report)

    return ingest_segments(con, _read_spool(list(by_name.values())), max_record_bytes=max_record_bytes,
                           batch_bytes=batch_bytes, on_batch=move)


def detect_format(data: bytes) -> str:
    """'arrow' (the SDK's segments), 'grokloop' (our JSONL records) or 'atif' (one ATIF
    trajectory as JSON, a JSON list of them, or ATIF JSONL), from the first bytes / record."""
    import orjson

    if data.startswith(_ARROW_MAGIC):
        return "arrow"
    head = data.lstrip()
    if head.startswith(b"["):
        return "atif"
    first = head.split(b"\n", 1)[0]
    try:
        record = orjson.loads(first)
    except orjson.JSONDecodeError:
        return "atif" if head.startswith(b"{") else "grokloop"  # a pretty-printed ATIF file
    if isinstance(record, dict) and record.get("type") in ("trajectory", "step", "outcome"):
        return "grokloop"
    if isinstance(record, dict) and ("steps" in record or "schema_version" in record):
        return "atif"
    return "grokloop"  # let validation say what is wrong with it


def _input_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (*SEGMENT_SUFFIXES, ".json") and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise StoreError(f"no such file or directory: {path}")
    return files


def ingest_paths(
    con: Writer,
    paths: list[Path],
    format: str = "auto",
    *,
    max_record_bytes: int = MAX_RECORD_BYTES,
    on_batch: Callable[[list[Segment], IngestReport], None] | None = None,
) -> IngestReport:
    """Ingest files (or directories of `*.arrow` / `*.jsonl` / `*.json`) written by grokloop
    (Arrow segments or JSONL records; `format="grokloop"` means either) or by another framework
    in ATIF. Each file is one segment: the same file twice changes nothing."""
    from storage.atif import atif_segment

    if format not in ("auto", "grokloop", "atif"):
        raise ValueError(f"unknown format {format!r}: expected auto, grokloop or atif")
    files = _input_files(paths)

    def segments() -> Iterable[Segment]:
        for path in files:
            data = path.read_bytes()
            if format != "atif" and (path.suffix == SEGMENT_SUFFIX or data.startswith(_ARROW_MAGIC)):
                kind = "arrow"  # by its name too: a damaged .arrow file is quarantined whole
            else:
                kind = detect_format(data) if format == "auto" else format
            source = str(path.resolve())
            if path.suffix == REJECTED_SUFFIX:
                yield rejected_segment(source, data)
            elif kind == "atif":
                yield atif_segment(source, data)
            else:
                yield Segment(source=source, data=data, format="arrow" if kind == "arrow" else "grokloop")

    return ingest_segments(con, segments(), max_record_bytes=max_record_bytes, on_batch=on_batch)
