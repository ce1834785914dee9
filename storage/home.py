"""Where grokloop keeps everything: one directory (DESIGN decision 9)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = ".grokloop"


def grokloop_home(home: str | os.PathLike | None = None) -> Path:
    """The home directory: the argument, else $GROKLOOP_HOME, else ./.grokloop. Only resolved:
    what writes there makes the folders it needs, so a command that only reads (`grokloop sql`
    in the wrong directory) leaves no empty home behind."""
    return Path(home or os.environ.get("GROKLOOP_HOME") or DEFAULT_HOME).expanduser().resolve()


def is_url(location: str | os.PathLike | None) -> bool:
    """Whether a spool (or other home folder) is a URL read and written through fsspec
    (`s3://bucket/prefix/spool`, `gs://...`, `memory://...`), not a local or mounted path. A
    `file://` URL is a local path (`local_path`): it keeps the rename-based publishing."""
    text = str(location or "")
    return "://" in text and not text.startswith("file://")


def local_path(location: str | os.PathLike) -> Path:
    """A local path, or a `file://` URL, as a Path."""
    text = str(location)
    return Path(text.removeprefix("file://")) if text.startswith("file://") else Path(location)


def spool_location(spool: str | os.PathLike | None = None, home: str | os.PathLike | None = None
                   ) -> Path | str:
    """The spool: `spool` when given (a path, or a URL such as `s3://bucket/prefix/spool` so that
    agents on other machines publish there), else <home>/spool. A URL stays a string."""
    if not spool:
        return spool_dir(home)
    return str(spool).rstrip("/") if is_url(spool) else local_path(spool).expanduser().resolve()


def store_path(home: str | os.PathLike | None = None) -> Path:
    """The embedded store's file (the default store)."""
    return grokloop_home(home) / "store.duckdb"


def store_location(home: str | os.PathLike | None = None) -> Path | str:
    """The store to open: $GROKLOOP_STORE when set (`ducklake:postgres://...`, the shared store
    of storage/lake.py, or a DuckDB file), else the embedded file <home>/store.duckdb."""
    chosen = os.environ.get("GROKLOOP_STORE")
    if chosen:
        return chosen if chosen.startswith("ducklake:") else Path(chosen).expanduser().resolve()
    return store_path(home)


def spool_dir(home: str | os.PathLike | None = None) -> Path:
    return grokloop_home(home) / "spool"


def datasets_dir(home: str | os.PathLike | None = None) -> Path:
    return grokloop_home(home) / "datasets"


def runs_dir(home: str | os.PathLike | None = None) -> Path:
    return grokloop_home(home) / "runs"


def has_store(home=None) -> bool:
    """Whether there is a store to read: the embedded file exists, or $GROKLOOP_STORE names a
    shared one (storage/lake.py)."""
    store = store_location(home)
    return not isinstance(store, Path) or store.is_file()
