"""The logging SDK any agent process imports.

    from agents.sdk import TrajectoryLogger

    log = TrajectoryLogger(agent="my-solver", version="1.2")
    with log.trajectory(task={"family": "modular", "task_id": "modular/mul/3/5", "spec": {...}}) as t:
        t.step(tool_name="lookup", arguments={"h": "e1", "r": "r3"}, result="e7")
        t.finish(answer=["e7"], verified=True, reward=1.0)
    log.close()   # also runs at interpreter exit, and on SIGTERM / SIGINT

Exit. Every open logger is flushed at interpreter exit and when the process gets SIGTERM or
SIGINT; the signal then goes on to the handler that was there before (the default: the process
ends as it would have, exit status 143 / 130; a program's own handler, installed before the first
logger, is called). A program that installs its own SIGTERM handler after creating a logger
replaces ours: it should call `log.close()` in it. A final flush that fails (a full disk, a spool
that is not writable) prints one line saying what was lost and exits 1, not 0. Only SIGKILL
loses the unflushed buffer.

Times. A trajectory starts before its first step and ends after its last: its start_time is
when `trajectory()` is called (or the `start_time=` given there, for an agent that decides what to
log only after acting: take `now_iso()` before the first action and pass it), every step's
start_time is at or after it (a step given an earlier one is refused with ValueError), a step's
end_time is when `step()` is called, and the outcome's end_time is when `finish()` is called.
So durations computed from the store (step, trajectory, time to first step) are real.

An exception inside the `with` block records the trajectory with status "error"
and the exception text, then propagates. A block left without `finish()` is
recorded as status "ok" with no answer. A trajectory whose process dies before
its outcome record is flushed lands in the store as "incomplete".

Wire format. Records are buffered column-wise and each flush publishes one spool segment, an
Arrow IPC file (`agents/spool.py`: `SCHEMA`, segment version 3 in its metadata): one table with a
`type` column and the union of the three record types' columns, one record batch per type:

  trajectory  trajectory_id, agent_name, agent_version, agent_kind, agent_checkpoint,
              task_family, task_id, task_split, task_operation, task_difficulty, task_spec,
              tags, metadata, start_time, model
  step        trajectory_id, index, kind, observation, tool_name, arguments, result, reward,
              status, error, metadata, start_time, end_time,
              model, input_tokens, output_tokens, cost_usd, call_id, turn
  outcome     trajectory_id, status, answer, verified, reward, error, n_steps, end_time

Usage fields are optional (null when not given): `model` (a trajectory's: the model the agent
runs on; a step's: the model this call used), `input_tokens` / `output_tokens` int64,
`cost_usd` float64, `call_id` (a tool call's id, as the model or framework named it) and `turn`
int32. Parallel tool calls: each call is its own step (its tool_name, arguments, result and
call_id), and the steps of one agent turn (the model call that asked for them and the calls
themselves) share `turn`, the index of the turn's first step; a step with no `turn` is a turn of
its own. Segments written before these fields existed (version 1 and 2) still ingest: the
fields are null.

Typed fields are typed columns: index, n_steps, turn and task_difficulty int32, tokens int64,
reward and cost_usd float64 (a NaN or infinite reward is kept as it is, so ingest quarantines it
rather than hiding it), verified
bool, times UTC timestamps in microseconds, trajectory_id Arrow's UUID type. Free-form values
(observation, arguments, result, metadata, answer, task spec) are JSON text, Arrow's JSON type,
from orjson (numpy values as numbers and lists, sets and tuples as lists, other objects as their
repr()). A value of another type in a text field (an exception as `error`) is stored as its
str(). `start_time` is an ISO 8601 string (with "Z" or an offset; none means UTC) or a datetime;
anything else raises ValueError at the call, as does a reward, token count or cost that is not a
number.

The same records as JSON lines are what `grokloop ingest` reads from other writers (and the
spool accepts as `*.jsonl`), "v": 1, times as ISO 8601 strings:

  {"type": "trajectory", "trajectory_id", "agent": {name, version, kind, checkpoint},
   "task": {family, task_id, split, operation, difficulty, spec}, "tags", "metadata", "start_time",
   "model"}
  {"type": "step", "trajectory_id", "index", "kind", "observation", "tool_name", "arguments",
   "result", "reward", "status", "error", "metadata", "start_time", "end_time",
   "model", "input_tokens", "output_tokens", "cost_usd", "call_id", "turn"}
  {"type": "outcome", "trajectory_id", "status", "answer", "verified", "reward", "error",
   "n_steps", "end_time"}

Identity is made here (UUIDv7 per trajectory; a step is (trajectory_id, index)), so ingesting
the same records twice is a no-op.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from agents.spool import (
    FORMAT_VERSION,
    RecordBuffer,
    segment_bytes,
    utc_micros,
    uuid7_bytes,
    write_segment,
)
from storage.home import spool_location

__all__ = ["FORMAT_VERSION", "Trajectory", "TrajectoryLogger", "now_iso", "task_ref"]

_second = (-1, "")  # (unix second, its "YYYY-MM-DDTHH:MM:SS." prefix): formatted once a second


def now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds, e.g. "2026-01-02T03:04:05.123456Z"."""
    global _second
    sec, micros = divmod(time.time_ns() // 1000, 1_000_000)
    cached_sec, prefix = _second  # one tuple, so threads never see a second with another's prefix
    if sec != cached_sec:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        _second = (sec, prefix)
    return f"{prefix}{micros:06d}Z"


def _micros(value: Any) -> int:
    """A start time as the wire format wants it: microseconds since the epoch, UTC."""
    if value.__class__ is str and len(value) == 27 and value[26] == "Z":
        sec, prefix = _second  # a now_iso() from this second, the common case: no parsing
        digits = value[20:26]
        if value.startswith(prefix) and digits.isdigit() and digits.isascii():
            return sec * 1_000_000 + int(digits)
    return utc_micros(value)


_now_ns = time.time_ns
_dumps = orjson.dumps
_OPT = orjson.OPT_SERIALIZE_NUMPY
_ROW_BYTES = 80  # a step's typed fields, about, when counting the buffer against flush_bytes


def _fallback(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def _json(value: Any) -> bytes:
    return b"" if value is None else _dumps(value, default=_fallback, option=_OPT)  # b"": null


def _number(value: Any) -> float | None:
    return value if value is None or value.__class__ is float else float(value)


def _count(value: Any, what: str) -> int | None:
    """A token count: None, or a non-negative integer (ValueError otherwise, at the call)."""
    if value is None:
        return None
    if value.__class__ is not int:
        if isinstance(value, bool) or not float(value).is_integer():
            raise ValueError(f"{what} must be a whole number, got {value!r}")
        value = int(value)
    if not 0 <= value < 1 << 63:
        raise ValueError(f"{what} must be a non-negative 64-bit integer, got {value}")
    return value


def task_ref(task: Any) -> dict:
    """A task as the wire format wants it: a mapping, or any object with a `.ref()` method."""
    if task.__class__ is dict:  # the common case, before the slower look for `.ref()`
        ref = task
    else:
        ref = task.ref() if hasattr(task, "ref") else task
        ref = ref if ref.__class__ is dict else dict(ref)
    missing = [k for k in ("family", "task_id") if not ref.get(k)]
    if missing:
        raise ValueError(f"task is missing {', '.join(missing)}: {ref!r}")
    return ref


class TrajectoryLogger:
    """Buffers records and publishes them to the spool by size, by age and at exit."""

    def __init__(
        self,
        agent: str,
        version: str = "0",
        *,
        spool: str | Path | None = None,
        kind: str | None = None,
        checkpoint: str | None = None,
        flush_bytes: int = 1 << 20,
        flush_seconds: float = 2.0,
    ):
        self.agent = {"name": agent, "version": str(version), "kind": kind, "checkpoint": checkpoint}
        self._agent = tuple(self.agent.values())  # as a trajectory record holds them
        self.spool = spool_location(spool)  # a path, or a URL (s3://...): agents/spool.py
        self.flush_bytes = flush_bytes
        self.flush_seconds = flush_seconds
        # Column-wise, one buffer per record type (agents.spool.RecordBuffer); the Arrow columns
        # are built once per flush.
        self._buffers = self._starts = self._steps = self._outcomes = None
        self._new_buffers()
        self._size = 0  # about the bytes buffered, JSON text counted exactly
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()     # the buffer
        self._io_lock = threading.Lock()  # publishing segments, one at a time and in order
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self._closed = False
        self.segments_written = 0
        # A daemon timer flushes a quiet buffer; a weakref so the logger can still be collected.
        self._stop = threading.Event()
        self._timer = threading.Thread(target=_flush_periodically, args=(weakref.ref(self), self._stop),
                                       daemon=True)
        self._timer.start()
        _watch(self)

    def trajectory(
        self,
        task: Any,
        *,
        tags: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
        start_time: Any = None,
        model: str | None = None,
    ) -> Trajectory:
        """A new trajectory; it starts now, or at `start_time` (ISO 8601 or datetime). `model`:
        the model the agent runs on in this trajectory (each step may name its own)."""
        return Trajectory(self, task_ref(task), list(tags), dict(metadata or {}), start_time, model)

    def _new_buffers(self) -> dict[str, RecordBuffer]:
        """Start empty buffers; returns the old ones. Each record type's is also an attribute:
        the Trajectory methods append to them directly."""
        old = self._buffers
        self._buffers = {rtype: RecordBuffer(rtype) for rtype in ("trajectory", "step", "outcome")}
        self._starts, self._steps, self._outcomes = self._buffers.values()
        return old

    def flush(self) -> Path | None:
        """Publish the buffer now (and wait for a segment still being written); returns the new
        segment's path, None if there was nothing to publish."""
        return self._flush(wait=True)

    def _flush(self, *, wait: bool) -> Path | None:
        # A buffer full by size is encoded here, then written (write, fsync, rename) by a
        # background thread so the agent keeps working meanwhile; at most one such write is in
        # flight, and buffers are taken and written in order under `_io_lock`, so segments still
        # sort in write order. (Encoding in that thread too would cost more than it saves: while
        # it holds the GIL, each time the agent's thread lets go of it, it waits to get it back.)
        with self._io_lock:
            self._join_writer()
            with self._lock:
                if not self._size:
                    self._last_flush = time.monotonic()
                    return None
                buffers = self._new_buffers()
                self._size = 0
            data = segment_bytes(buffers)
            if wait:
                return self._publish(data)
            self._writer = threading.Thread(target=self._publish_in_background, args=(data,),
                                            daemon=True)
            self._writer.start()
            return None

    def _publish(self, data: pa.Buffer) -> Path:
        path = write_segment(self.spool, data)
        self._last_flush = time.monotonic()
        self.segments_written += 1
        return path

    def _publish_in_background(self, data: pa.Buffer) -> None:
        try:
            self._publish(data)
        except BaseException as err:  # raised in the agent's thread at its next flush
            self._writer_error = err

    def _join_writer(self) -> None:
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._writer_error is not None:
            err, self._writer_error = self._writer_error, None
            raise err

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        with self._lock:
            self._closed = True
        self._stop.set()
        _LIVE.discard(self)

    def _flush_if_free(self) -> bool:
        """Flush now, from a signal handler, unless the code it interrupted holds this logger's
        locks (it was appending a record or publishing a segment): False then, and nothing done."""
        for lock in (self._io_lock, self._lock):
            if not lock.acquire(blocking=False):
                return False
            lock.release()
        self.flush()  # the locks may be taken meanwhile, but only by another thread: it finishes
        return True

    def __enter__(self) -> TrajectoryLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- exit and signals -------------------------------------------------------------------------

_LIVE: set[TrajectoryLogger] = set()  # loggers not closed yet (strong refs: a buffer is never dropped)
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_previous: dict[int, Any] = {}        # the handler each signal had before ours
_passing: set[int] = set()            # signals to hand straight on (already flushed)
_exit_hook = None


def _watch(logger: TrajectoryLogger) -> None:
    """Flush `logger` at exit and on SIGTERM / SIGINT: the hooks go in with the first logger
    (the signal handlers with the first one made in the main thread: signal.signal's rule)."""
    global _exit_hook
    if not _exit_hook:
        _exit_hook = atexit.register(_close_all)
    if not _previous and threading.current_thread() is threading.main_thread():
        for signum in _SIGNALS:
            _previous[signum] = signal.signal(signum, _on_signal)
    _LIVE.add(logger)


def _close_all() -> None:
    """At exit: close every logger. One that cannot publish its buffer says so in one line and
    the process exits 1 (an exception in an atexit callback would be printed and then ignored)."""
    failed = False
    for logger in list(_LIVE):
        try:
            logger.close()
        except Exception as err:  # noqa: BLE001  (any failure to publish is reported the same way)
            failed = True
            _report_lost(logger, err)
            _LIVE.discard(logger)
    if failed:
        sys.stdout.flush()
        os._exit(1)


def _on_signal(signum: int, frame: Any) -> None:
    if signum not in _passing:
        busy = [logger for logger in list(_LIVE) if not _flush_reporting(logger, now=True)]
        if busy:  # interrupted mid-record: flush once this thread has let go, then signal again
            threading.Thread(target=_flush_then_signal, args=(busy, signum), daemon=True).start()
            return
    _passing.discard(signum)
    previous = _previous.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:  # the default (or a handler not set from Python): die of it
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _flush_then_signal(loggers: list[TrajectoryLogger], signum: int) -> None:
    for logger in loggers:
        _flush_reporting(logger, now=False)
    _passing.add(signum)
    os.kill(os.getpid(), signum)


def _flush_reporting(logger: TrajectoryLogger, *, now: bool) -> bool:
    """Flush for a signal (`now`: only if the interrupted code holds none of its locks). A
    failure is one line, never an exception: the signal must still do what it would have."""
    try:
        if now:
            return logger._flush_if_free()
        logger.flush()
    except Exception as err:  # noqa: BLE001  (any failure to publish is reported the same way)
        _report_lost(logger, err)
    return True


def _report_lost(logger: TrajectoryLogger, err: Exception) -> None:
    what = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) and err.strerror else err
    print(f"grokloop: could not publish the last records of agent {logger.agent['name']!r} "
          f"to {logger.spool} ({what}); they are lost", file=sys.stderr, flush=True)


def _flush_periodically(ref: weakref.ref, stop: threading.Event) -> None:
    while True:
        logger = ref()
        if logger is None:
            return
        interval = logger.flush_seconds
        due = logger._size and time.monotonic() - logger._last_flush >= interval
        if due and not logger._closed:
            logger.flush()
        del logger
        if stop.wait(min(interval, 0.5)):
            return


class Trajectory:
    """One attempt at one task. Use as a context manager via `TrajectoryLogger.trajectory`."""

    def __init__(self, logger: TrajectoryLogger, task: dict, tags: list[str], metadata: dict,
                 start_time: Any = None, model: str | None = None):
        self._start = _now_ns() // 1000 if start_time is None else _micros(start_time)
        self.logger = logger
        self._key = key = uuid7_bytes()  # what the segment holds; `id` is its text
        self.task = task
        self.n_steps = 0
        self.finished = False
        difficulty = task.get("difficulty")
        if difficulty is not None:
            difficulty = int(difficulty)
            if not -(1 << 31) <= difficulty < 1 << 31:  # the column is int32: refused here, not at flush
                raise ValueError(f"task difficulty {difficulty} does not fit in 32 bits")
        m, s = _json(metadata), _json(task.get("spec"))
        name, version, kind, checkpoint = logger._agent
        # RecordBuffer appends inlined, as in step(): a call per column costs more than the rest.
        with logger._lock:
            if logger._closed:
                raise RuntimeError("TrajectoryLogger is closed")
            (keys, tag_lists, starts, names, versions, kinds, checkpoints, families, task_ids, splits,
             operations, difficulties, models) = logger._starts.columns
            keys.append(key)
            tag_lists.append(tags)
            starts.append(self._start)
            names.append(name)
            versions.append(version)
            kinds.append(kind)
            checkpoints.append(checkpoint)
            families.append(task["family"])
            task_ids.append(task["task_id"])
            splits.append(task.get("split"))
            operations.append(task.get("operation"))
            difficulties.append(difficulty)
            models.append(model)
            m_data, s_data = logger._starts.json
            m_ends, s_ends = logger._starts.ends
            m_data += m
            m_ends.append(len(m_data))
            s_data += s
            s_ends.append(len(s_data))
            logger._size += _ROW_BYTES + len(m) + len(s)
            due = logger._size >= logger.flush_bytes
        if due:
            logger._flush(wait=False)

    @property
    def id(self) -> str:
        return str(uuid.UUID(bytes=self._key))

    def step(
        self,
        *,
        kind: str = "tool_call",
        observation: Any = None,
        tool_name: str | None = None,
        arguments: Any = None,
        result: Any = None,
        reward: float | None = None,
        status: str = "ok",
        error: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        start_time: str | None = None,
        model: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cost_usd: float | None = None,
        call_id: str | None = None,
        turn: int | None = None,
    ) -> int:
        """Record one step; returns its index.

        A model call: `model`, `input_tokens`, `output_tokens`, `cost_usd`. Parallel tool calls:
        one step per call, each with its `call_id`, all with the `turn` of the step that asked
        for them (that step's index)."""
        if self.finished:
            raise RuntimeError(f"trajectory {self.id} is finished; no more steps")
        end = _now_ns() // 1000
        start = end if start_time is None else _micros(start_time)  # before taking an index
        if start_time is not None and start < self._start:
            raise ValueError(f"step start_time {start_time!r} is before its trajectory's start; "
                             "open the trajectory first, or pass trajectory(start_time=...)")
        if reward is not None and reward.__class__ is not float:
            reward = float(reward)
        # The usage fields go in as one tuple (None for the common step that has none): six more
        # appends per step cost the SDK ~15% of a step.
        usage = None
        if model is not None or input_tokens is not None or output_tokens is not None \
                or cost_usd is not None or call_id is not None or turn is not None:
            if turn is not None and not 0 <= int(turn) <= self.n_steps:
                raise ValueError(f"turn {turn} is not the index of an earlier step (or this one)")
            usage = (model, _count(input_tokens, "input_tokens"), _count(output_tokens, "output_tokens"),
                     _number(cost_usd), call_id, None if turn is None else int(turn))
        index = self.n_steps
        self.n_steps = index + 1
        # The hot path: _json and the RecordBuffer appends inlined; calling them makes the SDK
        # ~45% slower per step (bench/ingest.py end to end).
        o = b"" if observation is None else _dumps(observation, default=_fallback, option=_OPT)
        a = b"" if arguments is None else _dumps(arguments, default=_fallback, option=_OPT)
        r = b"" if result is None else _dumps(result, default=_fallback, option=_OPT)
        m = _dumps(metadata, default=_fallback, option=_OPT) if metadata else b""
        logger = self.logger
        lock = logger._lock
        lock.acquire()  # not `with`: that costs twice as much, a tenth of this call
        try:
            if logger._closed:
                raise RuntimeError("TrajectoryLogger is closed")
            buffer = logger._steps
            keys, indexes, kinds, tools, rewards, statuses, errors, starts, ends = buffer.columns
            keys.append(self._key)
            indexes.append(index)
            kinds.append(kind)
            tools.append(tool_name)
            rewards.append(reward)
            statuses.append(status)
            errors.append(error)
            starts.append(start)
            ends.append(end)
            buffer.usage.append(usage)
            o_data, a_data, r_data, m_data = buffer.json
            o_ends, a_ends, r_ends, m_ends = buffer.ends
            o_data += o
            o_ends.append(len(o_data))
            a_data += a
            a_ends.append(len(a_data))
            r_data += r
            r_ends.append(len(r_data))
            m_data += m
            m_ends.append(len(m_data))
            logger._size += _ROW_BYTES + len(o) + len(a) + len(r) + len(m)
            due = logger._size >= logger.flush_bytes
        finally:
            lock.release()
        if due:
            logger._flush(wait=False)
        return index

    def finish(
        self,
        *,
        answer: Any = None,
        verified: bool | None = None,
        reward: float | None = None,
        status: str = "ok",
        error: str | None = None,
    ) -> None:
        if self.finished:
            raise RuntimeError(f"trajectory {self.id} already finished")
        verified = None if verified is None else bool(verified)
        reward = _number(reward)
        text = _json(answer)
        self.finished = True  # only once the outcome's values are good: a refused call can be retried
        logger = self.logger
        with logger._lock:
            if logger._closed:
                raise RuntimeError("TrajectoryLogger is closed")
            keys, statuses, verifieds, rewards, errors, n_steps, ends = logger._outcomes.columns
            keys.append(self._key)
            statuses.append(status)
            verifieds.append(verified)
            rewards.append(reward)
            errors.append(error)
            n_steps.append(self.n_steps)
            ends.append(_now_ns() // 1000)
            a_data, = logger._outcomes.json
            a_ends, = logger._outcomes.ends
            a_data += text
            a_ends.append(len(a_data))
            logger._size += _ROW_BYTES + len(text)
            due = logger._size >= logger.flush_bytes
        if due:
            logger._flush(wait=False)

    def __enter__(self) -> Trajectory:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.finished:
            return False
        if exc is not None:
            self.finish(status="error", verified=False, error=f"{exc_type.__name__}: {exc}")
        else:
            self.finish()
        return False  # never swallow the agent's exception
