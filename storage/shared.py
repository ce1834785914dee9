"""The shared home: where runs' checkpoints and dataset exports go so that other machines read them.

    shared_home = "s3://bucket/prefix"      # any fsspec URL (s3fs for s3://); the store stays local
    <shared_home>/runs/<run_id>/...         checkpoints, the `latest` pointer, eval_rows.json, config.json
    <shared_home>/datasets/<dataset_id>/... a snapshot's export (meta.json, <split>.parquet, hf/)

A file is published as one object, written whole under its final name (a PUT either completes or
leaves nothing): a reader never sees half of one. A directory (a checkpoint, an export) is
published file by file and is only referred to once all of it is there (a checkpoint by the
`latest` pointer, written last; an export by meta.json, written last). Objects cannot be renamed
atomically, so nothing is written to a temporary name and moved. A local path is handled by the
callers as before (write, fsync, rename); this module is for URLs only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from storage.home import is_url


def check_shared_home(shared_home: str | None) -> None:
    """A shared home is a URL; on a shared filesystem, the home itself goes there."""
    if shared_home and not is_url(shared_home):
        raise ValueError(f"shared_home must be a URL such as s3://bucket/prefix, got {shared_home!r}; "
                         "on a shared filesystem, put the home itself there (home=/mnt/shared/grokloop)")


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def _fs(url: str):
    from fsspec.core import url_to_fs  # fsspec (and s3fs) only where a URL is used

    return url_to_fs(url)


def write_bytes(url: str, data: bytes) -> None:
    """One object, whole: a reader sees the old one, or none, until this one is complete."""
    fs, path = _fs(url)
    fs.pipe_file(path, data)


def read_bytes(url: str) -> bytes | None:
    """The object's bytes, or None when there is none."""
    fs, path = _fs(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def exists(url: str) -> bool:
    fs, path = _fs(url)
    fs.invalidate_cache(path)  # another machine may have written it since this process last listed
    return fs.exists(path)


def publish_dir(local: Path, url: str, last: str | None = None) -> None:
    """Every file under `local` as an object under `url`; `last` (a file name) after all the others,
    so a reader that waits for it finds the rest complete."""
    fs, root = _fs(url)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == last)  # stable: `last` moves to the end
    for path in files:
        fs.put_file(str(path), f"{root.rstrip('/')}/{path.relative_to(local).as_posix()}")


def fetch_dir(url: str, local: Path) -> Path:
    """A copy of the objects under `url` at `local` (downloaded beside it, then renamed in)."""
    fs, root = _fs(url)
    tmp = local.parent / f".fetch_{local.name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    for path in fs.find(root):
        target = tmp / path[len(root) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(target))
    if local.is_dir():  # another process fetched it meanwhile: the same objects
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, local)
    return local


def local_copy(url: str, complete: str) -> Path:
    """A published directory (a checkpoint, an export) as a local one: fetched into this machine's
    temporary directory once `complete` (the file published last) is there, and reused while that
    file is the same object (its checksum is in the copy's name: a re-published one is fetched anew,
    and the copies of its earlier versions are removed, so the cache holds one copy per URL). So
    `complete` must differ between versions (a checkpoint's grokloop.json says when it was saved):
    S3's checksum is the object's content hash, and the same bytes republished are the same version."""
    marker = join(url, complete)
    fs, path = _fs(marker)
    fs.invalidate_cache(path)
    try:
        version = str(fs.checksum(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{url} has no {complete}: not published, or not completely") from None
    url_key, version_key = (hashlib.sha256(k.encode()).hexdigest()[:12] for k in (url, f"{url}\n{version}"))
    cache = Path(tempfile.gettempdir()) / "grokloop-shared"
    local = cache / f"{url_key}-{version_key}-{url.rstrip('/').rsplit('/', 1)[-1]}"
    if not (local / complete).is_file():
        cache.mkdir(parents=True, exist_ok=True)
        fetch_dir(url, local)
        for stale in cache.glob(f"{url_key}-*"):
            if stale != local:
                shutil.rmtree(stale, ignore_errors=True)
    return local


def children(url: str) -> list[str]:
    """The names directly under `url` (none when there is nothing there)."""
    fs, path = _fs(url)
    fs.invalidate_cache(path)
    try:
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def remove(url: str) -> None:
    fs, path = _fs(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)
