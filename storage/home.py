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


def store_path(home: str | os.PathLike | None = None) -> Path:
    return grokloop_home(home) / "store.duckdb"


def spool_dir(home: str | os.PathLike | None = None) -> Path:
    return grokloop_home(home) / "spool"


def datasets_dir(home: str | os.PathLike | None = None) -> Path:
    return grokloop_home(home) / "datasets"


def runs_dir(home: str | os.PathLike | None = None) -> Path:
    return grokloop_home(home) / "runs"
