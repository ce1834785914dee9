"""The logging SDK any agent process imports.

    from agents.sdk import TrajectoryLogger

    log = TrajectoryLogger(agent="my-solver", version="1.2")
    with log.trajectory(task={"family": "modular", "task_id": "modular/mul/3/5", "spec": {...}}) as t:
        t.step(tool_name="lookup", arguments={"h": "e1", "r": "r3"}, result="e7")
        t.finish(answer=["e7"], verified=True, reward=1.0)
    log.close()   # also runs at interpreter exit, and on SIGTERM / SIGINT

Records are buffered a list per field, and each flush (by size, by age, at close) publishes them as
one spool segment (`storage/spool.py`: `RECORDS` holds each record type's fields and types).
Free-form values (observation, arguments, result, metadata, answer, task spec) are encoded by orjson
when logged (numpy values as numbers, sets and tuples as lists, other objects as their repr()); a
value of another type in a text field (an exception as `error`) is stored as its str(). A reward,
token count, cost or time that is not one raises ValueError at the call. Identity is made here: a
trajectory's id is a UUIDv7 (time-ordered: the store lists trajectories oldest first by id), a step
is (trajectory_id, index), so ingesting the same records twice is a no-op.

Times. A trajectory starts when `trajectory()` is called, or at its `start_time=` (an agent that
decides what to log only after acting takes `now_iso()` before its first action); a step's
start_time is at or after that (an earlier one is refused), its end_time is when `step()` is
called, the outcome's when `finish()` is. An exception inside the `with` block records status
"error" with the exception text, then propagates; a block left without `finish()` records "ok".

Exit. Open loggers are flushed at interpreter exit and on SIGTERM / SIGINT, after which the signal
goes on to the handler that was there before (by default the process still ends, 143 / 130). A
final flush that fails (a full disk) prints one line saying what was lost and exits 1. Only
SIGKILL loses the unflushed buffer; its trajectories land in the store as "incomplete".
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

# pa.array imports pandas at its first call (to look for pandas objects), a fifth of a second:
# imported here, it is not paid inside an agent's first step, a forked agent shares it, and a first
# flush at interpreter exit does not fail ("can't register atexit after shutdown").
import pandas  # noqa: F401
import pyarrow as pa

from storage.home import spool_location
from storage.spool import FORMAT_VERSION, RECORDS, segment_bytes, utc_micros, uuid7, write_segment

__all__ = ["FORMAT_VERSION", "Trajectory", "TrajectoryLogger", "now_iso"]

_ROW_BYTES = 80  # about a record's typed fields, when counting the buffer against flush_bytes
_JSON_FIELDS = {rtype: [f.name for f in schema if f.type == pa.json_()] for rtype, schema in RECORDS.items()}
_TEXT_FIELDS = {rtype: {f.name for f in schema if f.type in (pa.string(), pa.list_(pa.string()))}
                for rtype, schema in RECORDS.items()}


def now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds, e.g. "2026-01-02T03:04:05.123456Z"."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _now() -> int:
    return time.time_ns() // 1000  # microseconds since the epoch, as the segment's times


def _json(value: Any) -> str | None:
    """JSON text, kept as a str: orjson's bytes are a large allocation each, and thousands of them
    alive in a buffer make every dumps several times slower."""
    if value is None:
        return None
    return orjson.dumps(value, default=_fallback, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _fallback(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    return str(obj) if isinstance(obj, Path) else repr(obj)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any, what: str, low: int, high: int) -> int | None:
    """None, or a whole number in [low, high) (ValueError otherwise, at the call)."""
    if value is None:
        return None
    if isinstance(value, bool) or not float(value).is_integer() or not low <= int(value) < high:
        raise ValueError(f"{what} must be a whole number in [{low}, {high}), got {value!r}")
    return int(value)


def _empty_columns() -> dict[str, dict[str, list]]:
    """The buffer: each record type's values, a list per field (a dict per record costs ~7% more
    per step: the collector visits each one, and the flush must take them apart)."""
    return {rtype: {name: [] for name in schema.names} for rtype, schema in RECORDS.items()}


def _encode(columns: dict[str, dict[str, list]]) -> pa.Buffer:
    try:
        return segment_bytes(columns)
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # a value of another type in a text field: its str()
        return segment_bytes({rtype: {name: [_as_text(v) for v in values] if name in _TEXT_FIELDS[rtype] else values
                                      for name, values in fields.items()} for rtype, fields in columns.items()})


def _as_text(value: Any) -> Any:
    if isinstance(value, list):  # tags
        return [_as_text(v) for v in value]
    return value if value is None or isinstance(value, str) else str(value)


class TrajectoryLogger:
    """Buffers records and publishes them to the spool by size, by age and at exit."""

    def __init__(self, agent: str, version: str = "0", *, spool: str | Path | None = None,
                 kind: str | None = None, checkpoint: str | None = None,
                 flush_bytes: int = 1 << 20, flush_seconds: float = 2.0):
        self.agent = {"name": agent, "version": str(version), "kind": kind, "checkpoint": checkpoint}
        self.spool = spool_location(spool)  # a path, or a URL (s3://...)
        self.flush_bytes = flush_bytes
        self.segments_written = 0
        self._columns = _empty_columns()
        self._size = 0  # about the bytes buffered
        self._closed = False
        self._lock = threading.Lock()  # the buffer and publishing, so segments sort in write order
        self._writer: threading.Thread | None = None  # publishing a full buffer (`flush(wait=False)`)
        self._writer_error: BaseException | None = None
        self._stop = threading.Event()  # a daemon timer publishes a quiet buffer every flush_seconds
        threading.Thread(target=_flush_periodically, args=(self, flush_seconds), daemon=True).start()
        _watch(self)

    def trajectory(self, task: Any, *, tags: Sequence[str] = (), metadata: Mapping[str, Any] | None = None,
                   start_time: Any = None, model: str | None = None) -> Trajectory:
        """A new trajectory of `task` (a mapping with family and task_id, or an object whose `.ref()`
        returns one), starting now or at `start_time` (ISO 8601 or datetime). `model`: the model
        the agent runs on in this trajectory (each step may name its own)."""
        return Trajectory(self, task, tags, metadata, start_time, model)

    def record(self, rtype: str, fields: dict[str, Any]) -> None:
        """Buffer one record (all of `RECORDS[rtype]`'s fields); publish the buffer once it is full."""
        size = _ROW_BYTES + sum(map(len, filter(None, map(fields.get, _JSON_FIELDS[rtype]))))  # its JSON texts
        with self._lock:
            if self._closed:
                raise RuntimeError("TrajectoryLogger is closed")
            columns = self._columns[rtype]
            for name, value in fields.items():
                columns[name].append(value)
            self._size += size
            full = self._size >= self.flush_bytes
        if full:
            self.flush(wait=False)

    def flush(self, *, wait: bool = True) -> None:
        """Publish the buffer as a segment now. Not `wait`: the segment is written (write, fsync,
        rename: I/O the agent need not wait for) by a thread that the next flush waits for, so
        segments are still published one at a time, in order."""
        with self._lock:
            if self._writer is not None:
                self._writer.join()
                self._writer = None
            if self._writer_error is not None:
                err, self._writer_error = self._writer_error, None
                raise err
            if not self._size:
                return
            columns, self._columns, self._size = self._columns, _empty_columns(), 0
            data = _encode(columns)
            if wait:
                self._publish(data)
            else:
                self._writer = threading.Thread(target=self._publish, args=(data, True), daemon=True)
                self._writer.start()

    def _publish(self, data: pa.Buffer, background: bool = False) -> None:
        try:
            write_segment(self.spool, data)
            self.segments_written += 1
        except BaseException as err:
            if not background:
                raise
            self._writer_error = err  # raised in the agent's thread by the next flush

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True  # records from here on are refused; the buffer is published now
        self._stop.set()
        try:
            self.flush()
        finally:
            _LIVE.discard(self)

    def __enter__(self) -> TrajectoryLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- exit and signals -------------------------------------------------------------------------

_LIVE: set[TrajectoryLogger] = set()  # loggers not closed yet (strong refs: a buffer is never dropped)
_previous: dict[int, Any] = {}        # the handler each signal had before ours
_passing: set[int] = set()            # signals to hand straight on (already flushed)


def _watch(logger: TrajectoryLogger) -> None:
    """Flush `logger` at exit and on SIGTERM / SIGINT (the handlers go in with the first logger
    made in the main thread: signal.signal's rule)."""
    if not _previous and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            _previous[signum] = signal.signal(signum, _on_signal)
    _LIVE.add(logger)


@atexit.register
def _close_all() -> None:
    """Close every logger. One that cannot publish its buffer says so in one line and the process
    exits 1 (an exception in an atexit callback would be printed and then ignored)."""
    failed = False
    for logger in list(_LIVE):
        try:
            logger.close()
        except Exception as err:  # noqa: BLE001  (any failure to publish is reported the same way)
            failed = True
            _report_lost(logger, err)
    if failed:
        sys.stdout.flush()
        os._exit(1)


def _on_signal(signum: int, frame: Any) -> None:
    if signum not in _passing:
        # This handler may have interrupted code that holds a logger's lock: flush from a thread
        # (which waits for the lock), then send the signal again.
        threading.Thread(target=_flush_then_signal, args=(signum,), daemon=True).start()
        return
    _passing.discard(signum)
    previous = _previous.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:  # the default (or a handler not set from Python): die of it
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _flush_then_signal(signum: int) -> None:
    for logger in list(_LIVE):
        _flush_reporting(logger)
    _passing.add(signum)
    os.kill(os.getpid(), signum)


def _flush_periodically(logger: TrajectoryLogger, seconds: float) -> None:
    while not logger._stop.wait(seconds):
        _flush_reporting(logger)


def _flush_reporting(logger: TrajectoryLogger) -> None:
    """Flush; a failure is one line, never an exception (a signal must still do what it would)."""
    try:
        logger.flush()
    except Exception as err:  # noqa: BLE001  (any failure to publish is reported the same way)
        _report_lost(logger, err)


def _report_lost(logger: TrajectoryLogger, err: Exception) -> None:
    what = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) and err.strerror else err
    print(f"grokloop: could not publish the last records of agent {logger.agent['name']!r} "
          f"to {logger.spool} ({what}); they are lost", file=sys.stderr, flush=True)


class Trajectory:
    """One attempt at one task. Use as a context manager via `TrajectoryLogger.trajectory`."""

    def __init__(self, logger: TrajectoryLogger, task: Any, tags: Sequence[str] = (),
                 metadata: Mapping[str, Any] | None = None, start_time: Any = None, model: str | None = None):
        task = dict(task.ref() if hasattr(task, "ref") else task)
        if missing := [k for k in ("family", "task_id") if not task.get(k)]:
            raise ValueError(f"task is missing {', '.join(missing)}: {task!r}")
        self.logger, self.task, self.n_steps, self.finished = logger, task, 0, False
        self.uuid = uuid7()
        self._key = self.uuid.bytes  # as the segment holds it
        self.start = _now() if start_time is None else utc_micros(start_time)
        agent = logger.agent
        logger.record("trajectory", {
            "trajectory_id": self._key, "agent_name": agent["name"], "agent_version": agent["version"],
            "agent_kind": agent["kind"], "agent_checkpoint": agent["checkpoint"],
            "task_family": task["family"], "task_id": task["task_id"], "task_split": task.get("split"),
            "task_operation": task.get("operation"),
            "task_difficulty": _int(task.get("difficulty"), "task difficulty", -(1 << 31), 1 << 31),
            "task_spec": _json(task.get("spec")), "tags": list(tags), "metadata": _json(dict(metadata or {})),
            "start_time": self.start, "model": model})

    @property
    def id(self) -> str:
        return str(self.uuid)

    def step(self, *, kind: str = "tool_call", observation: Any = None, tool_name: str | None = None,
             arguments: Any = None, result: Any = None, reward: float | None = None, status: str = "ok",
             error: str | None = None, metadata: Mapping[str, Any] | None = None, start_time: Any = None,
             model: str | None = None, input_tokens: int | None = None, output_tokens: int | None = None,
             cost_usd: float | None = None, call_id: str | None = None, turn: int | None = None) -> int:
        """Record one step; returns its index. A model call: `model`, `input_tokens`,
        `output_tokens`, `cost_usd`. Parallel tool calls: one step per call, each with its
        `call_id`, all with the `turn` of the step that asked for them (that step's index)."""
        if self.finished:
            raise RuntimeError(f"trajectory {self.id} is finished; no more steps")
        end = _now()
        start = end if start_time is None else utc_micros(start_time)
        if start < self.start and start_time is not None:
            raise ValueError(f"step start_time {start_time!r} is before its trajectory's start; "
                             "open the trajectory first, or pass trajectory(start_time=...)")
        index = self.n_steps
        self.logger.record("step", {
            "trajectory_id": self._key, "index": index, "kind": kind, "observation": _json(observation),
            "tool_name": tool_name, "arguments": _json(arguments), "result": _json(result),
            "reward": _number(reward), "status": status, "error": error,
            "metadata": _json(metadata) if metadata else None, "start_time": start, "end_time": end,
            "model": model, "input_tokens": _int(input_tokens, "input_tokens", 0, 1 << 63),
            "output_tokens": _int(output_tokens, "output_tokens", 0, 1 << 63), "cost_usd": _number(cost_usd),
            "call_id": call_id, "turn": _int(turn, "turn (an earlier step's index, or this one's)", 0, index + 1)})
        self.n_steps = index + 1
        return index

    def finish(self, *, answer: Any = None, verified: bool | None = None, reward: float | None = None,
               status: str = "ok", error: str | None = None) -> None:
        if self.finished:
            raise RuntimeError(f"trajectory {self.id} already finished")
        self.logger.record("outcome", {
            "trajectory_id": self._key, "status": status, "answer": _json(answer),
            "verified": None if verified is None else bool(verified), "reward": _number(reward),
            "error": error, "n_steps": self.n_steps, "end_time": _now()})
        self.finished = True  # only once recorded: a refused call can be retried

    def __enter__(self) -> Trajectory:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self.finished:
            if exc is None:
                self.finish()
            else:
                self.finish(status="error", verified=False, error=f"{exc_type.__name__}: {exc}")
        return False  # never swallow the agent's exception
