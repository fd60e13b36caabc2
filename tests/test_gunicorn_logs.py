"""gunicorn's logs hold no token with ``flask_musiccallback.gunicorn.GunicornLogger``.

A real gunicorn serves a real app on 127.0.0.1. gunicorn's error log quotes the request line, query
string included, when a worker timeout aborts a callback and when a request line is malformed: each
test first runs gunicorn's own logger class and finds the token there (the leak the test must be
able to see), then ours, and finds it nowhere.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flask_musiccallback.redact import REDACTED
from flask_musiccallback.testing import build_callback

from .backends import child_env
from .conftest import TOKEN, URL
from .live_server import exchange, request_bytes
from .servers import free_port, missing

LOGGER_CLASS = "flask_musiccallback.gunicorn.GunicornLogger"
DEFAULT_LOGGER = "gunicorn.glogging.Logger"

APP = f"""
import time
from flask import Flask
from flask_musiccallback import MusicCallback, all_tracks_generated

app = Flask("gunicorn-logs")
app.config["MUSICCALLBACK_TOKEN"] = {TOKEN!r}
MusicCallback(app)

@all_tracks_generated.connect_via(app)
def slow(sender, event, **extra):
    time.sleep(30)  # past gunicorn's --timeout: the worker is aborted in the middle
"""


@pytest.fixture(autouse=True)
def _needs_gunicorn() -> None:
    if importlib.util.find_spec("gunicorn") is None:
        missing("gunicorn", "pip install -e '.[bench]'")


@contextmanager
def gunicorn(tmp_path: Path, logger_class: str, *options: str) -> Iterator[tuple[int, Path]]:
    """gunicorn serving :data:`APP` with one sync worker; yields its port and its error log."""
    (tmp_path / "logs_app.py").write_text(APP)
    error_log = tmp_path / f"error-{logger_class}.log"
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
        "--chdir", str(tmp_path), "--logger-class", logger_class,
        "--error-logfile", str(error_log), *_no_control_socket(), *options, "logs_app:app",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=child_env(), stderr=subprocess.DEVNULL)
    try:
        _wait_for(port, process)
        yield port, error_log
    finally:
        process.terminate()
        process.wait(timeout=30)


def _no_control_socket() -> list[str]:
    """gunicorn 24 and later open a control socket at one path per user: not for parallel tests."""
    from gunicorn.config import KNOWN_SETTINGS

    known = any("--no-control-socket" in setting.cli for setting in KNOWN_SETTINGS if setting.cli)
    return ["--no-control-socket"] if known else []


def _wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not listen on {port} (exit code {process.poll()})")


def _wait_for_line(log: Path, text: str, timeout: float = 30) -> str:
    """The error log once it holds ``text``: gunicorn writes it from another process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        written = log.read_text()
        if text in written:
            return written
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in the error log:\n{log.read_text()}")


def _timed_out_callback(tmp_path: Path, logger_class: str) -> str:
    body = json.dumps(build_callback("complete")).encode()
    with gunicorn(tmp_path, logger_class, "--timeout", "1") as (port, error_log):
        answer = exchange(port, request_bytes(URL, body), timeout=30)
        assert answer.status == 500
        return _wait_for_line(error_log, "Error handling request")


def _malformed_request_line(tmp_path: Path, logger_class: str) -> str:
    raw = f"POST {URL}\r\nHost: 127.0.0.1\r\n\r\n".encode()  # no HTTP version
    with gunicorn(tmp_path, logger_class) as (port, error_log):
        assert exchange(port, raw).status == 400
        return _wait_for_line(error_log, "Invalid request from ip=")


def test_a_worker_timeout_logs_the_request_line_with_the_token_under_gunicorns_logger(
    tmp_path: Path,
) -> None:
    assert f"Error handling request POST {URL}" in _timed_out_callback(tmp_path, DEFAULT_LOGGER)


def test_a_worker_timeout_logs_no_token_with_the_logger_class(tmp_path: Path) -> None:
    log = _timed_out_callback(tmp_path, LOGGER_CLASS)
    assert f"Error handling request POST /music-callback?token={REDACTED}" in log
    assert TOKEN not in log


def test_a_malformed_request_line_logs_the_token_under_gunicorns_logger(tmp_path: Path) -> None:
    assert f"Invalid HTTP request line: 'POST {URL}'" in _malformed_request_line(
        tmp_path, DEFAULT_LOGGER
    )


def test_a_malformed_request_line_logs_no_token_with_the_logger_class(tmp_path: Path) -> None:
    log = _malformed_request_line(tmp_path, LOGGER_CLASS)
    assert f"Invalid HTTP request line: 'POST /music-callback?token={REDACTED}'" in log
    assert TOKEN not in log


def test_the_access_log_keeps_gunicorns_atoms_and_no_token_with_the_logger_class(
    tmp_path: Path,
) -> None:
    """gunicorn's default access format logs the request line; a missing header logs ``-``."""
    access_log = tmp_path / "access.log"
    access_format = '"%(r)s" %(s)s q=%(q)s xff=%({X-Forwarded-For}i)s'
    options = ("--access-logfile", str(access_log), "--access-logformat", access_format)
    with gunicorn(tmp_path, LOGGER_CLASS, *options) as (port, error_log):
        assert exchange(port, request_bytes(URL, b"{}")).status == 200  # kept, unreadable
        written = _wait_for_line(access_log, "xff=")
    assert f'"POST /music-callback?token={REDACTED} HTTP/1.1" 200 q=token={REDACTED} xff=-' in (
        written
    )
    assert TOKEN not in written + error_log.read_text()
    assert "Logging error" not in error_log.read_text()
