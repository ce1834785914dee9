"""The shared store: the same schema, views and SQL on DuckLake (DESIGN decision 10).

`GROKLOOP_STORE=ducklake:postgres://user:password@host:5432/dbname` (or `--store` on the CLI)
puts the store's catalog in PostgreSQL and its data in Parquet files under `<home>/lake/`, or
under any path DuckDB can write, given as `?data_path=s3://bucket/prefix/` (read and written
through httpfs, with the credentials in the usual AWS_* variables). Then several ingest workers on
different machines append at once and researchers query while they do, in plain DuckDB SQL: a
DuckLake reader reads a snapshot and never waits for a writer, and no writer waits for a reader.

Extensions. DuckDB cannot download extensions here, so they come from PyPI as wheels built for
the pinned DuckDB (`duckdb-extension-ducklake`, `-postgres-scanner`, `-httpfs`, all 1.5.5): each
wheel holds the extension file at `duckdb_extension_<name>/extensions/v<duckdb version>/<name>
.duckdb_extension`, and `load_extensions` LOADs it by that path (autoinstall and autoload stay off).

What DuckLake does not have, and what stands in for it:
- No PRIMARY KEY, UNIQUE or indexes. The migrations run with their key clauses removed
  (`without_keys`), and the keys' work is done by ingest: every batch looks for duplicate keys
  in its own records (`storage/sql/ingest.sql`, `duplicates`) and anti-joins what is stored.
- Exactly-once across concurrent writers. Segment digests are recorded in `ingest_log` in the
  batch's own transaction, as in the embedded store; what the file lock did there (one writer at
  a time) is done by claims: before its transaction starts, a worker claims each segment's digest
  and its producer (the agent process that wrote it: segments of one producer are ingested in
  order, by one worker at a time, so an outcome never arrives before its trajectory's start)
  with one atomic INSERT ... ON CONFLICT in a PostgreSQL table beside the catalog
  (`storage/sql/lake.sql`). A segment it could not claim is another worker's: it is left in the
  spool. A claim is released after the commit; one whose worker died is taken over after
  CLAIM_SECONDS, and the digest in `ingest_log` then makes the taker skip what was committed.
- Concurrent writers are optimistic: DuckLake retries a commit by itself when the changes are
  compatible (appends), and refuses it when they are not (e.g. one completes a stored
  trajectory, an UPDATE, while another appends to the same table); the batch is then run again
  from its start on a fresh snapshot (`is_conflict`). A batch that adds new agents or tasks also
  updates the one row of `lake_serial`, so two such batches conflict and one runs again: a task
  first seen by two workers at once is stored once.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from importlib import resources, util
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import duckdb
import xxhash

PREFIX = "ducklake:"
CATALOG = "lake"                  # the DuckLake database's name in a connection
CLAIMS_DB = "lake_claims"         # the catalog's PostgreSQL database, attached for the claims
CLAIM_SECONDS = 900.0             # a claim older than this is its dead worker's: taken over
CONFLICT_RETRIES = 20             # a batch that meets a conflicting commit runs again this often


class LakeError(RuntimeError):
    """The DuckLake store cannot be opened; the message says why and what to do."""


def is_lake(location: str | os.PathLike | None) -> bool:
    return str(location or "").startswith(PREFIX)


def postgres_conninfo(location: str) -> tuple[str, str | None]:
    """(libpq connection string, data path or None) from `ducklake:postgres://user:pw@host:port/db
    ?data_path=...` or DuckLake's own `ducklake:postgres:dbname=db host=...`."""
    spec = location.removeprefix(PREFIX)
    if spec.startswith(("postgres://", "postgresql://")):
        url = urlsplit(spec)
        if not url.path.strip("/"):
            raise LakeError(f"{location!r} names no database: ducklake:postgres://user@host:5432/dbname")
        parts = {"dbname": unquote(url.path.strip("/")), "host": url.hostname, "port": url.port,
                 "user": unquote(url.username) if url.username else None,
                 "password": unquote(url.password) if url.password else None}
        conninfo = " ".join(f"{k}={_libpq_value(str(v))}" for k, v in parts.items() if v)
        data_path = parse_qs(url.query).get("data_path", [None])[0]
        return conninfo, data_path
    if spec.startswith("postgres:"):
        return spec.removeprefix("postgres:"), None
    raise LakeError(f"unknown store {location!r}: expected ducklake:postgres://user@host:5432/dbname "
                    f"(the DuckLake catalog in PostgreSQL)")


def _libpq_value(value: str) -> str:
    return value if re.fullmatch(r"[\w.@:/-]+", value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def extension_path(name: str) -> Path:
    """The extension file the `duckdb-extension-<name>` wheel ships for this DuckDB."""
    spec = util.find_spec(f"duckdb_extension_{name}")
    path = (Path(spec.origin).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
            if spec and spec.origin else None)
    if path is None or not path.is_file():
        raise LakeError(f"the DuckLake store needs the {name} extension for DuckDB {duckdb.__version__}: "
                        f"pip install duckdb-extension-{name.replace('_', '-')}=={duckdb.__version__}")
    return path


def load_extensions(con: duckdb.DuckDBPyConnection, *, remote_data: bool) -> None:
    names = ["postgres_scanner", "ducklake"] + (["httpfs"] if remote_data else [])
    for name in names:
        con.execute(f"LOAD {_sql_text(str(extension_path(name)))}")


def data_location(data_path: str | None, home: Path) -> str:
    """Where the Parquet files go: the URL's `data_path`, else `<home>/lake/` (made if missing)."""
    if data_path:
        return data_path.rstrip("/") + "/"
    folder = home / "lake"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LakeError(f"cannot create the DuckLake data folder {folder}: {err.strerror} "
                        f"(set GROKLOOP_HOME to a writable directory, or data_path= in GROKLOOP_STORE)") from err
    return str(folder) + "/"


def _s3_secret(con: duckdb.DuckDBPyConnection) -> None:
    """Credentials for an s3:// data path, from the variables the AWS tools read."""
    env = os.environ
    if not env.get("AWS_ACCESS_KEY_ID"):
        return  # a role, an instance profile or a public bucket: httpfs's defaults
    options = {"KEY_ID": env["AWS_ACCESS_KEY_ID"], "SECRET": env.get("AWS_SECRET_ACCESS_KEY", ""),
               "REGION": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if endpoint := env.get("AWS_ENDPOINT_URL"):  # MinIO, moto, another S3
        url = urlsplit(endpoint)
        options |= {"ENDPOINT": url.netloc, "URL_STYLE": "path", "USE_SSL": str(url.scheme == "https").lower()}
    body = ", ".join(f"{k} {v if k == 'USE_SSL' else _sql_text(v)}" for k, v in options.items())
    con.execute(f"CREATE SECRET lake_s3 (TYPE s3, {body})")


def connect(location: str, *, read_only: bool, home: Path, reader_config: dict) -> duckdb.DuckDBPyConnection:
    """A connection whose default database is the DuckLake store at `location`. A reader gets
    `reader_config` (storage/store.py's sandbox) once the store is attached, with the data path as
    the one place it may read files from; a writer also attaches the catalog's PostgreSQL
    database for the claims."""
    conninfo, data_path = postgres_conninfo(location)
    data = data_location(data_path, home)
    remote = "://" in data
    # Set when the connection is made (fixed once it is in use). Not allow_persistent_secrets:
    # DuckLake needs the secret manager as it is (CREATE SECRET is refused by `sql` anyway).
    fixed = ("autoinstall_known_extensions", "autoload_known_extensions", "allow_persistent_secrets")
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False,
                                             **{k: v for k, v in reader_config.items()
                                                if k in fixed[:2] and read_only}})
    try:
        load_extensions(con, remote_data=remote)
        if remote:
            _s3_secret(con)
        options = f"DATA_PATH {_sql_text(data)}" + (", READ_ONLY" if read_only else "")
        _attach(con, f"ATTACH {_sql_text('ducklake:postgres:' + conninfo)} AS {CATALOG} ({options})")
        con.execute(f"USE {CATALOG}")
        if read_only:
            con.execute(f"SET allowed_directories = [{_sql_text(data)}]")
            # External access off and the configuration locked last: each stops the ones before.
            last = ("enable_external_access", "lock_configuration")
            for name, value in sorted(reader_config.items(), key=lambda item: last.index(item[0])
                                      if item[0] in last else -1):
                if name in fixed:  # set when the connection was made: fixed once it is in use
                    continue
                shown = str(value).lower() if isinstance(value, bool) else _sql_text(str(value))
                con.execute(f"SET {name} = {shown}")
        else:
            con.execute(f"ATTACH {_sql_text(conninfo)} AS {CLAIMS_DB} (TYPE postgres)")
    except duckdb.Error as err:
        con.close()
        raise LakeError(_open_error(err, conninfo)) from err
    return con


def _attach(con: duckdb.DuckDBPyConnection, attach: str, tries: int = 5) -> None:
    """ATTACH the lake. Two workers that find the catalog empty both create DuckLake's tables and
    one fails ("already exists"); on the next try it finds them made."""
    for attempt in range(tries):
        try:
            con.execute(attach)
            return
        except duckdb.Error as err:
            racing = "already exists" in str(err) or "duplicate key" in str(err)
            if not racing or attempt == tries - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _open_error(err: duckdb.Error, conninfo: str) -> str:
    shown = re.sub(r"password=\S+", "password=***", conninfo)
    first = str(err).splitlines()[0]
    if "connect" in first.lower() or "connection" in first.lower():
        return (f"cannot reach the DuckLake catalog (PostgreSQL: {shown}): {first}. Is the server "
                f"running, and does the database exist (createdb)? Check GROKLOOP_STORE")
    return f"cannot open the DuckLake store (PostgreSQL: {shown}): {first}"


def is_conflict(err: BaseException | None) -> bool:
    """Whether `err` (or what caused it) is DuckLake refusing a commit that conflicts with one made
    meanwhile: the work is run again on a fresh snapshot."""
    while err is not None:
        text = str(err)
        if isinstance(err, duckdb.Error) and ("Transaction conflict" in text or "conflict" in text.lower()
                                              and "DuckLake" in text):
            return True
        err = err.__cause__
    return False


def retry_conflicts(run, what: str):
    """`run()` again while DuckLake refuses its commit for a conflict (with a growing, jittered
    pause); a LakeError naming `what` when it never gets through."""
    delay = 0.02
    for _ in range(CONFLICT_RETRIES):
        try:
            return run()
        except Exception as err:
            if not is_conflict(err):
                raise
            time.sleep(delay * (1 + uuid.uuid4().int % 100 / 100))
            delay = min(delay * 2, 1.0)
    raise LakeError(f"{what}: {CONFLICT_RETRIES} commits in a row met a concurrent writer's "
                    f"conflicting commit; nothing was stored, run it again")


def without_keys(sql: str) -> str:
    """A migration's DDL for DuckLake, which has no PRIMARY KEY or UNIQUE: the same tables and
    columns with the key clauses removed (ingest does their work, see the module docstring)."""
    sql = re.sub(r",\s*PRIMARY KEY\s*\([^)]*\)", "", sql)
    return re.sub(r"\s+(PRIMARY KEY|UNIQUE)\b", "", sql)


def _blocks() -> dict[str, str]:
    """storage/sql/lake.sql by block name (as storage.store.sql_blocks, which imports this module)."""
    text = resources.files("storage.sql").joinpath("lake.sql").read_text()
    parts = re.split(r"^-- name: (\w+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def ensure_lake_tables(con: duckdb.DuckDBPyConnection) -> None:
    """The lake-only tables: the views' digest and the serializing row (DuckLake), the claims
    (PostgreSQL). Idempotent."""
    blocks = _blocks()
    con.execute(blocks["lake_tables"])
    con.execute(f"CALL postgres_execute('{CLAIMS_DB}', {_sql_text(blocks['claims_table'])})")


def ensure_views(con: duckdb.DuckDBPyConnection, views_sql: str) -> None:
    """(Re)create the views only when views.sql changed: a DDL change on every open would make
    concurrent writers' commits conflict."""
    digest = xxhash.xxh3_128_hexdigest(views_sql.encode())
    if con.execute("SELECT count(*) FROM lake_views WHERE digest = ?", [digest]).fetchall()[0][0]:
        return

    def replace() -> None:
        con.execute("BEGIN")
        try:
            con.execute(views_sql)
            con.execute("DELETE FROM lake_views")
            con.execute("INSERT INTO lake_views VALUES (?)", [digest])
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise

    retry_conflicts(replace, "creating the views")


def serialize_new_keys(con: duckdb.DuckDBPyConnection) -> None:
    """Called inside a batch that adds agents or tasks: see the module docstring."""
    con.execute(_blocks()["serialize"])


# -- claims ---------------------------------------------------------------------------------------

_HOLDER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
_SEGMENT_NAME = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-(.+)\.\w+$")


def producer(source: str) -> str | None:
    """The process that wrote a spool segment (`<uuid7>-<prefix>-<pid>.arrow`, storage/spool.py),
    whose segments must be ingested in order; None for another file."""
    match = _SEGMENT_NAME.match(source.rsplit("/", 1)[-1])
    return f"producer:{match[1]}" if match else None


def _key_list(keys: list[str]) -> str:
    # Keys are hex digests and segment-name parts; quoted for PostgreSQL all the same.
    return "ARRAY[" + ", ".join(map(_sql_text, keys)) + "]::text[]"


def _claims_sql(name: str, keys: list[str]) -> str:
    sql = (_blocks()[name].replace(":holder", _sql_text(_HOLDER)).replace(":keys", _key_list(keys))
           .replace(":seconds", str(float(CLAIM_SECONDS))))
    return sql.strip().rstrip(";")


def _claim_statement(con: duckdb.DuckDBPyConnection, sql: str, tries: int = 20) -> None:
    """Run the claim. The postgres extension runs it at REPEATABLE READ, where two workers that
    upsert the same key at once make one fail to serialize: that one tries again."""
    for attempt in range(tries):
        try:
            con.execute(f"CALL postgres_execute('{CLAIMS_DB}', {_sql_text(sql)})")
            return
        except duckdb.Error as err:
            if "could not serialize" not in str(err) or attempt == tries - 1:
                raise
            time.sleep(0.01 * (1 + uuid.uuid4().int % 100 / 20))


def claim(con: duckdb.DuckDBPyConnection, segments: list[tuple[str, str]],
          refused: set[str]) -> set[str]:
    """Claim (digest, source) segments for this worker; the digests it holds now. A segment
    counts as held only when its digest and its producer are both this worker's. `refused`: the
    producers another worker held earlier in this ingest, added to here. Their later segments are
    left to that worker too, not claimed when it lets go between two batches: a worker takes a
    producer's segments in order, so one that skipped a segment must skip the ones after it."""
    segments = [(d, s) for d, s in segments if producer(s) not in refused]
    keys = sorted({k for digest, source in segments for k in (digest, producer(source)) if k})
    if not keys:
        return set()
    _claim_statement(con, _claims_sql("claim", keys))
    mine = {r[0] for r in con.execute(
        f"SELECT key FROM postgres_query('{CLAIMS_DB}', {_sql_text(_claims_sql('held', keys))})").fetchall()}
    refused |= {producer(s) for _, s in segments if producer(s) and producer(s) not in mine}
    return {digest for digest, source in segments
            if digest in mine and (producer(source) is None or producer(source) in mine)}


def release(con: duckdb.DuckDBPyConnection, segments: list[tuple[str, str]]) -> None:
    keys = sorted({k for digest, source in segments for k in (digest, producer(source)) if k})
    if keys:
        con.execute(f"CALL postgres_execute('{CLAIMS_DB}', {_sql_text(_claims_sql('release', keys))})")


@contextlib.contextmanager
def claimed(con: duckdb.DuckDBPyConnection, segments: list[tuple[str, str]],
            refused: set[str]) -> Iterator[set[str]]:
    """`with claimed(con, [(digest, source), ...], refused) as mine:` the digests this worker may
    ingest (`claim`); released on the way out, committed or not."""
    mine = claim(con, segments, refused)
    try:
        yield mine
    finally:
        with contextlib.suppress(duckdb.Error):  # a dead connection: the claims expire instead
            release(con, segments)  # only this worker's claims go, partial ones included
