"""Spool -> store, exactly once, with bad records quarantined instead of lost.

A segment is known by a hash of its bytes (`content_digest`): one already in `ingest_log` is
skipped, so ingesting the same bytes twice (or a segment moved back into the spool) changes nothing.
Segments are ingested in batches, one transaction per batch, and all per-record work happens in
DuckDB. Two input formats: the SDK's Arrow IPC segments (`*.arrow`), which Python only opens
(zero-copy) and checks against the schema, and JSON lines (`*.jsonl`, other writers, ATIF
converted), which Python only splits into lines (numpy finds the newlines; the lines become one
zero-copy Arrow string column over the segment's bytes) and checks for UTF-8 in one call per
segment. A file that is not a readable Arrow segment is quarantined whole, with its bytes.
Parsing, validation, the quarantine reasons and the inserts are the SQL blocks in
`storage/sql/ingest.sql`. Stored data is never changed by a later record: a start, step or
outcome that conflicts with a stored one (or with an earlier one in the same batch) goes to
quarantine with a reason naming what it conflicts with; an identical copy changes nothing.
`ingest_segments` can open the store once per batch (`Writer`), so readers wait for one batch at
most, not a whole ingest. On the shared store (DuckLake, `storage/lake.py`) several ingest workers
run at once: each batch first claims its segments (`storage.store.claimed`), has no primary keys
to lean on (duplicates are always looked for), and runs again when a concurrent commit conflicts. How records map to tables is in `agents/sdk.py`'s docstring and
there.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import os
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from importlib import resources
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import xxhash

from storage import lake
from storage.spool import (
    JSON_COLUMNS,
    REJECTED_SUFFIX,
    SCHEMA,
    SEGMENT_SUFFIX,
    SEGMENT_SUFFIXES,
    SegmentError,
    read_segment,
)
from storage.store import StoreError, claimed, has_keys

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


def _blocks() -> list[tuple[str, str]]:
    text = resources.files("storage.sql").joinpath("ingest.sql").read_text()
    parts = re.split(r"^-- name: (\w+)\n", text, flags=re.M)
    return list(zip(parts[1::2], parts[2::2], strict=True))


_BLOCKS = _blocks()
_BLOCK_SQL = dict(_BLOCKS)
# The checked records may be in any order (every later block that cares sorts by (seg,
# line_no)); that lets DuckDB skip re-sequencing its parallel output, ~15% of the block (half of
# `check_arrow`). The setting is the database's, so it is restored right after.
_UNORDERED = {"check", "check_arrow"}
# Blocks run only when called for, not in sequence: the JSONL check's macros; the stand-ins for
# `checked`, `duplicates` and `quarantine` in a batch that does not need them; and the test
# that lets a batch with nothing to quarantine skip `quarantine` (it plans every input table).
_ON_DEMAND = {"macros", "checked_clean", "no_duplicates", "any_bad", "no_bad"}
_LINES_SCHEMA = pa.schema([("seg", pa.int32()), ("line_no", pa.int32()), ("line", pa.large_string())])
_ROWS_SCHEMA = pa.schema([("seg", pa.int32()), ("line_no", pa.int32()), ("nbytes", pa.int64()), *SCHEMA])
_TEXT_COLUMNS = (*JSON_COLUMNS, "error")
# Arrow records go to SQL as one table per record type, so a block that wants the trajectory
# starts never plans or scans the steps; `raw_other` has the rows whose type is missing or unknown.
_RECORD_TYPES = ("trajectory", "step", "outcome")
_ROW_TABLES = {"trajectory": "raw_starts", "step": "raw_steps", "outcome": "raw_outcomes", None: "raw_other"}


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


def _segment_lines(seg_id: int, segment: Segment) -> tuple[pa.Table, list[tuple[int, bytes, str]]]:
    lines, line_no = split_lines(segment.data)
    rejected = list(segment.rejected)
    try:
        lines.validate(full=True)  # UTF-8 check of the whole segment in one C call
    except pa.ArrowInvalid:
        lines, line_no, bad = _utf8_lines(segment.data)
        rejected += bad
    table = pa.table({
        "seg": _arrow(np.full(len(lines), seg_id, np.int32)),
        "line_no": _arrow(line_no),
        "line": lines,
    })
    return table, rejected


def _segment_rows(seg_id: int, segment: Segment
                  ) -> tuple[pa.Table | None, list[tuple[int | None, bytes, str]]]:
    table = segment.rows
    if table is None:
        return None, list(segment.rejected)
    n = table.num_rows
    table = table.add_column(0, "nbytes", _arrow(_text_bytes(table)))
    table = table.add_column(0, "line_no", _arrow(np.arange(1, n + 1, dtype=np.int32)))
    table = table.add_column(0, "seg", _arrow(np.full(n, seg_id, np.int32)))
    return table, list(segment.rejected)


def _text_bytes(table: pa.Table) -> np.ndarray:
    """Each record's bytes of free-form text (the JSON columns and error), what the size limit
    counts: from the columns' offsets, a few numpy calls instead of a strlen per value in SQL."""
    total = np.zeros(table.num_rows, np.int64)
    for name in _TEXT_COLUMNS:
        start = 0
        for chunk in table.column(name).chunks:
            n = len(chunk)
            if chunk.null_count < n:
                text = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk  # pa.string()
                lengths = np.diff(_offsets(text))
                if text.null_count:  # a null's offsets may span bytes: count only valid values
                    bits = np.unpackbits(np.frombuffer(text.buffers()[0], np.uint8),
                                         count=text.offset + n, bitorder="little")
                    lengths = lengths * bits[text.offset:]
                total[start:start + n] += lengths
            start += n
    return total


def _offsets(text: pa.StringArray) -> np.ndarray:
    """A string array's value offsets into its data buffer (n + 1 of them), zero-copy."""
    return np.frombuffer(text.buffers()[1], np.int32)[text.offset:text.offset + len(text) + 1]


def _split_by_type(tables: dict[int, pa.Table]
                   ) -> tuple[dict[str | None, pa.Table], collections.Counter[tuple[int, str | None]]]:
    """Arrow records by their `type`, keyed as `_ROW_TABLES`, zero-copy: the SDK writes one record
    batch per type, so a batch usually moves whole; one that mixes types is cut into runs. Also
    how many records of each type each segment has, by (seg, type).
    (No pyarrow.compute: its first call costs a sixth of a second.)"""
    parts: dict[str | None, list[pa.RecordBatch]] = {t: [] for t in _ROW_TABLES}
    counts: collections.Counter[tuple[int, str | None]] = collections.Counter()
    for seg, table in tables.items():
        for batch in table.to_batches():
            rtype = _only_type(batch.column("type"))
            if rtype is not None:
                runs = [(rtype, batch)]
            else:
                runs, start = [], 0
                for value, run in itertools.groupby(batch.column("type").to_pylist()):
                    n = len(list(run))
                    runs.append((value if value in _RECORD_TYPES else None, batch.slice(start, n)))
                    start += n
            for rtype, rows in runs:
                parts[rtype].append(rows)
                counts[seg, rtype] += len(rows)
    tables_by_type = {t: pa.Table.from_batches(b, _ROWS_SCHEMA) if b else _empty(_ROWS_SCHEMA)
                      for t, b in parts.items()}
    return tables_by_type, counts


def _only_type(types: pa.StringArray) -> str | None:
    """The record type every row of a batch has, if they all have the same known one."""
    if not len(types) or types.null_count:
        return None
    first = types[0].as_py()
    ends = _offsets(types)
    whole = memoryview(types.buffers()[2])[ends[0]:ends[-1]]
    if first in _RECORD_TYPES and bytes(whole) == first.encode() * len(types):
        return first
    return None


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


class _DuplicateKeys(Exception):
    """A primary key refused a batch that was not checked for duplicate steps or starts."""


def _ingest_batch(con: duckdb.DuckDBPyConnection, batch: list[Segment], max_record_bytes: int
                  ) -> IngestReport:
    start = time.perf_counter()
    has_lines = _register_inputs(con, batch)
    try:
        if not has_keys(con):  # DuckLake: no key to refuse a duplicate, and concurrent writers
            report = lake.retry_conflicts(lambda: _run_blocks(
                con, batch, has_lines, max_record_bytes, find_duplicates=True, serialize_new_keys=True),
                f"ingest of {len(batch)} segment(s)")
        else:
            try:
                report = _run_blocks(con, batch, has_lines, max_record_bytes, find_duplicates=False)
            except _DuplicateKeys:  # rare: rolled back, so again, now looking for the duplicates
                report = _run_blocks(con, batch, has_lines, max_record_bytes, find_duplicates=True)
    finally:
        con.unregister("raw_lines")
        for name in _ROW_TABLES.values():
            con.unregister(name)
        con.execute("DROP TABLE IF EXISTS raw_bad; DROP TABLE IF EXISTS raw_segs")
    report.seconds = time.perf_counter() - start
    return report


def _run_blocks(con: duckdb.DuckDBPyConnection, batch: list[Segment], has_lines: bool,
                max_record_bytes: int, *, find_duplicates: bool, serialize_new_keys: bool = False
                ) -> IngestReport:
    """The SQL blocks over the registered batch, in one transaction. Raises _DuplicateKeys when
    not `find_duplicates` and the batch has a step or a trajectory start twice (rolled back).
    `serialize_new_keys`: a batch that adds agents or tasks says so to concurrent ones (DuckLake)."""
    report = IngestReport(segments=len(batch))
    new_keys = 0
    keep_order = con.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0][0]
    clean = not has_lines  # Arrow records only, none with a reason (known after check_arrow)
    con.execute("BEGIN")
    try:
        for name, sql in _BLOCKS:
            if name in _ON_DEMAND or (name == "check" and not has_lines):
                continue
            if name == "checked" and clean:
                sql = _BLOCK_SQL["checked_clean"]
            elif name == "duplicates" and not find_duplicates:
                sql = _BLOCK_SQL["no_duplicates"]
            elif name == "quarantine" and not con.execute(_BLOCK_SQL["any_bad"]).fetchall()[0][0]:
                sql = _BLOCK_SQL["no_bad"]
            params = {"max_bytes": max_record_bytes} if "$max_bytes" in sql else None
            if name in _UNORDERED:
                con.execute("SET preserve_insertion_order = false")
            try:
                rows = con.execute(sql, params).fetchall()  # drained: leaves the connection free
            finally:
                if name in _UNORDERED:
                    con.execute(f"SET preserve_insertion_order = {keep_order}")
            if name == "check_arrow":
                clean = clean and rows[0][0] == 0
            elif name in ("insert_agents", "insert_tasks"):
                new_keys += rows[0][0]
            elif name == "insert_trajectories":
                report.trajectories = rows[0][0]
            elif name == "insert_steps":
                report.steps = rows[0][0]
            elif name == "quarantine":
                report.quarantined = rows[0][0] if rows else 0  # the insert's count; none: no_bad
        if serialize_new_keys and new_keys:
            lake.serialize_new_keys(con)
        con.execute("COMMIT").fetchall()
    except duckdb.Error as err:
        with contextlib.suppress(duckdb.TransactionException):  # a failed COMMIT ended it already
            con.execute("ROLLBACK").fetchall()
        if isinstance(err, duckdb.ConstraintException) and not find_duplicates:
            raise _DuplicateKeys from err
        sources = ", ".join(s.source for s in batch[:3]) + (" ..." if len(batch) > 3 else "")
        raise StoreError(f"ingest of {len(batch)} segment(s) ({sources}) failed and was rolled "
                         f"back; nothing was stored: {err}") from err
    return report


def _register_inputs(con: duckdb.DuckDBPyConnection, batch: list[Segment]) -> bool:
    """The batch as the SQL blocks' inputs (`storage/sql/ingest.sql` lists them); whether it has
    any JSONL lines."""
    lines, records, bad_rows, n_records = [], {}, [], []
    for seg_id, segment in enumerate(batch):
        if segment.format == "arrow":
            table, rejected = _segment_rows(seg_id, segment)
            if table is not None:
                records[seg_id] = table
        else:
            table, rejected = _segment_lines(seg_id, segment)
            lines.append(table)
        n_records.append(0 if table is None else table.num_rows)
        bad_rows += [(seg_id, n, raw, reason) for n, raw, reason in rejected]
    con.register("raw_lines", pa.concat_tables(lines) if lines else _empty(_LINES_SCHEMA))
    by_type, arrow_counts = _split_by_type(records)
    for rtype, table in by_type.items():
        con.register(_ROW_TABLES[rtype], table)
    # The two small inputs go in as query parameters: `pa.array` of Python values would import
    # pandas (a fifth of a second) in a process that has not yet.
    seg, line_no, raw, reason = zip(*bad_rows, strict=True) if bad_rows else ([], [], [], [])
    con.execute("""CREATE OR REPLACE TEMP TABLE raw_bad AS SELECT unnest($seg::INTEGER[]) AS seg,
                   unnest($line_no::INTEGER[]) AS line_no, unnest($raw::BLOB[]) AS raw,
                   unnest($reason::VARCHAR[]) AS reason""",
                {"seg": list(seg), "line_no": list(line_no), "raw": list(raw), "reason": list(reason)})
    con.execute("""CREATE OR REPLACE TEMP TABLE raw_segs AS
                   SELECT unnest(range(len($hash::VARCHAR[])))::INTEGER AS seg, unnest($hash::VARCHAR[])
                   AS segment_hash, unnest($source::VARCHAR[]) AS source, unnest($format::VARCHAR[]) AS format,
                   unnest($n_records::INTEGER[]) AS n_records, unnest($starts::INTEGER[]) AS arrow_starts,
                   unnest($steps::INTEGER[]) AS arrow_steps""",
                {"hash": [s.digest for s in batch], "source": [s.source for s in batch],
                 "format": [s.format for s in batch], "n_records": n_records,
                 "starts": [arrow_counts[seg, "trajectory"] for seg in range(len(batch))],
                 "steps": [arrow_counts[seg, "step"] for seg in range(len(batch))]})
    if lines:  # the JSONL check's helpers (temp macros: the connection's, made again each batch)
        con.execute(_BLOCK_SQL["macros"]).fetchall()
    return bool(lines)


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
            report = _ingest_batch(writer, fresh, max_record_bytes) if fresh else None
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
    from storage.spool import read_published

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
    from storage.spool import move_published, published_segments, remove_stale_tmp

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
