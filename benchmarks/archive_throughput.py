"""The media archive's speed and memory, against a bare streamed download, in one run.

    python -m benchmarks.archive_throughput --megabytes 256 --rounds 3

A media server on 127.0.0.1 (gunicorn-free: Werkzeug's threaded server, one request at a time)
serves one file of ``--megabytes``. Each round times two ways of landing it on local disk:

- ``bare``: ``httpx.stream`` straight into an open file, the least any downloader can do;
- ``archive``: a music ``complete`` callback for one track whose audio is that file, posted to an
  app whose ``MUSICCALLBACK_ARCHIVE`` is a ``file://`` folder, timed from the post until the copy
  is settled: the SSRF checks, fsspec, the partial file and its move, the manifest, the signal.

Both print megabytes per second; the ratio archive/bare is what the docs quote. While the archive
runs, a thread samples the process's resident memory every 10 ms: its growth over the round
shows whether the file is held in memory (it must not be: it grows by a few chunks, not by the
file's size).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from flask import Flask, Response

from flask_musiccallback import MusicCallback
from flask_musiccallback.testing import build_callback

from .app import TOKEN

BLOCK = b"\x5a" * (1024 * 1024)


def media_server(megabytes: int) -> Flask:
    app = Flask("media")

    @app.get("/big.mp3")
    def big() -> Response:
        def body() -> Iterator[bytes]:
            for _ in range(megabytes):
                yield BLOCK

        answer = Response(body(), mimetype="audio/mpeg")
        answer.headers["Content-Length"] = str(megabytes * len(BLOCK))
        return answer

    return app


def rss_bytes() -> int:
    """The process's resident memory now (Linux), in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


class Sampler:
    """The highest resident memory seen while it runs."""

    def __init__(self) -> None:
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bare(url: str, folder: Path) -> float:
    started = time.perf_counter()
    with httpx.stream("GET", url) as answer, (folder / "bare.mp3").open("wb") as out:
        for chunk in answer.iter_bytes(256 * 1024):
            out.write(chunk)
    return time.perf_counter() - started


def archived(url: str, folder: Path, round_number: int) -> tuple[float, int]:
    app = Flask("archive-bench")
    app.testing = True
    app.config.update(
        MUSICCALLBACK_TOKEN=TOKEN,
        MUSICCALLBACK_ARCHIVE=(folder / "archive").as_uri(),
        MUSICCALLBACK_ARCHIVE_ALLOW=["127.0.0.1"],
        MUSICCALLBACK_ARCHIVE_MAX_BYTES=1 << 40,
    )
    music = MusicCallback(app)
    body = build_callback("complete", task_id=f"bench-{round_number}", tracks=1)
    track = body["data"]["data"][0]
    track.update(audio_url=url, image_url=None, source_image_url=None)
    client = app.test_client()
    before = rss_bytes()
    with Sampler() as sampler:
        started = time.perf_counter()
        assert client.post(f"/music-callback?token={TOKEN}", json=body).status_code == 200
        assert music.wait_idle(600, app=app)
        seconds = time.perf_counter() - started
    files = list((folder / "archive").rglob("*.mp3"))
    assert len(files) == 1, files
    music.close(app)
    return seconds, sampler.peak - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, media_server(args.megabytes), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/big.mp3"
    size = args.megabytes
    print(f"{size} MiB to local disk, best of {args.rounds} rounds")
    best_bare = best_archive = float("inf")
    growths = []
    for round_number in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            best_bare = min(best_bare, bare(url, Path(tmp)))
        with tempfile.TemporaryDirectory() as tmp:
            seconds, growth = archived(url, Path(tmp), round_number)
            best_archive = min(best_archive, seconds)
            growths.append(growth)
    server.shutdown()
    print(f"bare httpx stream : {size / best_bare:8.1f} MiB/s")
    print(f"archive           : {size / best_archive:8.1f} MiB/s")
    print(f"ratio archive/bare: {best_bare / best_archive:8.2f}")
    print(f"resident memory growth while archiving: {max(growths) / 2**20:.1f} MiB at most")


if __name__ == "__main__":
    main()
