"""A real ``redis-server`` for tests, and a real Celery worker against it.

The server is :func:`.servers.start_redis`'s: a free loopback port, its own temporary directory,
nothing kept on disk, stopped with its context. Where ``redis-server`` is missing, tests skip with
how to install it; with ``CI=true`` they fail instead, so that CI never passes by skipping.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from .servers import start_redis

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def redis_server() -> Iterator[str]:
    """Start a throw-away ``redis-server``; yields its URL, ``redis://127.0.0.1:PORT``."""
    server = start_redis()
    try:
        yield f"redis://{server.host}:{server.port}"
    finally:
        server.remove()


@contextmanager
def celery_worker(
    app: str, env: Mapping[str, str], *, concurrency: int = 2, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery -A app worker`` (prefork, as deployed) until it reports ready; stop it after.

    ``env`` is added to this process's environment; the worker imports this checkout. The worker
    leads a process group of its own, so that ``os.killpg`` reaches its pool's processes too.
    """
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    command = [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "--pool", "prefork", "--concurrency", str(concurrency),
        "--hostname", f"test-{uuid.uuid4().hex[:8]}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--loglevel", "INFO",
    ]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environ,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Celery worker did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
