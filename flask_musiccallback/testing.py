"""Helpers for testing code that receives callbacks: realistic payloads, signatures, signals.

They are public API, used by this project's own tests, so they stay honest: :func:`build_callback`
produces what real traffic looks like (epoch-millisecond ``createTime``, every track field), not the
friendlier shape of the vendor docs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from flask import Flask

from . import signals as _signals
from .events import Stage
from .verify import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

#: The stage each ``callbackType`` stands for, and the ``msg`` the provider sends with it.
_MESSAGES = {
    "text": "Text generation completed.",
    "first": "First track generation completed.",
    "complete": "All generated successfully.",
    "error": "Audio generation failed.",
    "failed": "Audio generation failed.",
}

_TITLES = ("Neon Harbor", "Paper Satellites", "Slow Tide", "Copper Morning", "Glass Orchard")


def _track(task_id: str, index: int, stage: str, created_ms: int) -> dict[str, Any]:
    audio_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{task_id}/{index}"))
    cdn = "https://cdn.example.invalid"
    finished = stage == "complete" or (stage == "first" and index == 0)
    return {
        "id": audio_id,
        "audio_url": f"{cdn}/{audio_id}.mp3" if finished else "",
        "source_audio_url": f"{cdn}/source/{audio_id}.mp3" if finished else "",
        "stream_audio_url": f"{cdn}/stream/{audio_id}",
        "source_stream_audio_url": f"{cdn}/source/stream/{audio_id}",
        "image_url": f"{cdn}/image_{audio_id}.jpeg",
        "source_image_url": f"{cdn}/source/image_{audio_id}.jpeg",
        "prompt": "[Verse]\nLights on the water, engines in the rain\n[Chorus]\nHold on",
        "model_name": "chirp-v4",
        "title": _TITLES[index % len(_TITLES)],
        "tags": "synthwave, dreamy, female vocals",
        "createTime": created_ms + index,
        **({"duration": round(150.0 + 13.88 * index, 2)} if finished else {}),
    }


def build_callback(
    stage: Stage | str = "complete",
    *,
    task_id: str | None = None,
    tracks: int = 2,
    code: int | None = None,
    msg: str | None = None,
) -> dict[str, Any]:
    """A realistic callback body for ``stage`` (``text``, ``first``, ``complete``, ``failed``...).

    The text stage and failures carry no tracks, as on the wire; ``code`` defaults to 200, or 501
    for a failure. ``stage="failed"`` sends ``callbackType: "error"``, the value real traffic uses.
    """
    stage = str(stage)
    callback_type = "error" if stage == "failed" else stage
    failing = callback_type in ("error", "failed")
    if code is None:
        code = 501 if failing else 200
    task_id = task_id or uuid.uuid4().hex
    created_ms = int(time.time() * 1000)
    with_tracks = stage in ("first", "complete") and code == 200
    return {
        "code": code,
        "msg": msg if msg is not None else _MESSAGES.get(callback_type, "OK"),
        "data": {
            "callbackType": callback_type,
            "task_id": task_id,
            "data": [_track(task_id, i, stage, created_ms) for i in range(tracks)]
            if with_tracks
            else [],
        },
    }


def signature_headers(
    task_id: str, key: str | bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The kie.ai HMAC headers for ``task_id``, signed now unless ``timestamp`` is given."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    secret = key.encode() if isinstance(key, str) else key
    return {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(secret, task_id, stamp)}


#: Every signal of the extension, by its public name.
SIGNALS = {name: getattr(_signals, name) for name in _signals.__all__}


@contextmanager
def record_signals(app: Flask) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Collect every signal of the extension sent for ``app``, as ``(name, kwargs)`` in order."""
    recorded: list[tuple[str, dict[str, Any]]] = []

    def recorder(name: str) -> Any:
        def receive(sender: Flask, **kwargs: Any) -> None:
            recorded.append((name, kwargs))

        return receive

    with ExitStack() as stack:
        for name, signal in SIGNALS.items():
            stack.enter_context(signal.connected_to(recorder(name), sender=app))
        yield recorded
