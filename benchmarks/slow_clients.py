"""Slow clients against gunicorn: how many real callbacks fail while they trickle their headers.

gunicorn's ``sync`` and ``gthread`` workers give a connection a worker (or a thread) from its
first byte to its answer. A client that sends its headers one byte a second, with no token (it
needs none: nothing is checked before the headers end), holds that worker as long as it likes.
Each scenario starts gunicorn serving ``benchmarks/app.py`` (memory store) on 127.0.0.1, opens
the slow clients, and meanwhile posts real callbacks at a steady rate; a callback fails when its
answer is not 200 or takes longer than the client timeout (the provider waits about 15 s; 5 s
here). Then the same behind nginx with its default request buffering and short header and body
timeouts (the configuration of docs/deployment.md), and under an async worker (gevent), where
they are installed.

    python -m benchmarks.slow_clients                      # every scenario, 20 s each
    python -m benchmarks.slow_clients --scenario sync --seconds 10

Needs gunicorn (the ``bench`` extra); nginx (Debian's ``nginx``) and gevent for their scenarios,
which are skipped without them. Every load goes to 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from flask_musiccallback.simulate import build_callback

from .app import TOKEN
from .http_ratio import free_port, wait_for

#: What a slow client sends, one byte a second: a callback's request line without its token, then
#: headers that never end.
SLOW_REQUEST = b"POST /music-callback HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4000

NGINX_CONF = """
worker_processes 1;
error_log {prefix}/error.log;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        client_header_timeout 10s;
        client_body_timeout 10s;
        client_max_body_size 10m;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Scenario:
    """One gunicorn setup, the slow clients against it, and what stands in front."""

    name: str
    gunicorn: tuple[str, ...]
    slow_clients: int
    nginx: bool = False


SYNC = ("--workers", "4", "--worker-class", "sync")
GTHREAD = ("--workers", "4", "--threads", "4", "--worker-class", "gthread")
GEVENT = ("--workers", "4", "--worker-class", "gevent", "--worker-connections", "1000")

SCENARIOS = (
    Scenario("sync", SYNC, 0),
    Scenario("sync", SYNC, 4),
    Scenario("gthread", GTHREAD, 0),
    Scenario("gthread", GTHREAD, 64),
    Scenario("nginx+sync", SYNC, 4, nginx=True),
    Scenario("nginx+sync", SYNC, 64, nginx=True),
    Scenario("nginx+gthread", GTHREAD, 64, nginx=True),
    Scenario("gevent", GEVENT, 64),
)


@dataclass
class Tally:
    """What became of the real callbacks of one run."""

    ok: list[float] = field(default_factory=list)
    failed: int = 0
    timed_out: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sent(self) -> int:
        return len(self.ok) + self.failed + self.timed_out

    def row(self, scenario: Scenario) -> str:
        lost = self.failed + self.timed_out
        p95 = statistics.quantiles(self.ok, n=20)[18] if len(self.ok) >= 2 else float("nan")
        return (
            f"| {scenario.name} | {' '.join(scenario.gunicorn)} | {scenario.slow_clients} "
            f"| {self.sent} | {lost / max(self.sent, 1):.0%} ({self.failed} failed, "
            f"{self.timed_out} timed out) | {p95 * 1000:.0f} |"
        )


def slow_client(port: int, until: float) -> None:
    """Trickle :data:`SLOW_REQUEST` one byte a second until ``until``, reconnecting when cut off."""
    while time.monotonic() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                for byte in SLOW_REQUEST:
                    if time.monotonic() >= until:
                        return
                    sock.sendall(bytes([byte]))
                    time.sleep(1)
        except OSError:
            time.sleep(0.2)


def callback(port: int, timeout: float, tally: Tally) -> None:
    """One real callback, with the token and a task id of its own."""
    body = json.dumps(build_callback("complete", task_id=f"slow-{uuid.uuid4().hex}"))
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(
            "POST", f"/music-callback?token={TOKEN}", body, {"Content-Type": "application/json"}
        )
        status = connection.getresponse().status
    except TimeoutError:
        outcome = "timed_out"
    except (OSError, http.client.HTTPException):
        outcome = "failed"
    else:
        outcome = "ok" if status == 200 else "failed"
    finally:
        connection.close()
    elapsed = time.monotonic() - started
    with tally.lock:
        if outcome == "ok" and elapsed <= timeout:
            tally.ok.append(elapsed)
        elif outcome == "failed":
            tally.failed += 1
        else:
            tally.timed_out += 1


@contextmanager
def process(command: list[str], port: int) -> Iterator[None]:
    """``command`` running until the block ends, once it listens on ``port``."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port)
        yield
    finally:
        server.terminate()
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def gunicorn(options: tuple[str, ...], port: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", *options, "--bind", f"127.0.0.1:{port}",
        "--timeout", "30", "--log-level", "warning", "--no-control-socket", "benchmarks.app:app",
    ]  # fmt: skip


@contextmanager
def nginx_in_front(upstream: int, folder: Path) -> Iterator[int]:
    """nginx on a port of its own, proxying to ``upstream``; yields its port."""
    port = free_port()
    folder.chmod(0o755)  # nginx's workers run as an unprivileged user when started as root
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=folder, port=port, upstream=upstream))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    with process([nginx, "-p", str(folder), "-c", str(conf), "-g", "daemon off;"], port):
        yield port


def run(scenario: Scenario, seconds: float, rate: float, timeout: float) -> Tally:
    """Post ``rate`` callbacks a second for ``seconds`` while the slow clients hold on."""
    tally = Tally()
    upstream = free_port()
    with ExitStack() as stack:
        stack.enter_context(process(gunicorn(scenario.gunicorn, upstream), upstream))
        port = upstream
        if scenario.nginx:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            port = stack.enter_context(nginx_in_front(upstream, folder))
        callback(port, timeout, Tally())  # warm-up: the app loaded in the worker that answers
        settle = min(2.0, seconds / 4)  # the slow clients are in before the first callback
        # ...and stay until the last callback's timeout has passed: no callback is let through
        # by the slow clients giving up
        until = time.monotonic() + settle + seconds + timeout + 1
        slow = [
            threading.Thread(target=slow_client, args=(port, until), daemon=True)
            for _ in range(scenario.slow_clients)
        ]
        for thread in slow:
            thread.start()
        time.sleep(settle)
        count = int(seconds * rate)
        with ThreadPoolExecutor(max_workers=int(rate * timeout) + 8) as pool:
            start = time.monotonic()
            for index in range(count):
                time.sleep(max(0.0, start + index / rate - time.monotonic()))
                pool.submit(callback, port, timeout, tally)
        for thread in slow:
            thread.join(timeout=timeout + 5)
    return tally


def available(scenario: Scenario) -> str | None:
    """Why ``scenario`` cannot run here, or None."""
    if scenario.nginx and not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        return "nginx is not installed (apt-get install nginx)"
    if "gevent" in scenario.gunicorn and importlib.util.find_spec("gevent") is None:
        return "gevent is not installed (pip install gevent)"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", help="only these (sync, nginx+sync, ...)")
    parser.add_argument("--seconds", type=float, default=20, help="how long callbacks are sent")
    parser.add_argument("--rate", type=float, default=10, help="real callbacks per second")
    parser.add_argument("--timeout", type=float, default=5, help="the callbacks' client timeout")
    args = parser.parse_args()
    print(
        f"{args.rate:g} callbacks/s for {args.seconds:g} s, client timeout {args.timeout:g} s\n\n"
        "| in front of the app | gunicorn | slow clients | callbacks | failed or timed out "
        "| p95 of the answered, ms |\n|---|---|---|---|---|---|",
        flush=True,
    )
    for scenario in SCENARIOS:
        if args.scenario and scenario.name not in args.scenario:
            continue
        reason = available(scenario)
        if reason:
            print(f"| {scenario.name} | skipped: {reason} |||||", flush=True)
            continue
        print(run(scenario, args.seconds, args.rate, args.timeout).row(scenario), flush=True)


if __name__ == "__main__":
    main()
