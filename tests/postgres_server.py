"""A throwaway PostgreSQL server for the shared-store tests (the DuckLake catalog)."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    raise RuntimeError("PostgreSQL is not installed (the shared-store tests start one): `make setup` "
                       "installs it, or apt-get install postgresql")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    root: Path
    port: int
    bindir: Path
    as_user: list[str]
    _names = itertools.count()

    @classmethod
    def start(cls) -> PostgresServer:
        bindir = _bindir()
        root = Path(tempfile.mkdtemp(prefix="grokloop-pg-"))
        as_user = []
        if os.geteuid() == 0:  # initdb refuses to run as root: as Debian's postgres user
            shutil.chown(root, "postgres")
            as_user = ["runuser", "-u", "postgres", "--"]
        server = cls(root, _free_port(), bindir, as_user)
        server._run("initdb", "-D", str(root / "data"), "-A", "trust", "-U", "grokloop", "--no-sync")
        server._run("pg_ctl", "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-o",
                    f"-h 127.0.0.1 -p {server.port} -k {root} -F -c max_connections=200", "start")
        return server

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bindir / tool), *args], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{tool} failed: {done.stderr or done.stdout}")

    def new_store(self) -> str:
        """A new, empty database; the GROKLOOP_STORE URL of a DuckLake store in it."""
        name = f"lake_{os.getpid()}_{next(self._names)}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "grokloop", name)
        return f"ducklake:postgres://grokloop@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
