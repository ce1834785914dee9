"""The spool: how agent processes hand records to ingest without opening the store.

Each flush publishes one new segment file: the bytes go to `<name>.arrow.tmp`, are fsync'ed, then
renamed to `<name>.arrow` (atomic on POSIX), so ingest, which reads only published names, never
sees half a segment, and a process killed with SIGKILL loses at most what it had not flushed.
Names start with a time-ordered UUID (UUIDv7), so sorting names sorts one process's segments in
write order. A spool may also be a URL (`s3://bucket/prefix/spool`, any fsspec filesystem): there a
segment is one object, uploaded whole under its final name.

A segment the SDK writes (`agents/sdk.py`) is an Arrow IPC file with `SCHEMA`: a `type` column and
the union of the three record types' columns (`RECORDS`), one record batch per type. Free-form
values are JSON text typed as Arrow's JSON extension (`arrow.json`); other writers' records come
as JSON lines (`*.jsonl`, the same field names, `read_records` shows the shape).
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import uuid6

from storage.home import is_url, local_path

SEGMENT_SUFFIX = ".arrow"    # what the SDK writes
JSONL_SUFFIX = ".jsonl"      # one JSON record per line: other writers, files from other tools
# Input that arrived but did not decode (the collector's): the reason on the first line, then the
# bytes as received; ingest quarantines it whole, with that reason.
REJECTED_SUFFIX = ".rejected"
SEGMENT_SUFFIXES = (SEGMENT_SUFFIX, JSONL_SUFFIX, REJECTED_SUFFIX)
TMP_SUFFIX = ".tmp"          # a segment still being written (or whose writer died)
STALE_SECONDS = 3600.0       # a .tmp this old, whose writer is gone, is litter (remove_stale_tmp)

FORMAT_VERSION = 1           # the records, in either format ("v" of a JSON line)
# The Arrow layout, in the file's metadata. 1: free-form values as plain strings; 2: as `arrow.json`;
# 3: adds the usage columns (`USAGE_COLUMNS`), read as null from an older segment.
SEGMENT_VERSION = 3
_READABLE_SEGMENT_VERSIONS = (b"1", b"2", b"3")
_TIME, _UUID, _JSON = pa.timestamp("us"), pa.uuid(), pa.json_()  # times: UTC, no zone, as the store's

# Each record type's fields, written down once. trajectory_id is Arrow's UUID (DuckDB reads it as
# a UUID); free-form values are JSON text.
RECORDS = {
    "trajectory": pa.schema([
        ("trajectory_id", _UUID), ("agent_name", pa.string()), ("agent_version", pa.string()),
        ("agent_kind", pa.string()), ("agent_checkpoint", pa.string()),
        ("task_family", pa.string()), ("task_id", pa.string()), ("task_split", pa.string()),
        ("task_operation", pa.string()), ("task_difficulty", pa.int32()), ("task_spec", _JSON),
        ("tags", pa.list_(pa.string())), ("metadata", _JSON), ("start_time", _TIME),
        ("model", pa.string()),           # the model the agent runs on
    ]),
    "step": pa.schema([
        ("trajectory_id", _UUID), ("index", pa.int32()), ("kind", pa.string()), ("observation", _JSON),
        ("tool_name", pa.string()), ("arguments", _JSON), ("result", _JSON), ("reward", pa.float64()),
        ("status", pa.string()), ("error", pa.string()), ("metadata", _JSON),
        ("start_time", _TIME), ("end_time", _TIME),
        # Usage: what a model call cost, and how calls group into turns.
        ("model", pa.string()), ("input_tokens", pa.int64()), ("output_tokens", pa.int64()),
        ("cost_usd", pa.float64()),
        ("call_id", pa.string()),         # the tool call's id (ATIF tool_call_id, OTel gen_ai.tool.call.id)
        ("turn", pa.int32()),             # the index of its turn's first step (parallel tool calls share it)
    ]),
    "outcome": pa.schema([
        ("trajectory_id", _UUID), ("status", pa.string()), ("answer", _JSON), ("verified", pa.bool_()),
        ("reward", pa.float64()), ("error", pa.string()), ("n_steps", pa.int32()), ("end_time", _TIME),
    ]),
}
_UNION = {field.name: field for schema in RECORDS.values() for field in schema}
SCHEMA = pa.schema([("type", pa.string()), *_UNION.values()],
                   metadata={"grokloop.format_version": str(SEGMENT_VERSION)})
JSON_COLUMNS = tuple(field.name for field in SCHEMA if field.type == _JSON)
USAGE_COLUMNS = ("model", "input_tokens", "output_tokens", "cost_usd", "call_id", "turn")  # version 3


_uuid7_lock = threading.Lock()


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 UUIDv7, `uuid6`'s): 48-bit unix ms, then random bits from the
    OS. Strictly increasing within a process (the lock: across its threads too; an id made in a
    millisecond that already has one takes the next millisecond). Another process, forked or not,
    draws its own random bits: two never make the same id in practice."""
    with _uuid7_lock:
        return uuid6.uuid7()


class SegmentError(ValueError):
    """A segment file that cannot be read as a grokloop Arrow segment."""


def segment_bytes(records: Mapping[str, Mapping[str, Sequence]]) -> pa.Buffer:
    """An Arrow IPC file (`SCHEMA`) of records given by type as columns, {type: {field: values}}
    (`RECORDS[type]`'s fields; JSON fields as JSON text): one record batch per type, the columns a
    type does not have all null."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, SCHEMA) as writer:
        for rtype, columns in records.items():
            batch = pa.RecordBatch.from_pydict(columns, schema=RECORDS[rtype])
            if n := batch.num_rows:
                writer.write_batch(pa.RecordBatch.from_arrays(
                    [pa.array([rtype] * n), *(batch.column(f.name) if f.name in columns else pa.nulls(n, f.type)
                                              for f in SCHEMA if f.name != "type")], schema=SCHEMA))
    return sink.getvalue()


def read_segment(data: bytes | pa.Buffer, source: str = "segment") -> pa.Table:
    """An Arrow segment's records as a table with exactly `SCHEMA`'s columns and types.

    Raises SegmentError, naming `source`, for bytes that are not an Arrow IPC file, a format
    version this code does not know, a missing or unknown column, or a column of another kind
    (another width of the same kind is cast when its values fit: an int64 index, a large_string)."""
    try:
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        table.validate(full=True)  # offsets in bounds, strings UTF-8: DuckDB trusts both
    except (pa.ArrowException, OSError) as err:
        raise SegmentError(f"{source}: not a readable Arrow IPC file: {err}") from err
    version = (table.schema.metadata or {}).get(b"grokloop.format_version", b"1")
    if version not in _READABLE_SEGMENT_VERSIONS:
        raise SegmentError(f"{source}: unsupported format version {version.decode(errors='replace')}")
    if table.schema.names != SCHEMA.names:  # another writer's (or an older version's) columns
        have = set(table.schema.names)
        for name in USAGE_COLUMNS:  # an older segment: the columns it never had are null
            if name not in have:
                table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
                have.add(name)
        names = table.schema.names
        problems = [f"missing columns {[n for n in SCHEMA.names if n not in have]}",
                    f"unknown columns {[n for n in names if n not in _UNION and n != 'type']}",
                    "duplicate column names" if len(have) != len(names) else ""]
        problems = [p for p in problems if p and not p.endswith(" []")]
        if problems:
            raise SegmentError(f"{source}: wrong schema: {', '.join(problems)}")
        table = table.select(SCHEMA.names)
    if not table.schema.equals(SCHEMA):
        wrong = [f"{f.name} is {table.schema.field(f.name).type}, not {f.type}" for f in SCHEMA
                 if not _castable(table.schema.field(f.name).type, f.type)]
        if wrong:
            raise SegmentError(f"{source}: wrong schema: {', '.join(wrong)}")
        try:
            table = table.cast(SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
            raise SegmentError(f"{source}: wrong schema: {err}") from err
    return table


def _castable(have: pa.DataType, want: pa.DataType) -> bool:
    """Whether a column of type `have` is read as `want`: another width of the same kind (that
    fits: the cast checks), never a parse (a string of digits is not an index)."""
    types = pa.types
    if have == want:
        return True
    if types.is_integer(want):
        return types.is_integer(have)
    if types.is_floating(want):
        return types.is_floating(have) or types.is_integer(have)
    if types.is_string(want):
        return types.is_string(have) or types.is_large_string(have) or types.is_string_view(have)
    if types.is_timestamp(want):
        return types.is_timestamp(have)
    if types.is_list(want):
        return (types.is_list(have) or types.is_large_list(have)) and _castable(have.value_type, want.value_type)
    if want == _UUID:
        return have == pa.binary(16)
    if want == _JSON:  # JSON text as plain strings: segment version 1, other writers
        return _castable(have, pa.string())
    return False


def read_records(path: Path | str) -> list[dict[str, Any]]:
    """A published segment's records as JSON wire records, either format: for tools and tests
    that look inside the spool. Times are ISO 8601 strings with "Z"; a trajectory's agent_* and
    task_* fields are its "agent" and "task" objects."""
    data = memoryview(read_published(path)).tobytes()
    if not str(path).endswith(SEGMENT_SUFFIX):
        return [orjson.loads(line) for line in data.splitlines() if line.strip()]
    records = []
    for row in read_segment(data, str(path)).to_pylist():
        rtype = row["type"]
        fields = {name: row[name] for name in RECORDS[rtype].names} if rtype in RECORDS else {}
        for name, value in fields.items():
            if value is None:
                continue
            if isinstance(value, uuid.UUID):
                fields[name] = str(value)
            elif name in JSON_COLUMNS:
                fields[name] = orjson.loads(value)
            elif isinstance(value, datetime):
                fields[name] = value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
        if rtype == "trajectory":
            fields["agent"] = {k: fields.pop(f"agent_{k}") for k in ("name", "version", "kind", "checkpoint")}
            fields["task"] = {k: fields.pop(f"task_{k}") for k in ("family", "id", "split", "operation",
                                                                   "difficulty", "spec")}
            fields["task"]["task_id"] = fields["task"].pop("id")
        records.append({"v": FORMAT_VERSION, "type": rtype, **fields})
    return records


def write_segment(spool: Path | str, data: bytes | pa.Buffer, *, suffix: str = SEGMENT_SUFFIX,
                  prefix: str = "seg") -> Path | str:
    """Publish `data` as a new segment in `spool`: write, fsync, atomic rename, fsync the dir.
    A URL spool (`storage.home.is_url`) gets one object instead (`_publish_object`)."""
    name = f"{uuid7()}-{prefix}-{os.getpid()}{suffix}"
    if is_url(spool):
        return _publish_object(str(spool), name, data)
    spool = local_path(spool)
    spool.mkdir(parents=True, exist_ok=True)
    tmp, final = spool / (name + TMP_SUFFIX), spool / name
    try:
        with open(tmp, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.rename(tmp, final)
    except BaseException:  # a full disk, an interrupt: no half-written file left behind
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(spool, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return final


def _publish_object(spool: str, name: str, data: bytes | pa.Buffer) -> str:
    """Object storage has no rename, and needs none: an object appears under its name only when
    its upload completes, whole or not at all, so a reader never lists half a segment."""
    from fsspec.core import url_to_fs  # fsspec only for URL spools

    fs, root = url_to_fs(spool)
    fs.pipe_file(f"{root}/{name}", memoryview(data).tobytes())
    return f"{spool}/{name}"


def read_published(location: Path | str) -> bytes | pa.Buffer:
    """A published segment's bytes: a local one mapped (zero copy), a URL's object read whole."""
    if is_url(location):
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(str(location))
        return fs.cat_file(path)
    return pa.memory_map(str(location)).read_buffer()


def move_published(location: Path | str, folder: str) -> None:
    """Move a published segment into `folder` beside it (`ingested/`); on object storage a copy
    and a delete (the object is whole at both names, and ingest knows it by its digest)."""
    if is_url(location):
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(str(location))
        parent, name = path.rsplit("/", 1)
        fs.mv(path, f"{parent}/{folder}/{name}")
        return
    location = Path(location)
    (location.parent / folder).mkdir(parents=True, exist_ok=True)
    os.replace(location, location.parent / folder / location.name)


def remove_stale_tmp(spool: Path | str, max_age: float = STALE_SECONDS) -> list[Path]:
    """Remove `.tmp` files left by writers that died (SIGKILL, a crash) mid-write: older than
    `max_age` seconds and no live process with the writer's pid (in the name). Returns them.
    A URL spool has none (`_publish_object`)."""
    if is_url(spool) or not local_path(spool).exists():
        return []
    removed, now = [], time.time()
    for path in local_path(spool).glob(f"*{TMP_SUFFIX}"):
        match = re.search(r"-(\d+)\.\w+\.tmp$", path.name)
        try:
            old = now - path.stat().st_mtime > max_age
        except FileNotFoundError:  # published (or removed) meanwhile
            continue
        if old and not (match and _alive(int(match[1]))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def published_segments(spool: Path | str) -> list[Path] | list[str]:
    """Every published segment (`.arrow`, `.jsonl`, `.rejected`), oldest first. `.tmp` files are
    writers still at work (or dead). A URL spool's segments are URLs."""
    if is_url(spool):
        from fsspec.core import url_to_fs

        fs, root = url_to_fs(str(spool))
        fs.invalidate_cache(root)  # other machines publish meanwhile: list afresh every time
        try:
            names = [p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
        except FileNotFoundError:
            return []
        return [f"{spool}/{n}" for n in sorted(names) if n.endswith(SEGMENT_SUFFIXES)]
    spool = local_path(spool)
    if not spool.exists():
        return []
    return sorted(p for p in spool.iterdir() if p.name.endswith(SEGMENT_SUFFIXES))


def utc_micros(value: str | datetime) -> int:
    """An ISO 8601 time (a "Z" or an offset, or none: UTC) or a datetime as microseconds since
    the epoch, UTC. ValueError if it is not one."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"a time must be an ISO 8601 string or a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


_EPOCH, _MICROSECOND = datetime(1970, 1, 1, tzinfo=UTC), timedelta(microseconds=1)
