"""Spool segments: how agent processes hand records to ingest without opening the store.

Each flush writes one new segment file: the bytes go to `<name>.arrow.tmp`, are fsync'ed, then
renamed to `<name>.arrow` (atomic on POSIX). Ingest only ever reads published names (`*.arrow`,
and `*.jsonl` from other writers), so it never sees a half-written segment, and a process killed
with SIGKILL loses at most the buffer it had not flushed yet. Names start with a UUIDv7, so
sorting names sorts segments by creation time (per process, strictly). A spool may also be a URL
(`s3://bucket/prefix/spool`, any fsspec filesystem): there a segment is one object, uploaded whole
under its final name (`_publish_object`), and ingest lists and reads the objects.

A segment the SDK writes is an Arrow IPC file (`SCHEMA`): one table for the three record types,
with a `type` column and the union of their columns, one record batch per type (trajectory
starts, then steps, then outcomes, each in the order they were logged). Typed fields are typed
columns; free-form values (observation, arguments, result, metadata, answer, task spec) are JSON
text, typed as Arrow's JSON extension (`arrow.json`). `agents/sdk.py` documents the records.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
import uuid
from array import array
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from storage.home import is_url, local_path

SEGMENT_SUFFIX = ".arrow"    # what the SDK writes
JSONL_SUFFIX = ".jsonl"      # one JSON record per line: other writers, files from other tools
# Input that arrived but did not decode (the collector's): the reason on the first line, then the
# bytes as received; ingest quarantines it whole, with that reason.
REJECTED_SUFFIX = ".rejected"
SEGMENT_SUFFIXES = (SEGMENT_SUFFIX, JSONL_SUFFIX, REJECTED_SUFFIX)
TMP_SUFFIX = ".tmp"          # a segment still being written (or whose writer died)
STALE_SECONDS = 3600.0       # a .tmp this old, whose writer is gone, is litter (remove_stale_tmp)

FORMAT_VERSION = 1           # the records (`agents/sdk.py`), in either format
# The Arrow segment layout, in the file's metadata. 2: free-form values are Arrow's canonical JSON
# type (`arrow.json`), which DuckDB reads as JSON with no second parse; 1: the same as plain
# strings (still read). 3: adds the usage columns (`USAGE_COLUMNS`); a version 1 or 2 segment has
# none of them and is read with them all null.
SEGMENT_VERSION = 3
_READABLE_SEGMENT_VERSIONS = (b"1", b"2", b"3")
_TIME = pa.timestamp("us")   # UTC, no zone: what the store's TIMESTAMP columns hold
_UUID = pa.uuid()
_JSON = pa.json_()
SCHEMA = pa.schema(
    [
        ("type", pa.string()),            # trajectory | step | outcome
        ("trajectory_id", _UUID),         # Arrow's UUID (16 bytes): DuckDB reads it as a UUID
        ("index", pa.int32()),            # step
        ("kind", pa.string()),            # step
        ("observation", _JSON),           # step, JSON
        ("tool_name", pa.string()),       # step
        ("arguments", _JSON),             # step, JSON
        ("result", _JSON),                # step, JSON
        ("reward", pa.float64()),         # step, outcome
        ("status", pa.string()),          # step, outcome
        ("error", pa.string()),           # step, outcome
        ("metadata", _JSON),              # trajectory, step; JSON
        ("start_time", _TIME),            # trajectory, step
        ("end_time", _TIME),              # step, outcome
        ("answer", _JSON),                # outcome, JSON
        ("verified", pa.bool_()),         # outcome
        ("n_steps", pa.int32()),          # outcome
        ("tags", pa.list_(pa.string())),  # trajectory
        ("agent_name", pa.string()),      # trajectory
        ("agent_version", pa.string()),
        ("agent_kind", pa.string()),
        ("agent_checkpoint", pa.string()),
        ("task_family", pa.string()),
        ("task_id", pa.string()),
        ("task_split", pa.string()),
        ("task_operation", pa.string()),
        ("task_difficulty", pa.int32()),
        ("task_spec", _JSON),             # JSON
        # Usage (segment version 3): what a model call cost, and how calls group into turns.
        ("model", pa.string()),           # trajectory (the agent's model), step (this call's)
        ("input_tokens", pa.int64()),     # step
        ("output_tokens", pa.int64()),    # step
        ("cost_usd", pa.float64()),       # step
        ("call_id", pa.string()),         # step: the tool call's id (ATIF tool_call_id, OTel gen_ai.tool.call.id)
        ("turn", pa.int32()),             # step: the agent turn it belongs to (parallel tool calls share one)
    ],
    metadata={"grokloop.format_version": str(SEGMENT_VERSION)},
)
# Each record type's columns, as the SDK buffers them (`RecordBuffer`): its typed columns, then
# its JSON columns; a record's values come in this order.
COLUMNS = {
    "trajectory": (("trajectory_id", "tags", "start_time", "agent_name", "agent_version", "agent_kind",
                    "agent_checkpoint", "task_family", "task_id", "task_split", "task_operation",
                    "task_difficulty", "model"),
                   ("metadata", "task_spec")),
    "step": (("trajectory_id", "index", "kind", "tool_name", "reward", "status", "error", "start_time",
              "end_time"),
             ("observation", "arguments", "result", "metadata")),
    "outcome": (("trajectory_id", "status", "verified", "reward", "error", "n_steps", "end_time"),
                ("answer",)),
}
JSON_COLUMNS = ("observation", "arguments", "result", "metadata", "answer", "task_spec")
# Columns added after segment version 2: a segment without them is read with them null. A step
# buffers them as one tuple in this order (`RecordBuffer.usage`).
USAGE_COLUMNS = ("model", "input_tokens", "output_tokens", "cost_usd", "call_id", "turn")


class RecordBuffer:
    """One record type's records, column-wise, as `segment_bytes` encodes them.

    `columns` holds one list per typed column, in `COLUMNS[type][0]` order (trajectory_id as the
    UUID's 16 bytes, times as int microseconds since the epoch, UTC). Each JSON column is one
    growing byte string of JSON texts (`json[i]`) and each text's end offset in it (`ends[i]`);
    an empty text is a null. The SDK appends to these in place: nothing per record outlives the
    call but the values themselves (a tuple per record keeps the garbage collector busy, and a
    JSON text kept as its own bytes object costs several times the append: orjson's output is a
    large allocation, and thousands of them alive defeat the allocator's reuse).
    A step's usage fields (`USAGE_COLUMNS`) are one entry per record in `usage`: a tuple of them,
    or None when it has none (most steps)."""

    __slots__ = ("columns", "json", "ends", "usage")

    def __init__(self, rtype: str):
        typed, json = COLUMNS[rtype]
        self.columns = tuple([] for _ in typed)
        self.json = tuple(bytearray() for _ in json)
        self.ends = tuple(array("q") for _ in json)
        self.usage = []

    def __len__(self) -> int:
        return len(self.columns[0])


_FIELDS = list(SCHEMA)[1:]  # after `type`


class SegmentError(ValueError):
    """A segment file that cannot be read as a grokloop Arrow segment."""


_last_uuid7 = (0, 0)  # (ms, 74 random bits) of the last id this process made
_MS_BITS, _RAND_BITS, _RAND_B_BITS = (1 << 48) - 1, (1 << 74) - 1, (1 << 62) - 1
_uuid7_lock = threading.Lock()
# Random bits are read from the OS 256 ids at a time: one getrandom call per id costs more than
# the rest of uuid7(). A forked child drops the parent's unused bits and its last id, so it never
# counts up from where its parent is counting.
_random = bytearray()


def _forget_parent_ids() -> None:
    global _last_uuid7
    _random.clear()
    _last_uuid7 = (0, 0)


os.register_at_fork(after_in_child=_forget_parent_ids)


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): 48-bit unix ms, then 74 random bits.

    Strictly increasing within a process (RFC 9562 method 3: the first id of a millisecond has
    fresh random bits, the next ones in it count up from them), so two segments written in the
    same millisecond still sort in write order and ingest sees a trajectory's start before its
    outcome. Another process draws its own random bits, so ids from two processes never collide
    in practice (74 bits).
    """
    return uuid.UUID(bytes=uuid7_bytes())


def uuid7_bytes() -> bytes:
    """`uuid7()`'s 16 bytes, without making a UUID object (the SDK makes one per trajectory)."""
    global _last_uuid7
    ms = time.time_ns() // 1_000_000 & _MS_BITS
    with _uuid7_lock:
        last_ms, last_rand = _last_uuid7
        if ms <= last_ms:  # the same millisecond as the last id (or the clock went back): count up
            ms, rand = last_ms, last_rand + 1
            if rand > _RAND_BITS:  # 2**74 ids in one millisecond: borrow the next one
                ms, rand = ms + 1, 0
        else:  # the common case in a process that logs less than one trajectory a millisecond
            if not _random:
                _random.extend(secrets.token_bytes(10 * 256))
            rand = int.from_bytes(_random[-10:], "big") & _RAND_BITS
            del _random[-10:]
        _last_uuid7 = (ms, rand)
    return (ms << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0x2 << 62 | rand & _RAND_B_BITS).to_bytes(16, "big")


# Columns are built from buffers (numpy, `from_buffers`), never `pa.array(list)`: that imports
# pandas on its first call, a fifth of a second in every agent process, and an error ("can't
# register atexit after shutdown") when the first flush is the one at interpreter exit.
# Each builder tries the common case first (no None) and only then looks for nulls.


def _validity(values: Sequence) -> tuple[list, pa.Buffer | None, int]:
    """The non-None values, the validity bitmap and the null count."""
    valid = np.array([v is not None for v in values], np.bool_)
    present = [v for v in values if v is not None]
    return present, pa.py_buffer(np.packbits(valid, bitorder="little")), len(values) - len(present)


def _scatter(present: list, values: Sequence, fill: Any) -> list:
    """`present` (the non-None values, in order) spread back over `values`' slots, `fill` at the
    None ones."""
    it = iter(present)
    return [fill if v is None else next(it) for v in values]


def _int32(data: np.ndarray, what: str) -> np.ndarray:
    if data.size and (data.min() < -(1 << 31) or data.max() >= 1 << 31):
        raise ValueError(f"{what}: a value does not fit in 32 bits")
    return data.astype(np.int32)


def _numbers(values: Sequence, field: pa.Field) -> pa.Array:
    n, type_ = len(values), field.type
    code = "d" if type_ == pa.float64() else "q"  # a bool goes through "q"
    validity, nulls = None, 0
    try:
        if type_ == pa.bool_():
            raise TypeError  # a None would be read as False: always look for nulls
        data = array(code, values)  # a TypeError at the first None
    except TypeError:
        present, validity, nulls = _validity(values)
        data = array(code, _scatter([bool(v) for v in present] if type_ == pa.bool_() else present,
                                    values, 0))
    if type_ == pa.float64():
        buffer = np.frombuffer(data, np.float64)
    elif type_ == pa.bool_():
        buffer = np.packbits(np.frombuffer(data, np.int64).astype(np.bool_), bitorder="little")
    elif type_ == pa.int32():
        buffer = _int32(np.frombuffer(data, np.int64), field.name)
    else:  # int64 (tokens), or a time: int64 microseconds
        buffer = np.frombuffer(data, np.int64)
    return pa.Array.from_buffers(type_, n, [validity, pa.py_buffer(buffer)], nulls)


def _offsets(lengths: np.ndarray, what: str) -> pa.Buffer:
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.py_buffer(_int32(offsets, f"{what} (more than 2 GiB in one flush)"))


def _strings(values: Sequence, what: str) -> pa.Array:
    """Text; a value of another type is stored as its str(), so one odd value never costs the
    whole buffer."""
    n = len(values)
    validity, nulls, present = None, 0, values
    try:
        joined = "".join(values)
    except TypeError:
        present, validity, nulls = _validity(values)
        present = [v if v.__class__ is str else str(v) for v in present]
        joined = "".join(present)
    if joined.isascii():  # one encode for the column, and a length in chars is one in bytes
        encoded, data = present, joined.encode("ascii")
    else:
        encoded = [v.encode() for v in present]
        data = b"".join(encoded)
    lengths = np.fromiter(map(len, _scatter(encoded, values, "") if nulls else encoded), np.int64, n)
    return pa.Array.from_buffers(pa.string(), n, [validity, _offsets(lengths, what), pa.py_buffer(data)],
                                 nulls)


def _json_texts(data: bytearray, ends: array, what: str) -> pa.Array:
    n = len(ends)
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.frombuffer(ends, np.int64)
    valid = np.diff(offsets) > 0
    nulls = n - int(np.count_nonzero(valid))
    if nulls == n:
        return pa.nulls(n, _JSON)
    validity = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    text = pa.Array.from_buffers(pa.string(), n, [validity, pa.py_buffer(_int32(offsets, what)),
                                                  pa.py_buffer(data)], nulls)
    return pa.ExtensionArray.from_storage(_JSON, text)


def _string_lists(values: Sequence, what: str) -> pa.Array:
    n = len(values)
    validity, nulls, rows = None, 0, values
    if None in values:
        _, validity, nulls = _validity(values)
        rows = [() if v is None else v for v in values]
    lengths = np.fromiter(map(len, rows), np.int64, n)
    flat = [x for row in rows for x in row]
    return pa.Array.from_buffers(pa.list_(pa.string()), n, [validity, _offsets(lengths, what)], nulls,
                                 children=[_strings(flat, what)])


def _uuids(values: Sequence) -> pa.Array:
    n = len(values)
    validity, nulls = None, 0
    try:
        data = b"".join(values)  # a TypeError at the first None
    except TypeError:
        _, validity, nulls = _validity(values)
        data = b"".join(bytes(16) if v is None else v for v in values)
    if len(data) != 16 * n:
        raise ValueError("trajectory_id: a UUID is 16 bytes")
    storage = pa.Array.from_buffers(pa.binary(16), n, [validity, pa.py_buffer(data)], nulls)
    return pa.ExtensionArray.from_storage(_UUID, storage)


def _column(field: pa.Field, values: Sequence) -> pa.Array:
    first = values[0]
    if values.count(first) == len(values):  # the common constant columns: all null, or one kind
        if first is None:
            return pa.nulls(len(values), field.type)
        if first.__class__ is str and field.type == pa.string():
            return _constant(first, len(values))
    if field.type == _UUID:
        return _uuids(values)
    if field.type == pa.string():
        return _strings(values, field.name)
    if pa.types.is_list(field.type):
        return _string_lists(values, field.name)
    return _numbers(values, field)


def _constant(text: str, n: int) -> pa.Array:
    data = text.encode()
    offsets = np.arange(0, (n + 1) * len(data), len(data), dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data * n)])


def segment_bytes(buffers: Mapping[str, RecordBuffer]) -> pa.Buffer:
    """An Arrow IPC file (`SCHEMA`) of the buffered records: one record batch per record type,
    in `COLUMNS` order, the columns a type does not have all null."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, SCHEMA) as writer:
        for rtype, (typed, json) in COLUMNS.items():
            buffer = buffers.get(rtype)
            if buffer is None or not len(buffer):
                continue
            n = len(buffer)
            arrays: dict[str, Any] = dict(zip(typed, buffer.columns, strict=True))
            for name, data, ends in zip(json, buffer.json, buffer.ends, strict=True):
                arrays[name] = _json_texts(data, ends, name)
            if any(u is not None for u in buffer.usage):
                empty = (None,) * len(USAGE_COLUMNS)
                rows = [empty if u is None else u for u in buffer.usage]
                arrays.update(zip(USAGE_COLUMNS, map(list, zip(*rows, strict=True)), strict=True))
            if any(len(values) != n for values in arrays.values()):
                raise ValueError(f"{rtype} records: columns of different lengths")
            columns = [_constant(rtype, n)]
            for field in _FIELDS:
                values = arrays.get(field.name)
                if values is None:
                    columns.append(pa.nulls(n, field.type))
                else:
                    columns.append(values if isinstance(values, pa.Array) else _column(field, values))
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=SCHEMA))
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
    names = table.schema.names
    if names != SCHEMA.names:  # not the SDK's own columns in its order: look closer
        have, want = set(names), set(SCHEMA.names)
        for name in USAGE_COLUMNS:  # an older writer's segment: the columns it never had are null
            if name not in have:
                table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
                have.add(name)
        names = table.schema.names
        problems = [f"missing columns {[n for n in SCHEMA.names if n not in have]}",
                    f"unknown columns {[n for n in names if n not in want]}",
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
        return (types.is_list(have) or types.is_large_list(have)) and _castable(have.value_type,
                                                                                  want.value_type)
    if want == _UUID:
        return have == pa.binary(16)
    if want == _JSON:  # JSON text as plain strings: segment version 1, other writers
        return _castable(have, pa.string())
    return False


def read_records(path: Path | str) -> list[dict[str, Any]]:
    """A published segment's records as the JSON wire records (`agents/sdk.py`), either format:
    for tools and tests that look inside the spool."""
    data = memoryview(read_published(path)).tobytes()
    if not str(path).endswith(SEGMENT_SUFFIX):
        return [orjson.loads(line) for line in data.splitlines() if line.strip()]
    records = []
    for row in read_segment(data, str(path)).to_pylist():
        rtype = row["type"]
        typed, json = COLUMNS.get(rtype, ((), ()))
        fields = {n: row[n] for n in (*typed, *json)}
        tid = fields.get("trajectory_id")
        if tid is not None:
            fields["trajectory_id"] = str(uuid.UUID(bytes=tid) if isinstance(tid, bytes) else tid)
        for name in JSON_COLUMNS:
            if fields.get(name) is not None:
                fields[name] = orjson.loads(fields[name])
        for name in ("start_time", "end_time"):
            if fields.get(name) is not None:
                fields[name] = fields[name].replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
        if rtype == "trajectory":
            agent = {k: fields.pop(f"agent_{k}") for k in ("name", "version", "kind", "checkpoint")}
            task = {k: fields.pop(f"task_{k}") for k in ("family", "id", "split", "operation", "difficulty",
                                                          "spec")}
            task["task_id"] = task.pop("id")
            fields = {**fields, "agent": agent, "task": task}
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
    tmp = spool / (name + TMP_SUFFIX)
    final = spool / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
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
    its upload completes (one PUT, or a multipart upload when it is completed), whole or not at
    all, so a reader never lists half a segment. A writer killed mid-upload leaves nothing."""
    from fsspec.core import url_to_fs

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
    if is_url(spool):
        return []
    spool = local_path(spool)
    if not spool.exists():
        return []
    removed, now = [], time.time()
    for path in spool.glob(f"*{TMP_SUFFIX}"):
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
    """Every published segment (`.arrow` and `.jsonl`), oldest first. `.tmp` files are writers
    still at work (or dead). A URL spool's segments are URLs."""
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
        raise TypeError(f"a time must be an ISO 8601 string or a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
