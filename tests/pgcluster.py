"""A real, throwaway PostgreSQL cluster for the tests (initdb + pg_ctl in a temp directory).

PostgreSQL refuses to run as root, and CI runs as root: the cluster then runs as the `postgres`
system user (Debian's packages create it). Host connections use scram-sha-256 passwords, so the
tests exercise the same authentication as production; the superuser is `postgres`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

SUPERUSER = "postgres"


def _pg_bin(name: str) -> str:
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install postgresql (apt-get install postgresql)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(cmd: Sequence[str]) -> list[str]:
    if os.geteuid() != 0:
        return list(cmd)
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *cmd]


@dataclass
class PostgresCluster:
    """One running cluster on 127.0.0.1:<port>."""

    root: Path
    port: int
    password: str = field(default_factory=lambda: uuid.uuid4().hex)
    host: str = "127.0.0.1"

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @classmethod
    def create(cls) -> PostgresCluster:
        root = Path(tempfile.mkdtemp(prefix="aio-pg-"))
        cluster = cls(root=root, port=free_port())
        pwfile = root / "pw"
        pwfile.write_text(cluster.password)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [
                    _pg_bin("initdb"),
                    "-D",
                    str(cluster.datadir),
                    "-U",
                    SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            check=True,
            capture_output=True,
        )
        cluster.start()
        return cluster

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([_pg_bin("pg_ctl"), "-D", str(self.datadir), *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        opts = (
            f"-c listen_addresses={self.host} -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._ctl("start", "-w", "-l", str(self.root / "log"), "-o", opts)

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-w", "-m", mode)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(
        self, user: str = SUPERUSER, password: str | None = None, dbname: str = "postgres"
    ) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{quote(user)}:{quote(pw)}@{self.host}:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket; return stdout."""
        out = subprocess.run(
            [
                _pg_bin("psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-h",
                str(self.root),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                dbname,
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout

    def create_database(self, name: str | None = None) -> str:
        """A fresh, empty database; returns its name."""
        dbname = name or f"db_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{dbname}"')
        return dbname
