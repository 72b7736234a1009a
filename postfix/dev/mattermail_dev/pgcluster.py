"""A private PostgreSQL cluster for the tests and the dev stack, the way they run a private Postfix.

:func:`start` runs Debian's ``initdb`` in a new temp directory and starts ``postgres`` listening on
127.0.0.1 at a free port, its unix socket in that directory, ``fsync`` on (commits are as durable as
SQLite's ``synchronous=FULL``), trust authentication for local connections only. :func:`Cluster.stop`
stops it and removes the directory. PostgreSQL refuses to run as root: as root the cluster belongs to the
``postgres`` system user (``runuser``), which owns the directory.

    with pgcluster.start() as pg:
        url = pg.create_database("mm1")    # postgresql://postgres@127.0.0.1:PORT/mm1

:func:`open_persistent` keeps the cluster in a directory of its own across runs (the dev stack's
``var/postgresql``): made on first use, started if it is not running, stopped (not removed) by ``stop``.

The binaries: ``$MATTERMAIL_PG_BIN`` (a directory), else the newest ``/usr/lib/postgresql/*/bin`` (Debian's
``postgresql`` package; packaging/dev-deps.sh installs it), else ``initdb`` on the PATH.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PG_BIN_ENV = "MATTERMAIL_PG_BIN"
SUPERUSER = "postgres"


class ClusterError(RuntimeError):
    """The cluster cannot be made or started; the message says what to install or where to look."""


def find_bin() -> Path:
    """The directory holding initdb, pg_ctl and postgres; ClusterError naming the fix when there is none."""
    given = os.environ.get(PG_BIN_ENV, "").strip()
    if given:  # only there: a wrong setting is an error, not a fallback
        candidates = [Path(given)]
    else:
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).parent)
    for d in candidates:
        if all((d / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return d
    raise ClusterError("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found"
                       + (f" in ${PG_BIN_ENV}={given}" if given else " under /usr/lib/postgresql/*/bin or on the PATH")
                       + ": install Debian's 'postgresql' package (make deps does, as root), or set "
                       + f"{PG_BIN_ENV} to the directory that holds them")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path  # the temp directory: data/, the socket, the log
    port: int
    bin: Path
    owner: str | None  # the system user the server runs as (None: this process's user)
    keep: bool = False  # stop() leaves the directory (open_persistent)

    host = "127.0.0.1"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def sql(self, statement: str, dbname: str = "postgres") -> None:
        """Run one statement as the superuser (autocommit: CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            conn.execute(statement)

    def sql_value(self, statement: str, dbname: str = "postgres") -> object:
        """The first column of the first row of one statement, as the superuser."""
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            return conn.execute(statement).fetchone()[0]

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database (copied from ``template`` when given); its URL."""
        self.sql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def running(self) -> bool:
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "status"]
        if self.owner is not None:
            argv = ["runuser", "-u", self.owner, "--", *argv]
        return subprocess.run(argv, capture_output=True, cwd="/").returncode == 0

    def database_exists(self, name: str) -> bool:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None

    def stop(self) -> None:
        """Stop the server (fast: open connections are closed) and remove its directory (unless kept)."""
        try:
            if (self.data / "postmaster.pid").exists():
                _run(self.owner, [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])
        finally:
            if not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server (fast: open connections are closed), keeping its directory: a database outage."""
        _run(self.owner, [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def resume(self) -> None:
        """Start the server again after :meth:`pause`, on the same port."""
        _initdb_and_start(self, initdb=False)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _run(owner: str | None, argv: list[str]) -> subprocess.CompletedProcess:
    if owner is not None:
        argv = ["runuser", "-u", owner, "--", *argv]
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120, cwd="/")


def _owned_dir(path: Path, owner: str | None) -> None:
    if owner is not None:
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _initdb_and_start(cluster: Cluster, initdb: bool) -> None:
    try:
        if initdb:
            _run(cluster.owner, [str(cluster.bin / "initdb"), "-D", str(cluster.data), "-U", SUPERUSER,
                                 "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"])
        options = (f"-c listen_addresses={cluster.host} -p {cluster.port} -k {cluster.root} -c fsync=on "
                   "-c synchronous_commit=on -c max_connections=200 -c shared_buffers=64MB")
        _run(cluster.owner, [str(cluster.bin / "pg_ctl"), "-D", str(cluster.data), "-l", str(cluster.log), "-w",
                             "-t", "60", "-o", options, "start"])
    except subprocess.CalledProcessError as e:
        log = cluster.log.read_text(errors="replace")[-2000:] if cluster.log.exists() else ""
        cluster.stop()
        tool = Path(e.cmd[0] if cluster.owner is None else e.cmd[4]).name
        raise ClusterError(f"{tool} failed ({e.returncode}): {(e.stderr or e.stdout or '').strip()[-1500:]}\n{log}") \
            from None
    except BaseException:
        cluster.stop()
        raise


def start(parent: Path | None = None, port: int | None = None) -> Cluster:
    """initdb and start a cluster in a new directory under ``parent`` (default: the temp directory)."""
    bin_dir = find_bin()
    owner = SUPERUSER if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="mattermail-pg-", dir=parent))
    _owned_dir(root, owner)
    cluster = Cluster(root, port or free_port(), bin_dir, owner)
    _initdb_and_start(cluster, initdb=True)
    return cluster


def persistent(root: Path, port: int) -> Cluster:
    """The cluster kept in ``root``, as it is (not started; stop() keeps its directory)."""
    return Cluster(root, port, find_bin(), SUPERUSER if os.geteuid() == 0 else None, keep=True)


def open_persistent(root: Path, port: int) -> Cluster:
    """The cluster kept in ``root`` (made on first use), started unless it runs already; stop() keeps it."""
    cluster = persistent(root, port)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    _owned_dir(root, cluster.owner)
    if cluster.running():
        return cluster
    _initdb_and_start(cluster, initdb=not (cluster.data / "PG_VERSION").exists())
    return cluster
