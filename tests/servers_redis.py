"""A real ``redis-server`` for tests, and a real Celery worker against it.

Each server runs on a free loopback port in its own temporary directory, keeps nothing on disk, and
stops with its context. Where ``redis-server`` is missing, tests skip with how to install it; with
``CI=true`` they fail instead, so that CI never passes by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def require(executable: str, how: str) -> str:
    """The path of ``executable``; skip (or fail under CI) with ``how`` to install it."""
    path = shutil.which(executable)
    if path is None:
        message = f"{executable} is not installed; {how}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[str]:
    """Start a throw-away ``redis-server``; yields its URL, ``redis://127.0.0.1:PORT``."""
    executable = require("redis-server", "install it with `apt-get install redis-server`.")
    with tempfile.TemporaryDirectory(prefix="musiccallback-redis-") as directory:
        for _ in range(5):  # another process may take the free port before redis binds it
            port = free_port()
            process = subprocess.Popen(
                [executable, "--bind", "127.0.0.1", "--port", str(port), "--dir", directory,
                 "--save", "", "--appendonly", "no", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                if _answers_ping(port):
                    break
                time.sleep(0.05)
            if process.poll() is None and _answers_ping(port):
                break
            process.kill()
            process.wait()
        else:
            pytest.fail("redis-server did not start on a free port")
        try:
            yield f"redis://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def celery_worker(
    app: str, env: Mapping[str, str], *, concurrency: int = 2, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery -A app worker`` (prefork, as deployed) until it reports ready; stop it after.

    ``env`` is added to this process's environment; the worker imports this checkout.
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
            command, cwd=ROOT, env=environ, stdout=output, stderr=subprocess.STDOUT
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
            process.kill()
            process.wait()
