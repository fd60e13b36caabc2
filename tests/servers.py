"""Real servers for the tests: the app on a socket, PostgreSQL and Redis (a pytest plugin).

``serve(app)`` / ``serve_url(app)`` run a WSGI app on a threaded Werkzeug server on loopback.

Each server is started once per test session from Debian's packages (``postgresql``,
``redis-server``), in a fresh temporary directory, on an ephemeral port of 127.0.0.1, and stopped
at the end. No mocks: the stores are tested against what they run on in production.

Fixtures:

``postgresql_server`` / ``redis_server`` (session)
    The running server, with ``url(...)`` to build connection URLs.
``postgresql_url`` (function)
    ``postgresql+psycopg://`` URL of a new, empty database for the test.
``redis_url`` (function)
    ``redis://`` URL of a database emptied for the test.

``start_postgresql()`` and ``start_redis()`` start a server of one's own, for a test that stops
and restarts it (call ``remove()`` when done), or freezes it (``with server.frozen(): ...``).

Where a server's binaries are missing the tests that need it are skipped with a message saying how
to get them; with ``CI=true`` in the environment they fail instead, so that CI never passes on
tests it did not run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

#: How to get the servers, said whenever one is missing.
HOW_TO = (
    "install Debian's packages with `apt-get install postgresql redis-server` "
    "(or run `bash scripts/test.sh`, which does)"
)


def missing(what: str, how: str = HOW_TO) -> None:
    """Skip the test for lack of ``what``; fail it on CI, where everything must run."""
    message = f"{what} is not available: {how}."
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} CI must run every test.", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A port of 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers_ping(host: str, port: int) -> bool:
    """Whether a Redis server answers on that port (a bare connect could reach another server)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """Stop the processes (``SIGSTOP``) for the block, and always let them go on after it.

    A stopped server never answers, yet its kernel still accepts connections and acknowledges
    every packet: the server that hangs, not the one that is down.
    """
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _children(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    # "pid (command) state ppid ...": the command may hold spaces.
                    fields = stat.read().rpartition(b")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                children.append(int(entry))
    return children


@contextmanager
def serve(app: Any) -> Iterator[int]:
    """Serve a WSGI app on 127.0.0.1 with one thread per request; yields the port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.02,), name="test-server", daemon=True
    )
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@contextmanager
def serve_url(app: Any) -> Iterator[str]:
    """Like :func:`serve`, yielding the base URL (``http://127.0.0.1:PORT``)."""
    with serve(app) as port:
        yield f"http://127.0.0.1:{port}"


# -- PostgreSQL --------------------------------------------------------------------------------


def _postgres_bindir() -> Path | None:
    """The newest PostgreSQL server installed (Debian keeps them in /usr/lib/postgresql/N)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


@dataclass
class PostgresServer:
    """A running PostgreSQL cluster, trusted on 127.0.0.1 for the user ``postgres``."""

    port: int
    datadir: Path
    bindir: Path
    run_as: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    user: str = "postgres"
    #: Whether commits wait for the disk, as in production; tests run faster without.
    durable: bool = False

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its name."""
        import psycopg

        name = name or f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return name

    def start(self) -> None:
        options = f"-p {self.port} -h {self.host} -k {self.datadir.parent} -c max_connections=100"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        log = str(self.datadir.parent / "log")
        self.pg_ctl("start", "-w", "-t", "30", "-l", log, "-o", options)

    def stop(self) -> None:
        """Stop at once, ending every connection, as a crash or a restart does.

        A server that is not ``durable`` shuts down ``fast`` (a checkpoint first): crashed, it
        would lose the commits of the last moments that a production server keeps (its commits
        do not wait for the disk), such as the tables a test just created.
        """
        self.pg_ctl("stop", "-m", "immediate" if self.durable else "fast", "-w")

    def frozen(self) -> contextlib.AbstractContextManager[None]:
        """The postmaster and every process it started, stopped for the block."""
        postmaster = int((self.datadir / "postmaster.pid").read_text().split()[0])
        return stopped([postmaster, *_children(postmaster)])

    def remove(self) -> None:
        """Stop the server and delete its files."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.datadir.parent, ignore_errors=True)

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args],
            check=True,
            capture_output=True,
        )


def start_postgresql(*, durable: bool = False) -> PostgresServer:
    """Start a PostgreSQL cluster of one's own (for tests that stop and restart it)."""
    bindir = _postgres_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        missing("PostgreSQL (initdb, pg_ctl)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing("psycopg")
    assert bindir is not None
    base = Path(tempfile.mkdtemp(prefix="musiccallback-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: its files and processes belong to `postgres`.
        shutil.chown(base, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    datadir = base / "data"
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust",
         "--no-sync", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    server = PostgresServer(
        port=free_port(), datadir=datadir, bindir=bindir, run_as=run_as, durable=durable
    )
    server.start()
    return server


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session."""
    server = start_postgresql()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgresql_url(postgresql_server: PostgresServer) -> str:
    """A URL of a new, empty PostgreSQL database."""
    return postgresql_server.url(postgresql_server.create_database())


# -- Redis -------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A running ``redis-server`` with no persistence; ``start``/``stop`` keep its port."""

    port: int
    directory: Path
    binary: str
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def socket_url(self, db: int = 0) -> str:
        """The same server through its Unix socket."""
        return f"unix://{self.directory / 'redis.sock'}?db={db}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", self.host, "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--databases", "64",
             "--unixsocket", str(self.directory / "redis.sock"), "--unixsocketperm", "700"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while self.process.poll() is None and time.monotonic() < deadline:
            if answers_ping(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def frozen(self) -> contextlib.AbstractContextManager[None]:
        """``redis-server`` stopped for the block."""
        assert self.process is not None
        return stopped([self.process.pid])

    def flush(self, db: int) -> None:
        import redis

        with redis.Redis(host=self.host, port=self.port, db=db) as client:
            client.flushdb()


def start_redis() -> RedisServer:
    """Start a ``redis-server`` of one's own (for tests that stop and restart it)."""
    found = shutil.which("redis-server")
    if found is None:
        missing("Redis (redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing("redis-py")
    assert found is not None
    directory = Path(tempfile.mkdtemp(prefix="musiccallback-redis-"))
    for _ in range(5):  # another process may take the free port before redis binds it
        server = RedisServer(port=free_port(), directory=directory, binary=found)
        with contextlib.suppress(RuntimeError):
            server.start()
            return server
    shutil.rmtree(directory, ignore_errors=True)
    pytest.fail("redis-server did not start on a free port")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis server for the whole session, with 64 databases."""
    server = start_redis()
    try:
        yield server
    finally:
        server.remove()


_REDIS_TEST_DB = 9


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A URL of a Redis database emptied for this test (database 9; others are free for use)."""
    redis_server.flush(_REDIS_TEST_DB)
    return redis_server.url(_REDIS_TEST_DB)
